"""scfail: partial failures of zero-shot shape and color classification."""

__version__ = '0.1.0'
