"""The core: settings, table contracts, the Delta lake, the model registry, Feast access.

atelier: fashion product characterisation and personalisation (the package's version lives here).
"""

__version__ = "0.1.0"
