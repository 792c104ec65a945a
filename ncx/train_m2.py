"""Train M2 on a token dataset and measure it the paper's way (`ncx train-m2`).

Data. The train dataset's shards, concatenated in order, form one token stream. A training
step takes `batch_size` windows of seq_len + 1 tokens starting at uniformly random offsets of
that stream (windows cross document and shard boundaries, as in the paper's packed
sequences): inputs are the first seq_len tokens, targets the last seq_len. The offsets of
step k are a pure function of (seed, k), so the sampler's whole state is the step number:
resuming at step k draws exactly the batches an uninterrupted run would have drawn. The sampler
is ncx.torch_dataset.PackedWindows, also a torch IterableDataset, so that a training loop
elsewhere can draw these same windows.

Held-out evaluation scores every token of the valid dataset once, in fixed order: its
stream is cut into consecutive chunks of seq_len + 1 tokens that overlap by one, so each
token after the first is predicted exactly once (from the tokens before it in its chunk).
With L the mean loss over those predictions (nats), N the valid tokens and B their raw bytes,
    bits/byte = N / B x L / ln 2          (metrics.bits_per_byte)

Optimization: AdamW (betas 0.9, 0.95; weight decay on matrices only), linear warmup to `lr`
over `warmup` steps, then cosine decay to lr x min_lr_ratio at the last step, gradient
clipping by global norm. `batch_size` is the global batch: under torchrun each of the W ranks
takes its own batch_size / W of the step's windows and DDP averages the gradients, so a run
on W processes follows the one-process run (up to float summation order).

Checkpoints (RUN_DIR/checkpoint.pt, written atomically) hold the model, the optimizer, every
rank's RNG state, the step (which is the sampler's state), the history and the timings;
`--resume` continues from one and, with the same world size and micro-batch, ends with
bit-identical weights to a run never interrupted (tested on CPU, and on CUDA without compile).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics
from .dataset import TokenDataset, atomic_write_json, open_dataset
from .m2 import M2, PRESETS, M2Config, preset
from .torch_dataset import PackedWindows, TokenStream, rank_and_world

__all__ = ["train_m2", "TrainOptions", "load_model", "lr_at", "add_arguments", "run"]

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
CHECKPOINT_FORMAT = ("ncx-m2-checkpoint", 1)
# Settings a resumed run must share with the checkpoint, or it would not be the same run. The
# world size and micro-batch may change (only float rounding changes with them); resuming
# bit-exactly needs them unchanged too.
RUN_IDENTITY = ("config", "steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup",
                "weight_decay", "grad_clip", "seed")


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float) -> float:
    """Learning rate of step `step` (0-based) of `steps`: linear warmup from lr/warmup to lr
    over `warmup` steps, then cosine from lr down to lr x min_lr_ratio at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: TokenStream, seq_len: int, batch_size: int,
             device: torch.device, autocast, rank: int = 0, world: int = 1) -> tuple[float, int]:
    """Sum of the held-out loss (nats) over every prediction in the stream, and the number of
    predictions (len(stream) - 1). Ranks score interleaved chunks; the sums are all-reduced."""
    n = len(stream)
    starts = list(range(0, n - 1, seq_len))[rank::world]  # chunk i: tokens [s, s + seq_len + 1)
    full = [s for s in starts if s + seq_len + 1 <= n]
    last = [s for s in starts if s + seq_len + 1 > n]  # the stream's tail, shorter
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, predictions)
    was_training = model.training
    model.eval()
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in last]
    for batch in batches:
        width = min(seq_len + 1, n - batch[0])
        w = torch.from_numpy(np.stack([stream.read(s, width) for s in batch])).to(device)  # (b, T+1)
        with autocast:
            logits = model(w[:, :-1])  # (b, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten(), reduction="sum")
        total += torch.stack([loss.double(), torch.tensor(w[:, 1:].numel(), device=device).double()])
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return float(total[0]), int(total[1])


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass(frozen=True)
class TrainOptions:
    """How train_m2 trains: everything but the data, the model and the number of steps.

    batch_size: global sequences per step (divisible by the world size under torchrun);
        micro_batch_size splits each rank's share for gradient accumulation.
    seq_len: tokens per training sequence (default: the config's context, 512 for presets).
    lr, min_lr_ratio, warmup: the schedule (lr_at); weight_decay (matrices only), grad_clip
        (global norm); seed: initial weights, data order and dropout.
    eval_every: evaluate every this many steps (0: only at the end); checkpoint_every
        (default eval_every) saves RUN_DIR/checkpoint.pt; one is also saved when the run stops.
        eval_batch_size: sequences per evaluation batch (default: the micro-batch).
    out_dir: RUN_DIR for checkpoint.pt and summary.json (None: nothing written, no resume).
    resume: continue from RUN_DIR/checkpoint.pt when there is one (all RUN_IDENTITY settings
        must match it); without resume an existing checkpoint is an error.
    time_limit: seconds of wall time for this call; stop_after: step to stop at. Either one
        checkpoints and returns early ("completed": false) so a later --resume continues.
    device: default cuda (the LOCAL_RANK device under torchrun) when available, else cpu.
    compile, bf16: torch.compile and bf16 autocast; default on with CUDA, and CUDA only.
    m1_flops_per_byte: M1's cost for FLOPs/byte; default the train manifest's
        extra["m1_flops_per_byte"], else 0 (methods without M1).
    progress: a progress bar (rank 0 only).
    """

    batch_size: int = 32
    seq_len: int | None = None
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    micro_batch_size: int | None = None
    eval_every: int = 0
    eval_batch_size: int | None = None
    checkpoint_every: int | None = None
    out_dir: str | os.PathLike | None = None
    resume: bool = False
    time_limit: float | None = None
    stop_after: int | None = None
    device: str | torch.device | None = None
    compile: bool | None = None
    bf16: bool | None = None
    m1_flops_per_byte: float | None = None
    progress: bool = True


