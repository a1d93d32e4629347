"""Helpers the build (setup.py) uses; not part of the installed package."""
