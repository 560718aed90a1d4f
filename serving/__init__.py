"""Serving, a stage: the FastAPI service and web gallery over Feast online features."""
