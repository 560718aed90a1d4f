"""Feast definitions, pure: entities, Delta sources, feature views and feature services.

`definitions.build(lake_dir, profile)` makes the objects; `feature_store.yaml` (embedded profile)
and `feature_store.scale.yaml` (scale profile) are templates of the stores' configuration.
`atelier.feast_store` applies them for a Settings object and writes each workdir's own feature
repository (`<workdir>/feast/repo`), where `feast -c <repo> apply` works by hand.
"""
