"""The package version, in a module of its own so every layer can import it (pyproject reads it too)."""

__version__ = "0.1.0"
