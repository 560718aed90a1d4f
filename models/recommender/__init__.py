"""The hybrid recommender: layers, item tower, content inputs, bundle, pyfunc and neighbours."""
