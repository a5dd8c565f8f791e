"""owc: open-weight cluster."""

__version__ = "0.1.0"
