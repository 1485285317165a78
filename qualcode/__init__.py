"""qualcode: local qualitative coding of Swedish free text."""
__version__ = "0.1.0"