def train_m2(
    train_ds: TokenDataset | str | os.PathLike,
    valid_ds: TokenDataset | str | os.PathLike,
    config: M2Config | str,
    steps: int,
    options: TrainOptions | None = None,
    **overrides,
) -> dict:
    """Train M2 for `steps` steps on train_ds, evaluate on all of valid_ds; return the summary.

    train_ds, valid_ds: TokenDatasets (or their paths) of one method and vocabulary.
    config: an M2Config (its vocab_size must be the datasets') or a preset name (PRESETS);
        a preset's context is seq_len.
    options: a TrainOptions; overrides: any of its fields by keyword, e.g.
        train_m2(train, valid, "nano", 1000, lr=3e-3, out_dir="run").
    Under torch.distributed (initialized by the caller, e.g. `run` under torchrun) the
    ranks split the batch and rank 0 writes the files; every rank returns the summary.

    Returns the summary dict (also RUN_DIR/summary.json): bits_per_byte,
    uniform_bits_per_byte, flops_per_byte, tokens_per_second (global training tokens per
    second, leaving out each call's first step, which pays for compilation), steps,
    valid_loss_nats, history (one entry per evaluation), ...
    """
    started = time.perf_counter()
    opts = replace(options or TrainOptions(), **overrides)
    train, valid, config, seq_len = _open_data(train_ds, valid_ds, config, opts.seq_len)
    setup = _Setup.of(opts, steps)
    sampler = PackedWindows(train, seq_len, opts.batch_size, opts.seed, steps=steps, rank=setup.rank,
                            world=setup.world)
    valid_stream = _valid_stream(valid)
    m1_flops_per_byte = _m1_flops_per_byte(train, opts)
    identity = {"config": asdict(config), "steps": steps, "batch_size": opts.batch_size, "seq_len": seq_len,
                "lr": opts.lr, "min_lr_ratio": opts.min_lr_ratio, "warmup": opts.warmup,
                "weight_decay": opts.weight_decay, "grad_clip": opts.grad_clip, "seed": opts.seed}
    out_dir = Path(opts.out_dir) if opts.out_dir is not None else None
    checkpoint = _checkpoint_to_resume(out_dir, opts.resume, identity)
    run = _M2Run(opts, steps, config, seq_len, sampler, valid_stream, valid, setup, identity, out_dir, checkpoint)
    completed = run.train(started)
    summary = run.summary(train.method, completed, m1_flops_per_byte)
    if setup.rank == 0 and out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / SUMMARY, summary)
    return summary


