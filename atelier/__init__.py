"""atelier: fashion product characterisation and personalisation."""

__version__ = "0.1.0"
