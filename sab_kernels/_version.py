"""The one version source: setuptools reads it (pyproject.toml, dynamic version) and sab_kernels exports it."""

__version__ = "0.1.0"
