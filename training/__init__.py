"""Model training: `attributes/` (multi-task network) and `recommender/` (hybrid WMRB model).

Filled by the attribute and recommender issues.
"""
