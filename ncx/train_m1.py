"""`ncx train-m1`: train M1, the byte-level model that drives the coder.

As in the paper, documents are UTF-8 bytes with an EOS appended to each,
joined into one stream. A training example is a random window of `context`
symbols from that stream, fed after a BOS: inputs [BOS, s0 .. s(T-2)],
targets [s0 .. s(T-1)]. The BOS start matches how the coder runs M1 (every
context, e.g. every Equal-Info window, starts fresh at an arbitrary point of
the text), so every prefix of a training window is a coding situation.

Held-out bits/byte: the held-out documents (each followed by EOS) are cut
into consecutive windows of `context` symbols, each scored as above from a
fresh BOS; bits/byte = total cross entropy in bits over all symbols, EOS
predictions included, divided by the number of text bytes (EOS excluded).
That is the cost of coding each document and its end marker, per byte of text.

Optimizer: AdamW (no weight decay on norms), linear warmup then cosine decay
to a tenth of the peak rate, gradient clipping. With a time limit, the
schedule follows whichever budget (steps or time) runs out first, so a timed
run still ends annealed; such a run is not bit-reproducible, a step-bounded
one is (for a given seed, device and thread count).
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .byte_stream import EOS, VOCAB_SIZE, join_documents, with_bos
from .corpus import corpus_hash, default_corpus, read_documents, split_of
from .m1 import M1, PRESETS, M1Config, preset, save_m1

__all__ = ["train_m1", "heldout_bits_per_byte", "add_arguments", "run"]


@torch.no_grad()
def heldout_bits_per_byte(model, docs: Sequence[bytes], batch_size: int = 16,
                          max_symbols: int | None = None) -> float:
    """Held-out bits per text byte of `docs` (see the module docstring), over
    at most max_symbols symbols of the joined stream when given. model: an M1
    (its logits), or an integer M1 (ncx.int_m1.IntM1: the log-probabilities
    of the frequencies its coder uses)."""
    stream = join_documents(docs)
    if max_symbols is not None:
        stream = stream[:max_symbols]
    text_bytes = int((stream != EOS).sum())
    if text_bytes == 0:
        raise ValueError("held-out documents hold no text bytes")
    T = model.config.context
    n = -(-len(stream) // T)  # windows, the last one padded
    targets = torch.full((n * T,), -100, dtype=torch.int64)  # -100: ignored by cross_entropy
    targets[: len(stream)] = stream
    targets = targets.view(n, T)
    is_float = isinstance(model, M1)
    device = model.wte.weight.device if is_float else model.device
    forward = model if is_float else model.log_probs  # cross_entropy of log-probabilities is their negation
    was_training = is_float and model.training
    if is_float:
        model.eval()
    total_nats = 0.0
    for i in range(0, n, batch_size):
        y = targets[i:i + batch_size].to(device)
        logits = forward(with_bos(y.clamp(min=0)))  # padding positions come last: causality hides them
        total_nats += float(F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction="sum"))
    if is_float:
        model.train(was_training)
    return total_nats / math.log(2) / text_bytes


def _lr_at(progress: float, step: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def train_m1(config: M1Config, train_docs: Sequence[bytes], heldout_docs: Sequence[bytes] | None = None, *,
             steps: int = 2000, batch_size: int = 32, lr: float = 2e-3, warmup: int | None = None,
             weight_decay: float = 0.1, grad_clip: float = 1.0, seed: int = 0,
             time_limit_s: float | None = None, eval_every: int = 200, eval_max_symbols: int = 1 << 16,
             device: str | torch.device = "cpu", progress: bool = True,
             log: Callable[[str], None] | None = print) -> tuple[M1, dict]:
    """Train a fresh M1 on train_docs; returns (model in eval mode, summary).

    Every eval_every steps (and at the end) the held-out bits/byte is logged,
    measured on the first eval_max_symbols held-out symbols during training
    and on all of them at the end. summary holds steps, seconds,
    steps_per_second, tokens, final train loss (bits/symbol), heldout bits/byte
    (None without held-out documents), its history, corpus hashes and the
    hyperparameters.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    data = join_documents(train_docs)
    T = config.context
    if len(data) < T + 1:
        raise ValueError(f"training data has {len(data)} symbols (with EOS), fewer than one window of "
                         f"context {T}; give more data or a smaller context")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = M1(config).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    warmup = min(50, max(1, steps // 10)) if warmup is None else warmup
    offsets = torch.arange(T)
    history: list[tuple[int, float]] = []

    def evaluate(step: int, max_symbols: int | None) -> float | None:
        if not heldout_docs:
            return None
        bpb = heldout_bits_per_byte(model, heldout_docs, max_symbols=max_symbols)
        history.append((step, bpb))
        return bpb

    from tqdm import tqdm

    bar = tqdm(total=steps, disable=not progress, unit="step", dynamic_ncols=True)
    start = time.time()
    done, loss_ema = 0, None
    while done < steps:
        elapsed = time.time() - start
        if time_limit_s is not None and elapsed >= time_limit_s:
            break
        frac = max(done / steps, elapsed / time_limit_s if time_limit_s else 0.0)
        for group in opt.param_groups:
            group["lr"] = _lr_at(frac, done, warmup, lr)
        starts = torch.randint(0, len(data) - T + 1, (batch_size,), generator=gen)
        y = data[starts[:, None] + offsets].to(device)  # (B, T)
        logits = model(with_bos(y))  # (B, T, 257)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        done += 1
        bits = float(loss.detach()) / math.log(2)
        loss_ema = bits if loss_ema is None else 0.95 * loss_ema + 0.05 * bits
        bar.update(1)
        bar.set_postfix(loss_bits=f"{loss_ema:.3f}")
        if eval_every and done % eval_every == 0 and done < steps:
            bpb = evaluate(done, eval_max_symbols)
            if bpb is not None:
                bar.set_postfix(loss_bits=f"{loss_ema:.3f}", heldout_bpb=f"{bpb:.3f}")
                if log and not progress:
                    log(f"step {done}: train {loss_ema:.3f} bits/symbol, held-out {bpb:.3f} bits/byte")
    bar.close()
    seconds = time.time() - start
    final = evaluate(done, None)
    model.eval()
    summary = {
        "steps": done,
        "seconds": round(seconds, 1),
        "steps_per_second": round(done / seconds, 3) if seconds > 0 else None,
        "tokens": done * batch_size * T,
        "train_loss_bits": None if loss_ema is None else round(loss_ema, 4),
        "heldout_bits_per_byte": None if final is None else round(final, 4),
        "heldout_history": [[s, round(b, 4)] for s, b in history],
        "train_corpus_sha256": corpus_hash(train_docs),
        "heldout_corpus_sha256": corpus_hash(heldout_docs) if heldout_docs else None,
        "train_bytes": sum(len(d) for d in train_docs),
        "batch_size": batch_size, "lr": lr, "warmup": warmup, "weight_decay": weight_decay,
        "grad_clip": grad_clip, "seed": seed, "context": T,
    }
    if log:
        heldout = "no held-out data" if final is None else f"held-out {final:.4f} bits/byte"
        log(f"trained {done} steps in {seconds:.0f} s ({done / max(seconds, 1e-9):.2f} steps/s): {heldout}")
    return model, summary


# ------------------------------------------------------------------- CLI
def add_arguments(parser, command: str) -> None:
    parser.add_argument("--preset", choices=list(PRESETS), default="small", help="model size (default: small)")
    parser.add_argument("--data", nargs="+", metavar="PATH",
                        help="files or directories (any file is a document, .jsonl one per record, .gz read "
                             "decompressed); default: the embedded corpus")
    parser.add_argument("--heldout", nargs="+", metavar="PATH",
                        help="held-out documents; default: one --data document in ten, chosen by a hash "
                             "of its source name (the embedded corpus has its own split)")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    parser.add_argument("--lines", action="store_true", help="each line of a .txt file is a document")
    parser.add_argument("--max-bytes", type=int, help="cap the embedded corpus's training bytes (quick runs)")
    parser.add_argument("--out", default="m1.safetensors", help="checkpoint to write (default: m1.safetensors)")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per step (default: 32)")
    parser.add_argument("--context", type=int, help="window length in symbols (default: the preset's)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, metavar="MINUTES",
                        help="stop after this many minutes (the schedule anneals within it)")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between held-out checks (default: 200)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _load_data(args) -> tuple[list[bytes], list[bytes], str]:
    """(train docs, held-out docs, description of the data)."""
    if not args.data:
        return (default_corpus("train", max_bytes=args.max_bytes), default_corpus("heldout"),
                "embedded default corpus")
    docs = read_documents(args.data, text_field=args.text_field, lines=args.lines)
    if args.heldout:
        heldout = [d for _, d in read_documents(args.heldout, text_field=args.text_field, lines=args.lines)]
        return [d for _, d in docs], heldout, " ".join(args.data)
    train = [d for src, d in docs if split_of(src) == "train"]
    heldout = [d for src, d in docs if split_of(src) == "heldout"]
    if not train or not heldout:
        raise ValueError(f"{len(docs)} document(s) cannot be split into train and held-out by source name; "
                         f"pass --heldout (or --lines for one document per line)")
    return train, heldout, " ".join(args.data)


def run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    overrides = {"context": args.context} if args.context else {}
    config = preset(args.preset, **overrides)
    train, heldout, source = _load_data(args)
    model, summary = train_m1(
        config, train, heldout, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        time_limit_s=None if args.time_limit is None else args.time_limit * 60, eval_every=args.eval_every,
        device=args.device)
    summary.update(preset=args.preset, data=source, threads=torch.get_num_threads(), device=str(args.device))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    digest = save_m1(model, args.out, summary)
    print(f"saved {args.out} (weights sha256 {digest[:16]}..., {config.flops_per_byte / 1e6:.2f} MFLOPs/byte)")
    return 0
