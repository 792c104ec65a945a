"""ncx: training language models over neurally compressed text."""

import torch  # noqa: F401  (loads libtorch, which the extension ncx._C links against)

__version__ = "0.1.0"
