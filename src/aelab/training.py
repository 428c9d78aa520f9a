"""The training loop: ``train()`` runs a ``Trainer`` over a run folder; the loop emits events.

Each epoch: train on reshuffled batches, measure the validation loss, check that the weights are
finite, then tell the callbacks (``aelab.callbacks``), which write the run folder (checkpoint,
metrics, weights, figures, report) and show progress. Ctrl-C / SIGTERM finish the current step,
let the callbacks save a checkpoint and raise ``TrainingInterrupted``; ``train(..., resume=True)``
continues bit for bit from the last checkpoint. Nothing here prints or writes a file.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from . import checkpoint as ckpt
from . import distributed
from .callbacks import Callback, CallbackList, Figures, Report, RunFolder
from .config import RunConfig
from .data.batches import Batches, noise_generator
from .data.sets import ImageSet, load_splits
from .devices import resolve_device
from .errors import AelabError
from .evaluation import psnr_from_mse
from .inference import chunk_size, infer
from .model import ConvAutoencoder
from .optim import make_optimizer, make_scheduler
from .run import lock_existing_run, lock_new_run, read_weights, resumed_config
from .steps import TrainStep, resolve_shards


class TrainingInterrupted(AelabError):
    """Training stopped by a signal after saving a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int, run_dir: Path):
        super().__init__(message)
        self.exit_code, self.run_dir = 128 + signum, run_dir


