"""The model layer: what training, the scoring jobs and serving share.

- `attributes`, `recommender`: model definitions (Keras layers and networks), bundles (a trained
  model with everything needed to use it) and their MLflow pyfuncs;
- `ranking`: the customer vector, scores and the exact top-k every list is cut by;
- `blend`: the rule that mixes rebuys into new-product lists.
It imports only `expectations` and the core (`atelier`); never a stage.
"""
