"""Training the attribute model (paper Part 1); the network itself is `models.attributes`.

- `data`: the training set from Feast (point-in-time) and the label plan (hidden labels,
  validation slice, rare-value grouping).
- `schedule`: the round-robin schedule over attributes, per-attribute mini-batch samplers and
  label hygiene (applicability per product type, class weights).
- `train_step`: one plain-SGD step on one head plus the shared layers.
- `trainer`, `evaluation`, `baseline`, `pipeline`: training with validation checkpoints, the
  metrics, the TF-IDF + LR baseline, and the MLflow run that registers the model.

Nothing here imports Keras at package import time; import the submodule you need.
"""
