"""Built-in source layout configs (YAML)."""
