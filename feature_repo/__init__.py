"""Feast feature repository (entities, sources, feature views, feature services).

`definitions.py` holds the objects; `feature_store.yaml` (embedded profile) and
`feature_store.scale.yaml` (scale profile) configure the stores. Kept importable and
declarative: `atelier.feast_store` builds the store and applies the definitions for a Settings
object; `cd feature_repo && ATELIER_WORKDIR=/abs/workdir feast apply` does the same by hand.
"""
