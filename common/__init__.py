"""The few helpers more than one part needs. Imports no part."""

__version__ = "0.1.0"
