"""One loader for both M1 kinds: the coding path of a float (ncx.m1) or an
integer (ncx.int_m1) checkpoint, chosen by the format the file records."""
from __future__ import annotations

import torch

from .checkpoint import INT_FORMAT, checkpoint_format
from .int_m1 import load_int_m1
from .m1 import load_m1

__all__ = ["load_m1_coder"]


def load_m1_coder(path: str, device: str | torch.device = "cpu"):
    """The coding path of an M1 checkpoint, float or integer -> (coder, info):
    an M1Coder for a float M1, an IntM1Coder for an integer one. info as
    load_m1 / load_int_m1 give it, plus "arithmetic" ("float" or "integer").
    Coding uses the integer path whenever the checkpoint is integer."""
    if checkpoint_format(path) == INT_FORMAT:
        model, info = load_int_m1(path, device)
    else:
        model, info = load_m1(path, device)
    info["arithmetic"] = model.arithmetic
    return model.coder(), info
