"""The attribute model: layers, network, bundle, pyfunc (what training, scoring, serving share)."""
