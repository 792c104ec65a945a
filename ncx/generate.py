"""`ncx generate`: sample text from an M2 through its compression method's decoder.

M2 samples token sequences (all samples in one batch); the method the training data was
compressed with (read from the dataset's manifest) turns them back into bytes with its lenient
decoder, `Method.decode_tokens`, which accepts any token sequence: Equal-Info tokens regroup
into b-bit windows that M1 decodes independently and in one batch, AC tokens decode as one
stream, GZip garbage decodes to nothing, SentencePiece ids map to their pieces.

Each sample continues a short prompt: the first tokens of a document of that dataset (one
Equal-Info window's worth for EqualInfoAC, else one token), since M2 has no start-of-text
token and was trained on windows that start anywhere.
"""
from __future__ import annotations

import argparse
import math
import os
import numpy as np
import torch

from .dataset import TokenDataset, open_dataset
from .m1 import M1
from .m1_loader import load_m1_coder
from .m2 import M2
from .methods import M1_METHODS, Method, method_from_spec
from .train_m2 import load_model
from .window_vocab import dataset_vocab

__all__ = ["method_of_dataset", "prompt_length", "dataset_prompts", "sample_texts", "format_sample",
           "add_arguments", "run"]

def method_of_dataset(ds: TokenDataset | str | os.PathLike, m1: M1 | str | os.PathLike | None = None) -> Method:
    """The compression method recorded in a dataset's manifest, rebuilt; methods that code with
    M1 need that M1 (a model or its checkpoint path; another M1 is a clear error), unless the
    dataset carries M1's window vocabulary, which decodes EqualInfoAC tokens alone."""
    ds = ds if isinstance(ds, TokenDataset) else open_dataset(ds)
    spec = ds.method
    if "kind" not in spec:
        raise ValueError(f"{ds.path}: the manifest's method {spec.get('name')!r} carries no method spec "
                         f"(a 'kind' field, as ncx experiment writes), so its tokens cannot be decoded")
    coder = None
    vocab = dataset_vocab(ds)
    if spec["kind"] in M1_METHODS and not (vocab is not None and m1 is None):
        if m1 is None:
            raise ValueError(f"{ds.path}: {spec.get('name', spec['kind'])} tokens decode with M1: pass --m1 CKPT")
        coder = m1.coder() if isinstance(m1, M1) else load_m1_coder(str(m1))[0]
    return method_from_spec(spec, coder, vocab=vocab)


def prompt_length(method: Method) -> int:
    """Tokens in one Equal-Info window (b bits over 8 or 16 bits per token, rounded up); 1 for
    the other methods."""
    b = getattr(method, "b", None)
    return 1 if b is None else math.ceil(b / math.log2(method.vocab_size))


def dataset_prompts(ds: TokenDataset, n: int, length: int) -> torch.Tensor:
    """int64 [n, length]: the first `length` tokens of the dataset's first documents that hold
    that many (cycling through them when there are fewer than n)."""
    if length < 1:
        raise ValueError(f"prompt length must be >= 1, got {length}")
    ids = [int(d) for d in np.sort(ds.documents["doc_id"]) if len(ds.tokens_of(int(d))) >= length][:n]
    if not ids:
        raise ValueError(f"{ds.path}: no document holds {length} tokens for a prompt")
    rows = [np.asarray(ds.tokens_of(ids[i % len(ids)])[:length], dtype=np.int64) for i in range(n)]
    return torch.from_numpy(np.stack(rows))


@torch.no_grad()
def sample_texts(model: M2, method: Method, prompts: torch.Tensor, n_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0) -> list[dict]:
    """Sample n_tokens after each prompt (int64 [B, T0]) in one batch and decode them.

    Returns one dict per sample: prompt_tokens and tokens (np.int64 arrays, the latter the
    whole sequence, prompt included), prompt_text and text (bytes, the lenient decoding of the
    prompt and of the whole sequence).
    """
    if model.config.vocab_size != method.vocab_size:
        raise ValueError(f"M2's vocabulary ({model.config.vocab_size}) is not the method's "
                         f"({method.name}, {method.vocab_size}): were they made from the same data?")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(prompts.to(device), n_tokens, temperature=temperature, top_k=top_k,
                         generator=generator).cpu().numpy()  # (B, T0 + n_tokens)
    prompts_np = prompts.cpu().numpy()
    texts = method.decode_tokens(list(out))
    prompt_texts = method.decode_tokens(list(prompts_np))
    return [{"prompt_tokens": p, "tokens": t, "prompt_text": pt, "text": tx}
            for p, t, pt, tx in zip(prompts_np, out, prompt_texts, texts)]


def format_sample(i: int, sample: dict, as_repr: bool = False) -> str:
    """A sample for printing: a header line, then the text (UTF-8 with replacement characters,
    or the repr of the bytes)."""
    def show(b: bytes) -> str:
        return repr(b) if as_repr else b.decode("utf-8", errors="replace")
    n_prompt, n_all = len(sample["prompt_tokens"]), len(sample["tokens"])
    prompt = show(sample["prompt_text"]) if as_repr else repr(show(sample["prompt_text"]))
    return (f"--- sample {i}: {n_prompt} prompt + {n_all - n_prompt} generated tokens -> "
            f"{len(sample['text'])} bytes (prompt {prompt})\n{show(sample['text'])}")


# ------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--m2", required=True, metavar="RUN_DIR", help="M2 run directory (or checkpoint.pt)")
    parser.add_argument("--data", required=True, metavar="DATASET_DIR",
                        help="a token dataset of the method M2 was trained on (method spec and prompts)")
    parser.add_argument("--m1", metavar="CKPT", help="M1 checkpoint (for ac and equal_info_ac data)")
    parser.add_argument("--n-samples", type=int, default=4, help="samples, generated as one batch (default 4)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate per sample (default 64)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1.0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    parser.add_argument("--prompt-tokens", type=int, default=None,
                        help="prompt length in tokens (default: one Equal-Info window, else 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repr", action="store_true", help="print the repr of the bytes instead of text")
    parser.add_argument("--device", default="cpu", help="M2's device (default cpu)")


def run(args: argparse.Namespace) -> int:
    if args.n_samples < 1 or args.tokens < 0:
        raise ValueError(f"need --n-samples >= 1 and --tokens >= 0, got {args.n_samples} and {args.tokens}")
    ds = open_dataset(args.data)
    method = method_of_dataset(ds, args.m1)
    model = load_model(args.m2, device=args.device)
    prompts = dataset_prompts(ds, args.n_samples, args.prompt_tokens or prompt_length(method))
    samples = sample_texts(model, method, prompts, args.tokens, args.temperature, args.top_k, args.seed)
    print(f"{method.name}: {len(samples)} samples of {args.tokens} tokens, temperature {args.temperature}, "
          f"seed {args.seed}")
    for i, s in enumerate(samples):
        print(format_sample(i, s, args.repr))
    return 0
