"""Training the hybrid recommender (paper Part 2); the model itself is `models.recommender`.

- `data`, `timeline`: training examples as in the paper (features as of each example's
  cut-off), the temporal test set.
- `train_step`: the WMRB loss and one seeded GradientTape step.
- `trainer`, `evaluation`, `baselines`, `pipeline`: training, precision/recall@k, popularity and
  other baselines, and the MLflow run that registers the model.

Nothing here imports Keras at package import time; import the submodule you need.
"""
