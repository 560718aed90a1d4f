"""Model training, a stage: the attribute network and the hybrid recommender, logged to MLflow.

Training reads the lake and Feast, fits a model defined in `models/`, logs it to MLflow and
promotes it through registry aliases. It never imports the other stages (`spark_jobs`,
`serving`); the scoring jobs and serving read the registered model.
"""
