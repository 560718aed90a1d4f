"""FastAPI service and web gallery over Feast online features (the serving issue)."""