def _open_data(train_ds, valid_ds, config: M2Config | str,
               seq_len: int | None) -> tuple[TokenDataset, TokenDataset, M2Config, int]:
    """The train and valid datasets (opened if paths), checked to be of one method and
    vocabulary, the model config (a preset name resolved) and the training sequence length."""
    train_ds = train_ds if isinstance(train_ds, TokenDataset) else open_dataset(train_ds)
    valid_ds = valid_ds if isinstance(valid_ds, TokenDataset) else open_dataset(valid_ds)
    names = train_ds.method.get("name"), valid_ds.method.get("name")
    if train_ds.vocab_size != valid_ds.vocab_size or names[0] != names[1]:
        raise ValueError(f"train ({train_ds.method.get('name')}, vocab {train_ds.vocab_size}) and valid "
                         f"({valid_ds.method.get('name')}, vocab {valid_ds.vocab_size}) datasets differ")
    if isinstance(config, str):
        config = preset(config, train_ds.vocab_size, context=seq_len or 512)
    if config.vocab_size != train_ds.vocab_size:
        raise ValueError(f"config.vocab_size {config.vocab_size} != the datasets' {train_ds.vocab_size}")
    seq_len = seq_len or config.context
    if seq_len > config.context:
        raise ValueError(f"seq_len {seq_len} exceeds the model's context {config.context}")
    return train_ds, valid_ds, config, seq_len


def _valid_stream(valid_ds: TokenDataset) -> TokenStream:
    """The valid dataset's token stream, checked to hold a prediction."""
    valid_stream = TokenStream(valid_ds)
    if len(valid_stream) < 2:
        raise ValueError(f"{valid_ds.path}: the valid dataset needs at least 2 tokens")
    return valid_stream


def _m1_flops_per_byte(train_ds: TokenDataset, opts: TrainOptions) -> float:
    if opts.m1_flops_per_byte is not None:
        return opts.m1_flops_per_byte
    return float(train_ds.manifest.get("extra", {}).get("m1_flops_per_byte", 0.0))


@dataclass(frozen=True)
class _Setup:
    """Where a run executes: this process's rank among `world`, its share of the batch and
    its micro-batch, the device, and whether it compiles and runs in bf16."""

    rank: int
    world: int
    local_batch: int
    micro_batch: int
    device: torch.device
    compile: bool
    bf16: bool

    @classmethod
    def of(cls, opts: TrainOptions, steps: int) -> "_Setup":
        rank, world = rank_and_world()
        if opts.batch_size % world:
            raise ValueError(f"batch_size {opts.batch_size} must be divisible by the world size {world}")
        local_batch = opts.batch_size // world
        micro_batch = opts.micro_batch_size or local_batch
        if local_batch % micro_batch:
            raise ValueError(f"micro_batch_size {micro_batch} must divide the per-rank batch {local_batch}")
        if steps < 1 or opts.warmup < 0 or opts.eval_every < 0:
            raise ValueError(f"need steps >= 1, warmup >= 0 and eval_every >= 0, got {steps}, {opts.warmup}, "
                             f"{opts.eval_every}")
        device = opts.device
        if device is None:
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        on_cuda = device.type == "cuda"
        compile = on_cuda if opts.compile is None else opts.compile
        bf16 = on_cuda if opts.bf16 is None else opts.bf16
        if (compile or bf16) and not on_cuda:
            raise ValueError("compile and bf16 are for CUDA devices only")
        return cls(rank, world, local_batch, micro_batch, device, compile, bf16)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"


def _checkpoint_to_resume(out_dir: Path | None, resume: bool, identity: dict) -> dict | None:
    """The run directory's checkpoint when resuming, after checking that it is the same run;
    None when there is none. An existing checkpoint without resume is an error."""
    ckpt_path = out_dir / CHECKPOINT if out_dir is not None else None
    if ckpt_path is None or not ckpt_path.exists():
        return None
    if not resume:
        raise ValueError(f"{ckpt_path} exists: pass resume=True (--resume) to continue that run, "
                         f"or choose a new run directory")
    checkpoint = _load_checkpoint(ckpt_path)
    saved = checkpoint["identity"]
    if diff := [k for k in RUN_IDENTITY if saved.get(k) != identity[k]]:
        raise ValueError(f"{ckpt_path}: cannot resume, settings differ from the checkpoint's: "
                         + ", ".join(f"{k} {saved.get(k)!r} -> {identity[k]!r}" for k in diff))
    return checkpoint


