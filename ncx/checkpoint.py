"""M1 checkpoint files: safetensors with metadata, written atomically and
checked against their recorded weights hash on reading. Both M1 kinds use
them: float (ncx.m1, format "ncx-m1") and integer (ncx.int_m1, "ncx-m1-int");
ncx.m1_loader opens either for coding."""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn as nn

__all__ = ["FLOAT_FORMAT", "INT_FORMAT", "weights_hash", "write_checkpoint", "read_checkpoint",
           "checkpoint_format"]

FLOAT_FORMAT = "ncx-m1"
INT_FORMAT = "ncx-m1-int"

_KINDS = {FLOAT_FORMAT: "a float M1 checkpoint", INT_FORMAT: "an integer M1 checkpoint"}


def weights_hash(model_or_state: nn.Module | dict) -> str:
    """sha256 (hex) over the weights: each tensor's name, dtype, shape and
    little-endian bytes, in sorted name order. Identifies an M1 in artifacts."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_checkpoint(state: dict[str, torch.Tensor], path: str, fmt: str, version: str, config,
                     summary: dict | None = None, **extra: str) -> str:
    """Write tensors to a safetensors checkpoint atomically (a temporary
    name, then a rename) with metadata: the format and its version, the
    config (config.to_json()), the weights' sha256, the JSON summary and the
    extra string fields. Returns the weights hash."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    digest = weights_hash(state)
    metadata = {"format": fmt, "format_version": version, "config": config.to_json(), "weights_sha256": digest,
                "summary": json.dumps(summary or {}, sort_keys=True), **extra}
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(state, tmp, metadata=metadata)
    os.replace(tmp, path)
    return digest


def _open(path: str, with_tensors: bool) -> tuple[dict, dict]:
    """(metadata, tensors) of a safetensors file (tensors empty unless asked)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such M1 checkpoint")
    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: not a safetensors file ({e})") from None


def read_checkpoint(path: str, fmt: str, version: str) -> tuple[dict, dict, str]:
    """Open an M1 checkpoint of format fmt (FLOAT_FORMAT or INT_FORMAT) and
    check it: format, format version, and the weights against their recorded
    sha256. Returns (metadata, tensors, weights hash); metadata["config"] is
    the config's JSON. FileNotFoundError if missing; ValueError, naming the
    problem, for anything else."""
    metadata, state = _open(path, with_tensors=True)
    found = metadata.get("format")
    if found != fmt or "config" not in metadata:
        if found in _KINDS:
            raise ValueError(f"{path}: {_KINDS[found]}, not {_KINDS[fmt]} "
                             f"(ncx.m1_loader.load_m1_coder loads either kind for coding)")
        raise ValueError(f"{path}: not an M1 checkpoint (no {fmt} metadata)")
    if metadata.get("format_version") != version:
        raise ValueError(f"{path}: {_KINDS[fmt]} of format version "
                         f"{metadata.get('format_version')!r}; this ncx reads {version!r}")
    digest = weights_hash(state)
    if digest != metadata.get("weights_sha256"):
        raise ValueError(f"{path}: weights hash {digest[:16]}... does not match the recorded "
                         f"{str(metadata.get('weights_sha256'))[:16]}...: the file is corrupt")
    return metadata, state, digest


def checkpoint_format(path: str) -> str:
    """The "format" recorded in a checkpoint's metadata (FLOAT_FORMAT or
    INT_FORMAT), read without loading the weights."""
    return _open(path, with_tensors=False)[0].get("format", "")