class NumericalFault(AelabError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    config: RunConfig
    model: ConvAutoencoder
    metrics: list[dict[str, float]]
    evaluation: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None  # set by the Report callback


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


class Trainer:
    """Trains one run in memory and tells ``callbacks`` what happens; ``fit()`` does it all."""

    CHECK_EVERY = 25  # steps between loss checks: each is a host sync (costly on a GPU); a bad step is still found

    def __init__(self, config: RunConfig, run_dir: Path, splits: dict[str, ImageSet],
                 callbacks: Iterable[Callback] = ()):
        self.config, self.run_dir = config, Path(run_dir)
        self.callbacks = CallbackList(callbacks)
        cfg = config.train
        self.device = resolve_device(cfg.device)
        if distributed.active():  # under torchrun: this rank's device, in the process group
            self.device = distributed.setup(self.device)
        torch.manual_seed(cfg.seed)  # as the tutorial: the seed is set before the model is built
        # channels-last runs the small convolutions on oneDNN's faster kernels (benchmarks/RESULTS.md)
        self.model = ConvAutoencoder.from_config(config.model).to(self.device, memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        rank, world_size, _ = distributed.world()
        # under torchrun each rank reads and trains its slice of every batch
        self.batches = Batches(splits["train"].images, cfg.batch_size, self.device, part=(rank, world_size))
        self.train_step = TrainStep(self.model, self.optimizer, self.batches, cfg,
                                    resolve_shards(cfg.shards, self.device, cfg.batch_size))
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, cfg.epochs * len(self.batches))
        self.fingerprint = ckpt.data_fingerprint(splits)
        self.distributed = distributed.active()
        # the images this process evaluates, and the row of the split they start at: the whole split, or
        # under torchrun this rank's share (the losses are averaged across the ranks)
        self.evaluated = {name: self._share(splits[name]) for name in ("val", "test")}
        if rank != 0:  # only rank 0's callbacks (figures, report) use the whole validation and test splits
            splits = {"train": splits["train"]}
        self.splits = splits
        # the position (the next step to run) and what the epochs so far left
        self.epoch, self.step = 0, 0
        self.metrics: list[dict[str, float]] = []
        self.best_val, self.best_epoch, self.best_weights = math.inf, 0, None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_count, self.running_loss = 0, math.nan
        self.noise: torch.Generator | None = None
        self.elapsed = 0.0

    # the loop --------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``train.epochs``, evaluate on the test split, and return the result."""
        try:
            with StopFlag() as stop, self.train_step:
                self.callbacks.on_train_start(self)
                while self.epoch < self.config.train.epochs:
                    started = time.perf_counter()
                    self.callbacks.on_epoch_start(self)
                    self.train_epoch(stop)
                    row = self.end_epoch(started)
                    self.callbacks.on_epoch_end(self, row)
                    if stop.signum is not None:  # a signal during the validation pass
                        raise self._interrupted(stop.signum, f"after epoch {self.epoch}")
            result = self.finish()
            self.callbacks.on_train_end(self, result)
            return result
        finally:
            self.callbacks.on_close(self)

    def train_epoch(self, stop: StopFlag) -> None:
        cfg = self.config.train
        if self.step == 0:
            self.noise = self._noise_for(self.epoch)
            self.loss_sum.zero_()
            self.loss_count = 0
        pending: list[torch.Tensor] = []
        for index in self.batches.indices(cfg.seed, self.epoch, cfg.shuffle, start=self.step):
            loss = self.train_step(index, self.noise)
            self.scheduler.step()
            pending.append(loss)
            self.loss_sum += loss.double() * len(index)
            self.loss_count += len(index)
            self.step += 1
            stopping = distributed.any_rank(stop.signum is not None) if self.distributed else stop.signum is not None
            if len(pending) >= self.CHECK_EVERY or stopping or self.step == len(self.batches):
                self._check_losses(torch.stack(pending), self.step - len(pending))
                pending = []
                self.running_loss = float(self.loss_sum) / self.loss_count
            self.callbacks.on_step_end(self)
            if stopping:  # (under torchrun: every rank at this same step)
                self.check_weights()
                self.callbacks.on_interrupt(self)
                raise self._interrupted(stop.signum or signal.SIGTERM, f"at epoch {self.epoch + 1}, step {self.step}")

    def end_epoch(self, started: float) -> dict[str, float]:
        """Validation, the epoch's metrics row and the best weights. ``seconds``: training + validation."""
        cfg = self.config.train
        with self.train_step.all_threads():
            val_loss = self.loss("val", cfg.loss, noise_factor=cfg.noise_factor)
        row = {"epoch": self.epoch + 1, "train_loss": float(self.loss_sum) / max(1, self.loss_count),
               "val_loss": val_loss, "lr": self.optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - started, 3)}
        if not math.isfinite(val_loss):
            raise self._fault(f"the validation loss became {val_loss} at epoch {self.epoch + 1}")
        self.check_weights()
        self.metrics.append(row)
        self.epoch, self.step = self.epoch + 1, 0
        self.elapsed += row["seconds"]
        if val_loss < self.best_val:
            self.best_val, self.best_epoch = val_loss, self.epoch
            self.best_weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        return row

    def finish(self) -> TrainResult:
        """The kept weights (``train.keep``: best or last) in the model, and their test evaluation."""
        cfg = self.config.train
        if cfg.keep == "best" and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        self.model.eval()
        test_mse = self.loss("test", "mse")
        evaluation: dict[str, Any] = {
            "test_mse": test_mse, "test_psnr": psnr_from_mse(test_mse),
            "val_mse": self.loss("val", "mse"),
            "kept": cfg.keep, "best_epoch": self.best_epoch, "train_seconds": round(self.elapsed, 3),
        }
        if cfg.noise_factor > 0:
            evaluation["test_denoising_mse"] = self.loss("test", "mse", noise_factor=cfg.noise_factor)
        return TrainResult(self.run_dir, self.config, self.model, self.metrics, evaluation)

    def _share(self, split: ImageSet) -> tuple[Any, int]:
        start, stop = distributed.share(len(split), chunk_size(split.image_shape))
        part = split if (start, stop) == (0, len(split)) else split.subset(torch.arange(start, stop))
        return _on(part.images, self.device), start

    def loss(self, split: str, loss: str, noise_factor: float = 0.0) -> float:
        """The mean loss per pixel on the ``val`` or ``test`` split (under torchrun: each rank's share,
        averaged across the ranks: the number one process gets on the whole split)."""
        images, first = self.evaluated[split]
        result = infer(self.model, images, mse=loss == "mse", bce=loss == "bce", noise_factor=noise_factor,
                       seed=self.config.train.seed, first=first)
        errors = result.mse if loss == "mse" else result.bce
        return distributed.mean_across(errors, self.device) if self.distributed else result.mean(loss)

    # checks ----------------------------------------------------------------------------------------
    def _check_losses(self, losses: torch.Tensor, first_step: int) -> None:
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            raise self._fault(f"the loss became {float(losses[int(bad[0])])} at epoch {self.epoch + 1}, "
                              f"step {first_step + int(bad[0]) + 1}")

    def check_weights(self) -> None:
        """Every parameter and buffer finite (one host sync); else a NumericalFault naming the first bad one."""
        tensors = [(name, value) for name, value in self.model.state_dict().items() if value.is_floating_point()]
        finite = torch.stack([torch.isfinite(value).all() for _, value in tensors])
        if not bool(finite.all()):
            name = tensors[int((~finite).nonzero()[0])][0]
            raise self._fault(f"the weights became NaN or infinite ({name}) at epoch {self.epoch + 1}")

    def _fault(self, what: str) -> NumericalFault:
        if ckpt.has_checkpoint(self.run_dir):
            kept = f"the last good checkpoint (epoch {self.epoch}) and model.safetensors are kept"
        else:
            kept = "no checkpoint had been saved yet"
        return NumericalFault(f"{what}; training stopped and {kept}. Likely fix: train again with a lower `train.lr` "
                              f"(now {self.config.train.lr:g}; `overwrite` replaces this run)")

    def _interrupted(self, signum: int, where: str) -> TrainingInterrupted:
        return TrainingInterrupted(f"stopped by {signal.Signals(signum).name} {where}; checkpoint saved in "
                                   f"{self.run_dir}", signum, self.run_dir)

    # state -----------------------------------------------------------------------------------------
    def _noise_for(self, epoch: int) -> torch.Generator | None:
        if self.config.train.noise_factor <= 0:
            return None
        return noise_generator(self.config.train.seed * 1_000_003 + epoch + 7, self.device)

    def state(self) -> dict[str, Any]:
        """What resuming needs besides the weights (saved in a checkpoint's trainer.pt)."""
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "epoch": self.epoch, "step": self.step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "noise_rng": self.noise.get_state() if self.noise is not None else None,
            "loss_sum": self.loss_sum.cpu(), "loss_count": self.loss_count,
            "metrics": self.metrics, "best_val": self.best_val, "best_epoch": self.best_epoch,
            "data_fingerprint": self.fingerprint, "elapsed": self.elapsed,
        }

    def restore(self) -> None:
        """Continue from the run folder's last checkpoint (and its best weights so far)."""
        state = ckpt.load_checkpoint(self.run_dir, self.model)
        if state.get("data_fingerprint") != self.fingerprint:
            raise AelabError(f"resume {self.run_dir}: the training data differ from the data this run was trained on "
                             "(another dataset version or data folder); resume with the same data")
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the run may have been saved on another device: keep this one's
            group["fused"], group["capturable"] = self.optimizer.defaults["fused"], self.optimizer.defaults["capturable"]
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.loss_sum = state["loss_sum"].to(self.device)
        self.loss_count = int(state["loss_count"])
        self.metrics = list(state["metrics"])
        self.best_val, self.best_epoch = float(state["best_val"]), int(state["best_epoch"])
        self.elapsed = float(state["elapsed"])
        best = self.run_dir / "state" / "best.safetensors"
        if best.is_file():
            self.best_weights = {name: value.to(self.device) for name, value in read_weights(best).items()}
        if self.step > 0 and state["noise_rng"] is not None:
            self.noise = self._noise_for(self.epoch)
            self.noise.set_state(state["noise_rng"])