class _M2Run:
    """One call's training: the model and optimizer (fresh, or restored from a checkpoint),
    the step, the evaluation history and the timings, and the steps, evaluations and
    checkpoints that advance them."""

    def __init__(self, opts: TrainOptions, steps: int, config: M2Config, seq_len: int,
                 sampler: PackedWindows, valid_stream: TokenStream, valid_ds: TokenDataset, setup: _Setup,
                 identity: dict, out_dir: Path | None, checkpoint: dict | None):
        self.opts, self.steps, self.config, self.seq_len = opts, steps, config, seq_len
        self.sampler, self.valid_stream, self.valid_ds = sampler, valid_stream, valid_ds
        self.setup, self.identity, self.out_dir = setup, identity, out_dir
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if setup.bf16 else contextlib.nullcontext()

        torch.manual_seed(opts.seed)  # the same initial weights on every rank and in every run
        self.model = M2(config).to(setup.device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opts.lr, betas=(0.9, 0.95), fused=setup.on_cuda,
        )
        # Throughput leaves out each call's first step, which pays for torch.compile and warm-up.
        self.step, self.history = 0, []
        self.timing = {"train_time_s": 0.0, "tokens_trained": 0, "steady_time_s": 0.0, "steady_tokens": 0}
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            torch.manual_seed(opts.seed + 1 + setup.rank)  # dropout masks differ between ranks
        self.first_step = self.step
        self.saved_step = self.step if checkpoint is not None else None

        if setup.compile:
            # Compiled graphs are cached per code object (M2.forward), not per model, and dynamo
            # stops compiling after a few variants: a process that trains a grid of sizes would
            # silently fall back to eager. Each run starts from an empty cache instead.
            torch._dynamo.reset()
        self.forward_model = torch.compile(self.model) if setup.compile else self.model
        if setup.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.train_model = DistributedDataParallel(self.forward_model,
                                                       device_ids=[setup.device] if setup.on_cuda else None)
        else:
            self.train_model = self.forward_model

    def _restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step, self.history, self.timing = checkpoint["step"], checkpoint["history"], checkpoint["timing"]
        rng, rank = checkpoint["rng"], self.setup.rank
        if len(rng) == self.setup.world:
            _set_rng_state(rng[rank], self.setup.device)
        else:  # another world size: dropout masks cannot continue, weights and data still do
            torch.manual_seed(self.opts.seed + 1 + rank + self.step)

    def train(self, started: float) -> bool:
        """Train until the last step, stop_after or the time limit (counted from `started`),
        evaluating and checkpointing on the way; True if the run reached its last step."""
        opts, rank = self.opts, self.setup.rank
        checkpoint_every = opts.eval_every if opts.checkpoint_every is None else opts.checkpoint_every
        bar = tqdm(total=self.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not opts.progress or rank != 0, desc=f"M2 {_preset_of(self.config) or ''}".strip())
        while self.step < self.steps and (opts.stop_after is None or self.step < opts.stop_after):
            loss_value = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{_tokens_per_second(self.timing):,.0f}",
                            refresh=False)
            if self.step == self.steps or (opts.eval_every and self.step % opts.eval_every == 0):
                self.history.append({**self.run_eval(), "train_loss_nats": loss_value})
                if opts.progress and rank == 0:
                    bar.write(f"step {self.step}: valid loss {self.history[-1]['valid_loss_nats']:.4f} "
                              f"nats/token, {self.history[-1]['bits_per_byte']:.4f} bits/byte")
            if checkpoint_every and self.step % checkpoint_every == 0:
                self.save_checkpoint()
            if opts.time_limit is not None and self._out_of_time(started):
                break
        bar.close()
        completed = self.step >= self.steps
        if completed and (not self.history or self.history[-1]["step"] != self.step):
            self.history.append(self.run_eval())  # a resumed finished run still reports its final evaluation
        if self.saved_step != self.step:
            self.save_checkpoint()
        return completed

    def train_step(self) -> float:
        """One optimizer step on this rank's share of the step's windows; returns the loss
        (nats/token, the mean over this rank's share)."""
        opts, setup = self.opts, self.setup
        t0 = time.perf_counter()
        local = self.sampler.local_batch(self.step)  # this rank's windows, int64 (local_batch, T+1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.steps, opts.lr, opts.warmup, opts.min_lr_ratio)
        self.optimizer.zero_grad(set_to_none=True)
        n_micro = setup.local_batch // setup.micro_batch
        step_loss = torch.zeros((), device=setup.device)
        for j in range(n_micro):
            w = torch.from_numpy(local[j * setup.micro_batch:(j + 1) * setup.micro_batch]).to(setup.device)
            # DDP all-reduces gradients in the last micro-batch's backward only.
            sync = contextlib.nullcontext() if setup.world == 1 or j == n_micro - 1 else self.train_model.no_sync()
            with sync:
                with self.autocast:  # bf16 matmuls; autocast runs the loss's log-softmax in float32
                    logits = self.train_model(w[:, :-1])  # (b, T, V)
                    # Each micro-batch's mean, weighted to make the rank's mean over its batch.
                    loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten()) / n_micro
                loss.backward()
            step_loss += loss.detach()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), opts.grad_clip)
        self.optimizer.step()
        self.step += 1
        # Waiting for the device each step keeps step times honest; with batches big enough to
        # fill a GPU the host's share (a few small numpy reads, kernel launches) is small.
        loss_value = float(step_loss)
        elapsed = time.perf_counter() - t0
        tokens = opts.batch_size * self.seq_len
        self.timing["train_time_s"] += elapsed
        self.timing["tokens_trained"] += tokens
        if self.step > self.first_step + 1:
            self.timing["steady_time_s"] += elapsed
            self.timing["steady_tokens"] += tokens
        return loss_value

    def run_eval(self) -> dict:
        """The held-out loss and bits/byte at the current step (every rank takes part)."""
        setup = self.setup
        loss_sum, predictions = evaluate(self.forward_model, self.valid_stream, self.seq_len,
                                         self.opts.eval_batch_size or setup.micro_batch, setup.device,
                                         self.autocast, setup.rank, setup.world)
        mean = loss_sum / predictions
        return {"step": self.step, "valid_loss_nats": mean,
                "bits_per_byte": metrics.bits_per_byte(mean, self.valid_ds.total_tokens, self.valid_ds.total_bytes)}

    def save_checkpoint(self) -> None:
        """RUN_DIR/checkpoint.pt (rank 0 writes it; every rank sends its RNG state)."""
        self.saved_step = self.step
        if self.out_dir is None:
            return
        setup = self.setup
        rng_states = [None] * setup.world
        if setup.world > 1:
            dist.all_gather_object(rng_states, _rng_state(setup.device))
        else:
            rng_states[0] = _rng_state(setup.device)
        if setup.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _save_atomic({"format": CHECKPOINT_FORMAT, "identity": self.identity, "model": self.model.state_dict(),
                          "optimizer": self.optimizer.state_dict(), "step": self.step, "rng": rng_states,
                          # The sampler is counter-based: (seed, step) is its whole state.
                          "sampler": {"seed": self.opts.seed, "step": self.step}, "history": self.history,
                          "timing": self.timing}, self.out_dir / CHECKPOINT)

    def _out_of_time(self, started: float) -> bool:
        out_of_time = time.perf_counter() - started >= self.opts.time_limit
        flag = torch.tensor([out_of_time], dtype=torch.int32, device=self.setup.device)
        if self.setup.world > 1:  # every rank must stop at the same step
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def summary(self, method: dict, completed: bool, m1_flops_per_byte: float) -> dict:
        last = self.history[-1] if self.history else {}
        valid = self.valid_ds
        valid_bpt = valid.bytes_per_token
        n_params = self.model.non_embedding_params()
        return {
            "method": method,
            "preset": _preset_of(self.config),
            "config": asdict(self.config),
            "non_embedding_params": n_params,
            "completed": completed,
            "steps": self.step,
            "total_steps": self.steps,
            "batch_size": self.opts.batch_size,
            "seq_len": self.seq_len,
            "world_size": self.setup.world,
            "device": str(self.setup.device),
            "train_tokens": self.timing["tokens_trained"],
            "train_time_s": self.timing["train_time_s"],
            "tokens_per_second": _tokens_per_second(self.timing),
            "valid_tokens": valid.total_tokens,
            "valid_bytes": valid.total_bytes,
            "bytes_per_token": valid_bpt,
            "valid_loss_nats": last.get("valid_loss_nats"),
            "bits_per_byte": last.get("bits_per_byte"),
            "uniform_bits_per_byte": metrics.uniform_bits_per_byte(valid.vocab_size, valid_bpt),
            "m1_flops_per_byte": m1_flops_per_byte,
            "flops_per_byte": metrics.flops_per_byte(n_params, valid_bpt, m1_flops_per_byte),
            "history": self.history,
        }


