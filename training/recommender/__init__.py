"""Hybrid recommender (paper Part 2): asymmetric factorisation of customers and products.

- `layers`: `ContentEncoder` (unit-norm content blocks → feed-forward network) and `ItemTower`
  (`cf` per-product embedding, `content` encoder, or their sum for `hybrid`); `l2_normalize`.
- `model`: `RecommenderConfig`, `build_recommender`, masked-mean `customer_vectors`, the WMRB
  loss, the seeded GradientTape `make_train_step`, `score` / `top_k`, save and load.
- `data`, `evaluation`, `baselines`: training examples as in the paper, the temporal test set,
  precision/recall@k and the popularity baseline.

Nothing here imports Keras at package import time; import the submodule you need.
"""
