"""The training loop: load data, build the model, train epoch by epoch, write the run folder.

Each epoch: train on reshuffled batches, measure the validation loss, save a checkpoint
(atomically), the metrics and a reconstruction figure. Ctrl-C / SIGTERM finish the current
step, save a checkpoint and raise ``TrainingInterrupted``; ``train(..., resume=True)``
continues bit for bit from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .config import RunConfig, TrainConfig
from .data.batches import Batches
from .data.sets import ImageSet, load_splits
from .devices import plain_fp32, resolve_device
from .errors import AelabError
from .fsutil import atomic_save
from .evaluation import add_noise, noise_generator, psnr_from_mse, reconstruction_loss
from .model import ConvAutoencoder
from .plots import loss_curves_figure, reconstruction_figure

RUN_FILES = ("config.json", "model.safetensors", "metrics.csv", "state", "figures", "report.html", "evaluation.json")
N_FIGURE_IMAGES = 5


class TrainingInterrupted(AelabError):
    """Training stopped by a signal after saving a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NumericalFault(AelabError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    config: RunConfig
    model: ConvAutoencoder
    metrics: list[dict[str, float]]
    evaluation: dict[str, Any] = field(default_factory=dict)


# --- the learning-rate schedule ---------------------------------------------------------------

def one_cycle(step: int, total_steps: int, warmup: float = 0.25, start_div: float = 25.0,
              final_div: float = 1e4) -> float:
    """Multiplier of the peak rate: cosine up from 1/start_div, then cosine down to 1/final_div."""
    peak_step = max(1, int(total_steps * warmup))
    if step < peak_step:
        low, high, t = 1.0 / start_div, 1.0, step / peak_step
    else:
        low, high, t = 1.0, 1.0 / final_div, (step - peak_step) / max(1, total_steps - peak_step)
    return high + (low - high) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: one_cycle(step, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


# --- the loss -----------------------------------------------------------------------------------

def loss_fn(model: ConvAutoencoder, inputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss per pixel: MSE of the sigmoid output, or BCE computed from the logits."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(model.decoder.logits(model.encoder(inputs)), targets)
    return F.mse_loss(model(inputs), targets)


def forward_backward(model: ConvAutoencoder, inputs: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
                     weight: float = 1.0) -> torch.Tensor:
    """The loss of ``model`` on a batch (bf16 autocast if asked) and its gradient, times ``weight``,
    added to the parameters' ``.grad``; returns the (unweighted) loss, detached."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        loss = loss_fn(model, inputs, targets, cfg.loss)
    (loss * weight if weight != 1.0 else loss).backward()
    return loss.detach()


# --- the whole step as one CUDA graph --------------------------------------------------------------

def cuda_graphs_wanted(device: torch.device, noise_factor: float) -> bool:
    """CUDA graphs are used on CUDA devices for runs without input noise, unless AELAB_CUDA_GRAPHS=0."""
    return device.type == "cuda" and noise_factor <= 0 and os.environ.get("AELAB_CUDA_GRAPHS", "1") != "0"


class CudaGraphStep:
    """A whole training step (batch gather, forward, loss, backward, Adam) captured as one CUDA graph.

    A model this small is limited on a GPU by launching its hundred-odd small kernels one by one
    from Python; replaying the captured graph launches them all at once. Only the batch's indices
    and the learning rate change between replays (both are copied into the graph's own tensors).
    Capture needs a few warm-up steps first; they run at learning rate 0 on a side stream, and the
    weights, BatchNorm statistics and optimizer state are then put back as they were, so the run
    computes what the eager loop computes.
    """

    WARMUP_STEPS = 3

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.batch_size = trainer.config.train.batch_size
        device = trainer.device
        self.index = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None

    def _step(self) -> torch.Tensor:
        t = self.trainer
        clean = t.batches.gather(self.index).contiguous(memory_format=torch.channels_last)
        loss = forward_backward(t.model, clean, clean, t.config.train)
        t.optimizer.step()
        return loss

    def capture(self) -> None:
        model, optimizer, device = self.trainer.model, self.trainer.optimizer, self.trainer.device
        saved_model = {name: value.clone() for name, value in model.state_dict().items()}
        saved_state = {param: {key: value.clone() for key, value in state.items() if torch.is_tensor(value)}
                       for param, state in optimizer.state.items()}
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = self.lr  # the captured Adam reads its rate from this tensor
        self.lr.zero_()
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    self._step()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)  # backward then writes the gradients into the graph's memory
            with torch.cuda.graph(graph):
                self.loss = self._step()
            self.graph = graph
        finally:
            for group, rate in zip(optimizer.param_groups, rates):
                group["lr"] = rate
            with torch.no_grad():
                model.load_state_dict(saved_model)  # copies in place: the graph keeps its tensors
                for param, state in optimizer.state.items():
                    for key, value in state.items():
                        if torch.is_tensor(value):
                            value.copy_(saved_state[param][key]) if param in saved_state else value.zero_()

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """One step on the images at ``index`` (a full batch); returns the loss (on the device)."""
        if self.graph is None:
            self.capture()  # (its warm-up steps run at rate 0 on whatever batch self.index holds)
        self.index.copy_(index)
        self.lr.fill_(self.trainer.optimizer.param_groups[0]["lr"])
        self.graph.replay()
        return self.loss.clone()


# --- CPU data parallelism: shards of each batch on threads of their own -----------------------------

def resolve_shards(requested: int, device: torch.device, batch_size: int) -> int:
    """How many shards a batch is split into: ``requested``, or for 0 (auto) 2 on a CPU with 2 or
    more threads and batches of 128 or more, else 1. Always 1 off the CPU."""
    if device.type != "cpu":
        return 1
    if requested == 0:
        return 2 if torch.get_num_threads() >= 2 and batch_size >= 128 else 1
    return requested


class ShardedStep:
    """One training step with the batch split into shards, one thread each, on the CPU.

    The model's small layers leave PyTorch's intra-op threads mostly waiting on each other; whole
    shards on threads of their own keep every core busy (1.08x on 2 cores, benchmarks/RESULTS.md).
    The replicas share the model's parameters, so their gradients add up in the parameters'
    ``.grad`` (each shard's loss is weighted by its share of the batch: the sum is the gradient of
    the batch's mean loss) and one optimizer step follows. Each replica has its own BatchNorm
    buffers and normalises with its shard's statistics, as multi-GPU data parallelism does; after
    each step the running statistics are averaged (weighted by shard size; for the running means
    this is exactly the whole-batch update) and copied back to every replica.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, shards: int):
        self.optimizer, self.config, self.shards = optimizer, config, shards
        self.replicas = [model] + [self._share_parameters(copy.deepcopy(model), model) for _ in range(shards - 1)]
        self.buffers = [[b for b in replica.buffers() if b.is_floating_point()] for replica in self.replicas]
        self.threads_each = max(1, torch.get_num_threads() // shards)
        self.saved_threads = torch.get_num_threads()  # restored on exit
        self.jobs: list[Any] = [None] * shards
        self.losses: list[torch.Tensor | None] = [None] * shards
        self.errors: list[BaseException] = []
        self.go = [threading.Semaphore(0) for _ in range(shards)]
        self.done = threading.Semaphore(0)
        self.workers: list[threading.Thread] = []

    @staticmethod
    def _share_parameters(replica: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
        for name, parameter in model.named_parameters():
            owner, _, attr = name.rpartition(".")
            replica.get_submodule(owner)._parameters[attr] = parameter
        return replica

    def __enter__(self) -> "ShardedStep":
        """Start the worker threads (one per shard after the first) and set one intra-op thread each."""
        self.saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads_each)
        self.workers = [threading.Thread(target=self._work, args=(k,), name=f"aelab-shard-{k}", daemon=True)
                        for k in range(1, self.shards)]
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        for k in range(1, self.shards):
            self.jobs[k] = None  # tells the worker to end
            self.go[k].release()
        for worker in self.workers:
            worker.join()
        torch.set_num_threads(self.saved_threads)

    @contextlib.contextmanager
    def all_threads(self) -> Iterator[None]:
        """Within: the calling thread uses every intra-op thread again (for the validation pass)."""
        torch.set_num_threads(self.saved_threads)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads_each)

    def _work(self, k: int) -> None:
        torch.set_num_threads(self.threads_each)
        while True:
            self.go[k].acquire()
            if self.jobs[k] is None:
                return
            try:
                self._shard(k)
            except BaseException as error:  # handed to the main thread
                self.errors.append(error)
            self.done.release()

    def _shard(self, k: int) -> None:
        inputs, targets, weight = self.jobs[k]
        self.losses[k] = forward_backward(self.replicas[k], inputs, targets, self.config, weight) * weight

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward of every shard, then one optimizer step; returns the batch's mean loss."""
        n = min(self.shards, len(inputs))
        bounds = [len(inputs) * k // n for k in range(n + 1)]
        for k in range(n):
            a, b = bounds[k], bounds[k + 1]
            self.jobs[k] = (inputs[a:b], targets[a:b], (b - a) / len(inputs))
        self.optimizer.zero_grad(set_to_none=True)
        for k in range(1, n):
            self.go[k].release()
        try:
            self._shard(0)
        finally:
            for _ in range(1, n):
                self.done.acquire()
        if self.errors:
            error, self.errors[:] = self.errors[0], []
            raise error
        self.optimizer.step()
        self._merge_statistics(n, [self.jobs[k][2] for k in range(n)])
        return torch.stack([self.losses[k] for k in range(n)]).sum()

    @torch.no_grad()
    def _merge_statistics(self, n: int, weights: list[float]) -> None:
        merged = self.buffers[0]
        if not merged:  # a model without BatchNorm
            return
        if n > 1:
            torch._foreach_mul_(merged, weights[0])
            for k in range(1, n):
                torch._foreach_add_(merged, self.buffers[k], alpha=weights[k])
        for k in range(1, self.shards):
            torch._foreach_copy_(self.buffers[k], merged)


# --- signals ------------------------------------------------------------------------------------

class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after each step. A second signal stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # second signal: give up waiting for the step
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# --- RNG state as plain tensors and lists (so torch.load(weights_only=True) can read it) ---------

def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    values, version = state["python"]
    random.setstate((version, tuple(values), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def data_fingerprint(splits: dict[str, ImageSet]) -> str:
    """A short hash of the training and validation images and labels (checked on resume)."""
    digest = hashlib.blake2b(digest_size=12)
    for name in ("train", "val"):
        digest.update(splits[name].images.numpy().tobytes())
        digest.update(splits[name].labels.numpy().tobytes())
    return digest.hexdigest()


# --- the run folder -----------------------------------------------------------------------------

def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise AelabError(f"--out {run_dir} is a file; give a folder for the run")
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if present and not overwrite:
        raise AelabError(f"{run_dir} already holds a run ({', '.join(present)}); "
                         f"use --resume {run_dir} to continue it, --overwrite to replace it, or another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AelabError(f"cannot create the run folder {run_dir} ({error.strerror}); choose another --out") from None
    for name in present:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _resumed_config(run_dir: Path, requested: RunConfig | None, explicit: set[str]) -> RunConfig:
    """The run's own config; only --epochs, --device, --keep and --data-dir may differ from it
    (the data themselves are checked by their fingerprint)."""
    saved = ckpt.load_config(ckpt.check_run_dir(run_dir))
    if requested is None:
        return saved
    mutable = {"train.epochs", "train.device", "train.keep", "data.data_dir"}
    for name in sorted(explicit - mutable):
        section, key = name.split(".")
        asked, have = getattr(getattr(requested, section), key), getattr(getattr(saved, section), key)
        if asked != have:
            raise AelabError(f"--resume: the run was trained with {key}={have!r}, not {asked!r}; a resumed run "
                             "keeps its architecture, data and recipe (only --epochs, --device, --keep and --data-dir "
                             "may change). Start a new run with another --out instead")
    changes: dict[str, dict[str, Any]] = {"data": {}, "train": {}}
    for name in explicit & mutable:
        section, key = name.split(".")
        changes[section][key] = getattr(getattr(requested, section), key)
    return replace(saved, data=replace(saved.data, **changes["data"]), train=replace(saved.train, **changes["train"]))


# --- the loop -----------------------------------------------------------------------------------

class Trainer:
    """Trains one run; ``run()`` does it all. Short steps, each a method, read top to bottom."""

    def __init__(self, config: RunConfig, run_dir: Path, splits: dict[str, ImageSet], quiet: bool,
                 on_epoch: Callable[[dict[str, float]], None] | None = None):
        self.config, self.run_dir, self.splits, self.quiet = config, run_dir, splits, quiet
        self.on_epoch = on_epoch
        cfg = config.train
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)  # as the tutorial: the seed is set before the model is built
        # channels-last runs the small convolutions on oneDNN's faster kernels (benchmarks/RESULTS.md)
        self.model = ConvAutoencoder.from_config(config.model).to(self.device, memory_format=torch.channels_last)
        use_graphs = cuda_graphs_wanted(self.device, cfg.noise_factor)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          fused=self.device.type in ("cpu", "cuda") or None, capturable=use_graphs)
        self.graph_step = CudaGraphStep(self) if use_graphs else None
        self.shards = resolve_shards(cfg.shards, self.device, cfg.batch_size)
        self.sharded: ShardedStep | None = None  # set while run() trains with shards
        self.batches = Batches(splits["train"].images, cfg.batch_size, self.device)
        self.total_steps = cfg.epochs * len(self.batches)
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, self.total_steps)
        self.val_images = splits["val"].images.to(self.device)
        self.figure_images = splits["test"].images[:N_FIGURE_IMAGES].to(self.device)
        self.metrics: list[dict[str, float]] = []
        self.best_val, self.best_epoch = math.inf, 0
        self.epoch, self.step = 0, 0  # position: the next step to run
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_count = 0
        self.noise: torch.Generator | None = None
        self.elapsed = 0.0
        self.fingerprint = data_fingerprint(splits)

    # state ---------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "epoch": self.epoch, "step": self.step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "noise_rng": self.noise.get_state() if self.noise is not None else None,
            "loss_sum": self.loss_sum.cpu(), "loss_count": self.loss_count,
            "metrics": self.metrics, "best_val": self.best_val, "best_epoch": self.best_epoch,
            "data_fingerprint": self.fingerprint, "elapsed": self.elapsed,
        }

    def restore(self) -> None:
        state = ckpt.load_checkpoint(self.run_dir, self.model)
        if state.get("data_fingerprint") != self.fingerprint:
            raise AelabError(f"--resume {self.run_dir}: the training data differ from the data this run was "
                             "trained on (another dataset version or data folder); resume with the same data")
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the run may have been saved on another device: keep this one's
            group["fused"], group["capturable"] = self.optimizer.defaults["fused"], self.optimizer.defaults["capturable"]
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.loss_sum = state["loss_sum"].to(self.device)
        self.loss_count = int(state["loss_count"])
        self.metrics = list(state["metrics"])
        self.best_val, self.best_epoch = float(state["best_val"]), int(state["best_epoch"])
        self.elapsed = float(state["elapsed"])
        if self.step > 0 and state["noise_rng"] is not None:
            self.noise = self._noise_for(self.epoch)
            self.noise.set_state(state["noise_rng"])

    def save_checkpoint(self) -> None:
        name = f"ckpt-{self.epoch:04d}-{self.step:05d}"
        ckpt.save_checkpoint(self.run_dir, self.model, self.state(), name)

    # steps ---------------------------------------------------------------------------------------
    def _noise_for(self, epoch: int) -> torch.Generator | None:
        if self.config.train.noise_factor <= 0:
            return None
        return noise_generator(self.config.train.seed * 1_000_003 + epoch + 7, self.device)

    def step_at(self, index: torch.Tensor) -> torch.Tensor:
        """One optimizer step on the training images at ``index``; returns the loss (on the device)."""
        if self.graph_step is not None and len(index) == self.graph_step.batch_size:
            try:
                loss = self.graph_step(index)
            except RuntimeError as error:  # capture failed: the step is put back, go on without graphs
                if self.graph_step.graph is not None:
                    raise
                print(f"aelab: CUDA graph capture failed ({error}); training without CUDA graphs",
                      file=sys.stderr, flush=True)
                self.graph_step = None
            else:
                self.scheduler.step()
                return loss
        return self.train_step(self.batches.gather(index))

    def train_step(self, clean: torch.Tensor) -> torch.Tensor:
        """One eager optimizer step on the float batch ``clean``; returns the loss (on the device)."""
        cfg = self.config.train
        clean = clean.contiguous(memory_format=torch.channels_last)  # [B, C, H, W]; free for C=1
        inputs = add_noise(clean, cfg.noise_factor, self.noise) if self.noise is not None else clean
        if self.sharded is not None:
            loss = self.sharded(inputs, clean)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = forward_backward(self.model, inputs, clean, cfg)
            self.optimizer.step()
        self.scheduler.step()
        return loss

    def _check_finite(self, losses: torch.Tensor, first_step: int) -> None:
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = first_step + int(bad[0])
            raise NumericalFault(
                f"the loss became {float(losses[int(bad[0])])} at epoch {self.epoch + 1}, step {step + 1}; "
                f"training stopped and {self._what_is_kept()}. "
                f"Likely fix: train again with a lower --lr (now {self.config.train.lr:g}; --overwrite replaces this run)")

    def _what_is_kept(self) -> str:
        if (self.run_dir / "state" / "last.json").is_file():
            return f"the last good checkpoint (epoch {self.epoch}) and model.safetensors are kept"
        return "no checkpoint had been saved yet"

    def train_epoch(self, stop: StopFlag, bar) -> None:
        cfg = self.config.train
        if self.step == 0:
            self.noise = self._noise_for(self.epoch)
            self.loss_sum.zero_()
            self.loss_count = 0
        check_every = 25  # each check is a host sync (costly on a GPU); a bad step is still found exactly
        pending: list[torch.Tensor] = []
        first_pending = self.step
        for index in self.batches.indices(cfg.seed, self.epoch, cfg.shuffle, start=self.step):
            loss = self.step_at(index)
            pending.append(loss)
            self.loss_sum += loss.double() * len(index)
            self.loss_count += len(index)
            self.step += 1
            bar.update(1)
            if len(pending) >= check_every or stop.signum is not None or self.step == len(self.batches):
                self._check_finite(torch.stack(pending), first_pending)
                pending, first_pending = [], self.step
                bar.set_postfix_str(f"loss {float(self.loss_sum) / self.loss_count:.5f}", refresh=False)
            if stop.signum is not None:
                self.save_checkpoint()
                name = signal.Signals(stop.signum).name
                raise TrainingInterrupted(
                    f"stopped by {name} at epoch {self.epoch + 1}, step {self.step}; checkpoint saved. "
                    f"Resume with: aelab train --resume {self.run_dir}", stop.signum)

    def end_epoch(self, started: float) -> dict[str, float]:
        """Validation, metrics, best weights, checkpoint, figure. ``seconds``: training + validation."""
        cfg = self.config.train
        with self.sharded.all_threads() if self.sharded is not None else contextlib.nullcontext():
            val_loss = reconstruction_loss(self.model, self.val_images, cfg.loss, noise_factor=cfg.noise_factor,
                                           seed=cfg.seed)
        row = {"epoch": self.epoch + 1, "train_loss": float(self.loss_sum) / max(1, self.loss_count),
               "val_loss": val_loss, "lr": self.optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - started, 3)}
        if not math.isfinite(val_loss):
            raise NumericalFault(f"the validation loss became {val_loss} at epoch {self.epoch + 1}; training stopped "
                                 f"and {self._what_is_kept()}. Likely fix: train again with a lower --lr (now {cfg.lr:g})")
        self.metrics.append(row)
        if val_loss < self.best_val:
            self.best_val, self.best_epoch = val_loss, self.epoch + 1
            ckpt.save_weights(self.model, self.run_dir / "state" / "best.safetensors",
                              {"epoch": str(self.epoch + 1), "val_loss": repr(val_loss)})
        self.epoch, self.step = self.epoch + 1, 0
        self.save_checkpoint()
        ckpt.write_metrics(self.metrics, self.run_dir)
        self.save_chosen_weights()
        self.save_reconstructions()
        return row

    def save_chosen_weights(self) -> None:
        """model.safetensors: the best weights so far, or the last, as --keep says."""
        best = self.run_dir / "state" / "best.safetensors"
        if self.config.train.keep == "best" and best.is_file():
            atomic_save(self.run_dir / "model.safetensors", lambda tmp: shutil.copyfile(best, tmp))
        else:
            ckpt.save_weights(self.model, self.run_dir / "model.safetensors", {"epoch": str(self.epoch)})

    @torch.no_grad()
    def save_reconstructions(self) -> None:
        cfg = self.config.train
        self.model.eval()
        clean = self.figure_images.float().div(255)
        noisy = add_noise(clean, cfg.noise_factor, noise_generator(0, self.device)) if cfg.noise_factor > 0 else None
        output = self.model(noisy if noisy is not None else clean)
        self.model.train()
        reconstruction_figure(clean, output, self.run_dir / "figures" / "reconstructions" / f"epoch-{self.epoch:03d}.png",
                              title=f"epoch {self.epoch}", noisy=noisy)

    def run(self) -> None:
        """Train until ``epochs``: shards on CPU threads where configured, plain fp32 on CUDA."""
        sharded = ShardedStep(self.model, self.optimizer, self.config.train, self.shards) if self.shards > 1 else None
        with StopFlag() as stop, plain_fp32(), sharded or contextlib.nullcontext():
            self.sharded = sharded
            try:
                self._run_epochs(stop)
            finally:
                self.sharded = None

    def _run_epochs(self, stop: StopFlag) -> None:
        from tqdm.auto import tqdm

        cfg = self.config.train
        while self.epoch < cfg.epochs:
            start = time.perf_counter()
            with tqdm(total=len(self.batches), initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                      leave=False, disable=self.quiet, unit="batch", file=sys.stderr, mininterval=0.5) as bar:
                self.train_epoch(stop, bar)
            row = self.end_epoch(start)
            self.elapsed += row["seconds"]
            if not self.quiet:
                print(f"epoch {row['epoch']:3d}/{cfg.epochs}  train loss {row['train_loss']:.5f}  "
                      f"val loss {row['val_loss']:.5f}  {row['seconds']:.1f} s", flush=True)
            if self.on_epoch is not None:
                self.on_epoch(row)
            if stop.signum is not None:  # a signal during the validation pass
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(stop.signum).name} after epoch {self.epoch}; checkpoint saved. "
                    f"Resume with: aelab train --resume {self.run_dir}", stop.signum)


def train(config: RunConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, report: bool = True,
          data: dict[str, ImageSet] | None = None, explicit: set[str] | None = None,
          on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train a run and write its folder ``out`` (default: runs/DATASET-dLATENT); return the model,
    metrics and test evaluation.

    ``data`` (``{"train", "val", "test"}`` ImageSets) replaces the dataset named in the config,
    for tests and notebooks. With ``resume=True`` the run in ``out`` continues from its last
    checkpoint; ``config`` then only supplies the settings named in ``explicit`` (``"train.epochs"``).
    """
    run_dir = Path(out if out is not None else (config or RunConfig()).default_run_dir())
    if resume:
        config = _resumed_config(run_dir, config, explicit or set())
    else:
        config = (config or RunConfig()).validate()
        _prepare_run_dir(run_dir, overwrite)
    config.validate()
    splits = data if data is not None else load_splits(config.data, quiet=quiet)
    channels, height, width = splits["train"].image_shape
    if height != width:
        raise AelabError(f"images must be square, got {height}x{width}")
    config = replace(config, model=replace(config.model, in_channels=channels, image_size=height))
    if config.train.shards == 0:  # auto: the run records the number it uses
        shards = resolve_shards(0, resolve_device(config.train.device), config.train.batch_size)
        config = replace(config, train=replace(config.train, shards=shards))
    trainer = Trainer(config, run_dir, splits, quiet, on_epoch)
    if resume:
        trainer.restore()
        if config.train.epochs < trainer.epoch:
            raise AelabError(f"--epochs {config.train.epochs} is less than the {trainer.epoch} epochs already trained")
    ckpt.save_config(config, run_dir)
    if not quiet:
        where = f"resuming at epoch {trainer.epoch + 1}" if resume else "training"
        print(f"aelab: {where} on {trainer.device}: {len(splits['train'])} train / {len(splits['val'])} val images, "
              f"latent size {config.model.latent_dim}, recipe {config.train.recipe}, run folder {run_dir}", flush=True)
    trainer.run()
    return finish(trainer, report)


def finish(trainer: Trainer, report: bool) -> TrainResult:
    """Final weights, test evaluation, loss curves and (optionally) the report."""
    run_dir, config = trainer.run_dir, trainer.config
    trainer.save_chosen_weights()
    ckpt.load_weights_into(trainer.model, ckpt.read_weights(run_dir / "model.safetensors"), run_dir / "model.safetensors")
    trainer.model.eval()
    test = trainer.splits["test"].images.to(trainer.device)
    test_mse = reconstruction_loss(trainer.model, test, "mse")
    evaluation: dict[str, Any] = {
        "test_mse": test_mse, "test_psnr": psnr_from_mse(test_mse),
        "val_mse": reconstruction_loss(trainer.model, trainer.val_images, "mse"),
        "kept": config.train.keep, "best_epoch": trainer.best_epoch, "train_seconds": round(trainer.elapsed, 3),
    }
    if config.train.noise_factor > 0:
        evaluation["test_denoising_mse"] = reconstruction_loss(trainer.model, test, "mse",
                                                               noise_factor=config.train.noise_factor)
    ckpt.write_json(run_dir / "evaluation.json", evaluation)
    loss_curves_figure(trainer.metrics, run_dir / "figures" / "loss_curves.png")
    if not trainer.quiet:
        print(f"test MSE {test_mse:.5f} (PSNR {evaluation['test_psnr']:.2f} dB)"
              + (f", denoising MSE {evaluation['test_denoising_mse']:.5f}" if "test_denoising_mse" in evaluation else ""))
    if report:
        from .report import write_report

        path = write_report(run_dir, quiet=trainer.quiet, splits=trainer.splits)
        if not trainer.quiet:
            print(f"report: {path}")
    if not trainer.quiet:
        print(f"run folder: {run_dir}")
    return TrainResult(run_dir, config, trainer.model, trainer.metrics, evaluation)
