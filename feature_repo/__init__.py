"""Feast feature repository (entities, sources, feature views, feature services).

Filled by the features issue; kept importable and declarative.
"""
