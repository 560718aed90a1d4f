"""Batch jobs, a stage: ingest, embed, colour, text and product features, scoring, materialise."""