def _tokens_per_second(timing: dict) -> float | None:
    """Training tokens/s over the steady steps, or over all steps when there are none yet."""
    if timing["steady_time_s"]:
        return timing["steady_tokens"] / timing["steady_time_s"]
    return timing["tokens_trained"] / timing["train_time_s"] if timing["train_time_s"] else None


def _load_checkpoint(path: Path) -> dict:
    # weights_only: tensors and plain data only (all this module writes), so a checkpoint from
    # someone else cannot run code when it is loaded.
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused: it holds objects other than tensors and plain data, which an "
                         f"M2 checkpoint never does ({str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: unreadable M2 checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an {CHECKPOINT_FORMAT[0]} v{CHECKPOINT_FORMAT[1]} file")
    return checkpoint


def _preset_of(config: M2Config) -> str | None:
    """The PRESETS name whose sizes the config has, if any."""
    sizes = (config.n_embd, config.n_head, config.n_layer, config.mlp)
    return next((name for name, p in PRESETS.items() if p == sizes), None)


def load_model(run_dir_or_checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> M2:
    """The M2 of a run directory (its checkpoint.pt) or of a checkpoint file, in eval mode."""
    path = Path(run_dir_or_checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{path}: M2 checkpoint not found")
    checkpoint = _load_checkpoint(path)
    model = M2(M2Config(**checkpoint["identity"]["config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


# ------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--train", required=True, metavar="DIR", help="train token dataset")
    parser.add_argument("--valid", required=True, metavar="DIR", help="held-out token dataset")
    parser.add_argument("--preset", default="micro", choices=list(PRESETS), help="M2 size (default micro)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="checkpoint.pt and summary.json go here")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="global sequences per step (default 32)")
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="sequences per forward pass on each rank (gradient accumulation)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr (default 0.1)")
    parser.add_argument("--warmup", type=int, default=100, help="linear warmup steps (default 100)")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: at the end)")
    parser.add_argument("--eval-batch-size", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="steps between checkpoints (default: --eval-every)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="checkpoint and stop after this much wall time (continue with --resume)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="checkpoint and stop at this step (the schedule still spans --steps)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN_DIR/checkpoint.pt if present")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: on with CUDA)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on with CUDA)")
    parser.add_argument("--m1-flops-per-byte", type=float, default=None,
                        help="M1's FLOPs/byte (default: the train manifest's extra, else 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Under torchrun (WORLD_SIZE > 1) join the process group (nccl on CUDA, gloo on CPU)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        use_cuda = torch.cuda.is_available() and (args.device is None or args.device.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        train_ds, valid_ds = open_dataset(args.train), open_dataset(args.valid)
        config = preset(args.preset, train_ds.vocab_size, context=args.seq_len, dropout=args.dropout)
        options = TrainOptions(
            batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
            warmup=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed,
            micro_batch_size=args.micro_batch_size, eval_every=args.eval_every,
            eval_batch_size=args.eval_batch_size, checkpoint_every=args.checkpoint_every,
            out_dir=args.out, resume=args.resume, time_limit=args.time_limit,
            stop_after=args.stop_after, device=args.device, compile=args.compile, bf16=args.bf16,
            m1_flops_per_byte=args.m1_flops_per_byte, progress=not args.no_progress,
        )
        summary = train_m2(train_ds, valid_ds, config, args.steps, options)
        if rank_and_world()[0] == 0:
            brief = {k: v for k, v in summary.items() if k not in ("history", "config", "method")}
            print(json.dumps(brief, indent=2))
        if distributed:
            # Every rank done before any tears the group down: a rank that leaves while another
            # still has gloo traffic in flight can abort ("terminate called without an active
            # exception"), seen once in CI.
            dist.barrier()
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0
