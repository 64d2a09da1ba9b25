"""A shim for tools that want a setup.py, such as Beam's ``--setup_file``: everything is in pyproject.toml."""

from setuptools import setup

setup()
