"""Attribute prediction (paper Part 1): the multi-modal, multi-task network and how it is trained.

- `layers`: `ShotMerge` (type-conditioned attention over product shots), `TextCNN` (trainable
  embeddings, Conv1D kernel 3, max-over-time), `CategoricalEmbedding` (0 = unknown index).
- `model`: `AttributeModelConfig` and `build_attribute_model` (one softmax head per attribute on a
  shared trunk).
- `schedule`: the round-robin schedule over attributes, per-attribute mini-batch samplers and label
  hygiene (applicability per product type, rare-value grouping, class weights).
- `train_step`: one plain-SGD step on one head plus the shared layers; `predict_proba`.

Nothing here imports Keras at package import time; import the submodule you need.
"""