def _on(images, device: torch.device):
    """Images in memory moved to ``device`` once; images on disk stay there (read chunk by chunk)."""
    return images.to(device) if torch.is_tensor(images) else images


def train(config: RunConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, report: bool = True, data: dict[str, ImageSet] | None = None,
          explicit: set[str] | None = None, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train a run and write its folder ``out`` (default: runs/DATASET-dLATENT); return the model,
    metrics and test evaluation.

    The run folder is written by the callbacks ``RunFolder``, ``Figures`` and (with ``report``)
    ``Report``; ``callbacks`` are added after them (progress, console lines, trackers, your own).
    ``data`` (``{"train", "val", "test"}`` ImageSets) replaces the dataset named in the config,
    for tests and notebooks. With ``resume=True`` the run in ``out`` continues from its last
    checkpoint; ``config`` then only supplies the settings named in ``explicit`` (``"train.epochs"``).
    One process at a time trains a run folder: a second is refused with an AelabError.
    """
    run_dir = Path(out if out is not None else (config or RunConfig()).default_run_dir())
    rank, world_size, _ = distributed.world()
    if not resume and distributed.restarts() and ckpt.has_checkpoint(run_dir):
        # torchrun restarted the processes (--max-restarts) after one failed: go on from the checkpoint,
        # whatever the command said (an --overwrite would otherwise erase what the first try trained)
        resume = True
    lock = None
    if not resume:
        config = (config or RunConfig()).validate()
    if rank == 0:  # under torchrun, rank 0 alone holds the run folder and writes it
        lock = lock_existing_run(run_dir) if resume else lock_new_run(run_dir, overwrite)
    else:
        callbacks = ()
    try:
        if world_size > 1:
            distributed.setup(resolve_device((config or RunConfig()).train.device))
            distributed.barrier()  # rank 0 has the folder (an old run replaced) before any rank reads it
        if resume:
            config = resumed_config(run_dir, config, explicit or set())
        config = config.validate()
        splits = data if data is not None else load_splits(config.data)
        config = _fitted_to(config, splits, world_size)
        defaults = [RunFolder(), Figures()] + ([Report()] if report else []) if rank == 0 else []
        trainer = Trainer(config, run_dir, splits, [*defaults, *callbacks])
        del splits  # (the trainer keeps what this process needs: under torchrun, a share of val and test on rank > 0)
        if resume:
            trainer.restore()
            if config.train.epochs < trainer.epoch:
                raise AelabError(f"`train.epochs` {config.train.epochs} is less than the {trainer.epoch} epochs "
                                 f"already trained; give {trainer.epoch} or more")
        result = trainer.fit()
        if world_size > 1:
            distributed.teardown()  # (only after a clean end: with a rank gone it could wait for ever)
        return result
    finally:
        if lock is not None:
            lock.release()


def _fitted_to(config: RunConfig, splits: dict[str, ImageSet], world_size: int = 1) -> RunConfig:
    """The config with the model sized for the data, the images' channels, size and fingerprint (so
    any tool prepares other images the same way), a file's or folder's absolute path, and the number
    of shards that auto resolves to."""
    channels, height, width = splits["train"].image_shape
    config = replace(config, model=replace(config.model, in_channels=channels, image_size=height,
                                           image_width=None if width == height else width))
    source = splits["train"].source
    data = replace(config.data, channels=channels, image_size=f"{height}x{width}",
                   fingerprint=source.fingerprint if source is not None else None)
    if data.kind() != "named" and Path(data.dataset).expanduser().exists():  # a file or folder: where it is
        data = replace(data, dataset=str(Path(data.dataset).expanduser().resolve()))
    config = replace(config, data=data)
    if world_size > 1:  # under torchrun the ranks are the shards: the run is the one --shards N computes
        if config.train.shards not in (0, world_size):
            raise AelabError(f"`train.shards` is {config.train.shards} but {world_size} processes train this run; under "
                             f"torchrun each process is one shard: give {world_size} (or leave it out), or run "
                             f"{config.train.shards} processes")
        config = replace(config, train=replace(config.train, shards=world_size))
    elif config.train.shards == 0:  # auto: the run records the number it uses
        shards = resolve_shards(0, resolve_device(config.train.device), config.train.batch_size)
        config = replace(config, train=replace(config.train, shards=shards))
    return config
