"""Model layer: what training, scoring jobs and serving share (see ARCHITECTURE.md)."""
