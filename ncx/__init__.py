"""ncx: training language models over neurally compressed text."""

__version__ = "0.1.0"
