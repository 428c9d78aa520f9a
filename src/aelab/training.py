"""The training loop: ``train()`` runs a ``Trainer`` over a run folder; the loop emits events.

Each epoch: train on reshuffled batches, measure the validation loss, check that the weights are
finite, then tell the callbacks (``aelab.callbacks``), which write the run folder (checkpoint,
metrics, weights, figures, report) and show progress. Ctrl-C / SIGTERM finish the current step,
let the callbacks save a checkpoint and raise ``TrainingInterrupted``; ``train(..., resume=True)``
continues bit for bit from the last checkpoint. Nothing here prints or writes a file.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from . import checkpoint as ckpt
from . import distributed, footprint
from .callbacks import Callback, CallbackList, Figures, ProgressBar, Report, RunFolder
from .config import RunConfig, memory_budget, resolved_kl_warmup
from .data.batches import Batches, noise_generator
from .data.sets import ImageSet, close_sets, few_test_images, load_splits, split_sizes
from .defaults import from_data
from .devices import resolve_device
from .errors import AelabError
from .evaluation import SplitMeans, pca_mse, pca_sample, psnr_from_mse
from .models.registry import build_model, family
from .optim import Schedule, make_optimizer, make_scheduler
from .run import RESUMABLE, given_settings, lock_existing_run, lock_new_run, read_record, remove_run_files, \
    resumed_config
from .steps import TrainStep, resolve_shards

log = logging.getLogger("aelab")


# the seeds of each epoch's generators: seed * 1_000_003 + the stream + the epoch (the input noise's stream is
# 7, as ever); streams far apart, so that no epoch's draws repeat another stream's of another epoch
DRAWS_STREAM, PIXELS_STREAM, CHANGES_STREAM = 1 << 18, 2 << 18, 3 << 18


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
    model: torch.nn.Module  # of the run's family (aelab.models.registry)
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
    """Runs the training loop of one run in memory and tells ``callbacks`` what happens; ``fit()``
    does it all.

    ``splits``: "train" and "val" ImageSets, and "test" (evaluated at the end; without it the
    result has the validation split's numbers only). ``device``: where it trains (``train()``
    chooses it and, under torchrun, has joined the process group: it gives this rank's device).
    The model is built here, from the config and with the run's seed, without touching the
    caller's random numbers. What resuming needs is saved and restored by ``aelab.checkpoint``.
    ``record``: what config.json records beside the config (``aelab.run.RECORD_KEYS``).
    """

    CHECK_EVERY = 25  # steps between loss checks: each is a host sync (costly on a GPU); a bad step is still found

    def __init__(self, config: RunConfig, run_dir: Path, splits: dict[str, ImageSet],
                 callbacks: Iterable[Callback] = (), *, device: torch.device, fingerprint: str | None = None,
                 record: dict[str, Any] | None = None):
        self.config, self.run_dir, self.device = config, Path(run_dir), device
        # what config.json records beside the config (aelab.run.RECORD_KEYS): the settings given, schedule changes
        self.record = dict(record or {})
        self.callbacks = CallbackList(callbacks)
        cfg = config.train
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
            torch.manual_seed(cfg.seed)  # as the tutorial: the seed is set before the model is built
            model = build_model(config.model, cfg.loss)
        # channels-last runs the small convolutions on oneDNN's faster kernels (benchmarks/RESULTS.md)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        # (training images binarised or changed anew every epoch: drawn outside a CUDA graph)
        redrawn = config.data.binarize == "dynamic" or bool(config.data.augment_list())
        self.optimizer = make_optimizer(self.model, cfg, self.device, redrawn)
        rank, world_size, _ = distributed.world()
        # under torchrun each rank reads and trains its slice of every batch
        if self.model.conditional:
            self.model.check_labels(splits["train"].labels)
        self.batches = Batches(splits["train"].images, cfg.batch_size, self.device, part=(rank, world_size),
                               labels=splits["train"].labels if self.model.conditional else None)
        self.train_step = TrainStep(self.model, self.optimizer, self.batches, cfg,
                                    resolve_shards(cfg.shards, self.device, cfg.batch_size), redrawn,
                                    config.data.augment_list())
        self.schedule = Schedule.planned(cfg.schedule, cfg.epochs * len(self.batches))
        self.scheduler = make_scheduler(self.optimizer, self.schedule)
        self.fingerprint = fingerprint or ckpt.data_fingerprint(splits)  # (train() computes it once, before)
        self.distributed = distributed.active()
        # the validation and test losses (under torchrun: each rank measures its share)
        self.evaluated = SplitMeans({name: splits[name] for name in ("val", "test") if name in splits},
                                    self.device, cfg.seed)
        # (rank 0: PCA's baseline of the same code size, fitted on the training images, on the split evaluated last)
        self.baseline = splits["train"] if rank == 0 else None
        self.baseline_split = splits.get("test", splits.get("val"))
        if rank != 0:  # only rank 0's callbacks (figures, report) use the whole validation and test splits
            splits = {"train": splits["train"]}
        self.splits = splits
        # the position (the next step to run) and what the epochs so far left
        self.epoch, self.step = 0, 0
        self.metrics: list[dict[str, float]] = []
        self.best_val, self.best_epoch, self.best_weights = math.inf, 0, None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_count, self.running_loss = 0, math.nan
        self.noise: torch.Generator | None = None  # a denoising run's input noise
        self.draws: torch.Generator | None = None  # the model's own draws (model.draw_shape)
        self.pixels: torch.Generator | None = None  # dynamic binarisation's draws of the training images
        self.changes: torch.Generator | None = None  # the augmentation's draws of the training images
        self.elapsed = 0.0

    # the loop --------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``train.epochs``, evaluate on the test split, and return the result.

        The callbacks' ``on_close`` runs last, whatever happened; when training stopped with an
        error (a signal, a numerical fault), an error in ``on_close`` is logged and the first one
        is raised, so that it never hides why training stopped."""
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
                    if self.patience_spent():
                        break
            result = self.finish()
            self.callbacks.on_train_end(self, result)
        except BaseException:
            try:
                self.callbacks.on_close(self)
            except Exception as error:  # (the error that stopped training is the one to raise)
                log.warning("a callback failed while closing after training stopped: %s: %s",
                            type(error).__name__, error)
            raise
        self.callbacks.on_close(self)
        return result

    def train_epoch(self, stop: StopFlag) -> None:
        cfg = self.config.train
        if self.step == 0:
            self.noise, self.draws = self.noise_for(self.epoch), self.draws_for(self.epoch)
            self.pixels, self.changes = self.pixels_for(self.epoch), self.changes_for(self.epoch)
            self.loss_sum.zero_()
            self.loss_count = 0
        pending: list[torch.Tensor] = []
        for index in self.batches.indices(cfg.seed, self.epoch, cfg.shuffle, start=self.step):
            loss = self.train_step(index, self.noise, self.draws, self.epoch + self.step / len(self.batches),
                                   self.pixels, self.changes)
            self.scheduler.step()
            pending.append(loss)
            self.loss_sum += loss.double() * len(index)
            self.loss_count += len(index)
            self.step += 1
            checking = len(pending) >= self.CHECK_EVERY or self.step == len(self.batches)
            if self.distributed:  # (asked of every rank at the same steps: each ask is a collective and a host sync)
                stopping = checking and distributed.any_rank(stop.signum is not None)
            else:
                stopping = stop.signum is not None
            if checking or stopping:
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
        objective = self.model.objective
        parts = tuple(term for term in self.model.summary_terms if term != objective)  # (a VAE's recon and kl)
        with self.train_step.all_threads():
            found = self.evaluated.means(self.model, "val", (objective, *parts), noise_factor=cfg.noise_factor)
        val_loss = found[objective]
        row = {"epoch": self.epoch + 1, "train_loss": float(self.loss_sum) / max(1, self.loss_count),
               "val_loss": val_loss, "lr": self.optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - started, 3), **{f"val_{term}": found[term] for term in parts}}
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
        """The kept weights (``train.keep``: best or last) in the model, and their evaluation: on the
        test split, and the validation split's MSE (without a test split: the validation split's
        numbers only, named so)."""
        cfg = self.config.train
        if cfg.keep == "best" and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        self.model.eval()
        val_mse = self.loss("val", "mse")
        evaluation: dict[str, Any] = {}
        if "test" in self.evaluated:
            test_mse = self.loss("test", "mse")
            evaluation.update(test_mse=test_mse, test_psnr=psnr_from_mse(test_mse))
        else:
            evaluation.update(val_psnr=psnr_from_mse(val_mse))
        evaluation.update(val_mse=val_mse, kept=cfg.keep, best_epoch=self.best_epoch,
                          train_seconds=round(self.elapsed, 3))
        if self.epoch < cfg.epochs:  # (train.patience ran out)
            evaluation["stopped_early"] = self.epoch
        split = "test" if "test" in self.evaluated else "val"
        if self.baseline is not None:  # PCA with as many components as the code: the honest baseline
            evaluation[f"{split}_pca_mse"] = pca_mse(self.baseline.images, self.baseline_split.images,
                                                     self.config.model.latent_dim, self.config.train.seed)
            evaluation["pca_components"] = pca_sample(len(self.baseline), self.config.model.latent_dim,
                                                               math.prod(self.baseline.image_shape))[1]
        if cfg.noise_factor > 0:
            evaluation[f"{split}_denoising_mse"] = self.loss(split, "mse", noise_factor=cfg.noise_factor)
        if self.model.summary_terms:  # (a variational model: its ELBO and parts, nats per image, in one pass)
            found = self.evaluated.means(self.model, split, self.model.summary_terms)
            evaluation.update({f"{split}_{term}": value for term, value in found.items()})
        return TrainResult(self.run_dir, self.config, self.model, self.metrics, evaluation)

    def loss(self, split: str, term: str, noise_factor: float = 0.0) -> float:
        """The mean of the model's per-image ``term`` on the ``val`` or ``test`` split (``SplitMeans``)."""
        return self.evaluated.mean(self.model, split, term, noise_factor)

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
        how = "with Ctrl-C (SIGINT)" if signum == signal.SIGINT else f"by {signal.Signals(signum).name}"
        return TrainingInterrupted(f"stopped {how} {where}; the checkpoint is saved in {self.run_dir}", signum,
                                   self.run_dir)

    def noise_for(self, epoch: int) -> torch.Generator | None:
        """The generator of a denoising run's input noise in ``epoch`` (None without noise)."""
        if self.config.train.noise_factor <= 0:
            return None
        return noise_generator(self.config.train.seed * 1_000_003 + epoch + 7, self.device)

    def changes_for(self, epoch: int) -> torch.Generator | None:
        """The generator of the training images' augmentation in ``epoch`` (``data.augment``; else None)."""
        if not self.config.data.augment_list():
            return None
        return noise_generator(self.config.train.seed * 1_000_003 + CHANGES_STREAM + epoch, self.device)

    def patience_spent(self) -> bool:
        """Whether ``train.patience`` epochs have passed without a better validation loss (the best
        weights are kept, as ever)."""
        patience = self.config.train.patience
        return bool(patience) and self.epoch - self.best_epoch >= patience and self.epoch < self.config.train.epochs

    def pixels_for(self, epoch: int) -> torch.Generator | None:
        """The generator of the training images' binary pixels in ``epoch`` (dynamic binarisation; else None)."""
        if self.config.data.binarize != "dynamic":
            return None
        return noise_generator(self.config.train.seed * 1_000_003 + PIXELS_STREAM + epoch, self.device)

    def draws_for(self, epoch: int) -> torch.Generator | None:
        """The generator of the model's own draws in ``epoch`` (None for a model that draws nothing)."""
        if self.model.draw_shape is None:
            return None
        return noise_generator(self.config.train.seed * 1_000_003 + DRAWS_STREAM + epoch, self.device)


def train(config: RunConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, report: bool = True, data: dict[str, ImageSet] | None = None,
          explicit: set[str] | None = None, callbacks: Iterable[Callback] = (), progress: bool = True) -> TrainResult:
    """Train a run and write its folder ``out`` (default: ``RunConfig.default_run_dir``, such as
    runs/mnist-d4 or runs/mnist-vae-bce-dynamic-d4); return the model, metrics and test evaluation.

    The run folder is written by the callbacks ``RunFolder``, ``Figures`` and (with ``report``)
    ``Report``; ``callbacks`` are added after them (progress, console lines, trackers, your own).
    ``progress``: a progress bar (``tqdm.auto``: in a terminal, or a widget in a notebook) for the
    training, with the time so far and the time left, and one for the report's stages; nothing else
    is printed (``progress=False``: nothing at all; a ``ProgressBar`` among ``callbacks`` is the one used).
    ``data`` (``{"train", "val", "test"}`` ImageSets; "test" may be left out with ``report=False``)
    replaces the dataset named in the config, for tests and notebooks. With ``resume=True`` the run
    in ``out`` continues from its last checkpoint with its own settings; a ``config`` given then may
    differ from them only in ``train.epochs`` (to extend a run) and in where the data are and how
    they are read (``run.RESUMABLE``); any other difference is refused, naming the settings.
    ``explicit`` (the command line's) names the settings the user gave; only those are compared.
    One process at a time trains a run folder: a second is refused with an AelabError.

    Under torchrun every process joins the process group; rank 0 alone reads and writes the run
    folder and sends the others the configuration and checkpoint to resume from.
    """
    run_dir = Path(out if out is not None else (config or RunConfig()).default_run_dir())
    rank = distributed.world()[0]
    device = None
    if distributed.active():  # the process group first: rank 0 sends the others what it reads of the run folder
        device = distributed.setup(resolve_device((config or RunConfig()).train.device))
    lock, owned = None, None
    try:
        plan = None
        if rank == 0:  # rank 0 alone holds the run folder: it decides, the others follow
            try:
                lock, plan = _plan(run_dir, config, resume, overwrite, explicit)
            except AelabError as error:
                distributed.from_rank_0(("error", str(error)))
                raise
        plan = distributed.from_rank_0(plan or ("plan", None, None, None))
        if plan[0] == "error":  # (rank 0 raised it and says it)
            raise AelabError(plan[1])
        config, checkpoint, record = RunConfig.from_dict(plan[1]).validate(), plan[2], plan[3]
        error = None
        try:  # (each rank reads the data itself: one that cannot stops them all, with its message)
            if data is None and checkpoint is None and config.data.kind() == "folder":
                _check_before_reading(config, explicit, device)  # (before any picture is decoded)
            splits = data if data is not None else load_splits(config.data, training=True)
            owned = splits if data is None else None  # (sets given in `data` stay open: the caller's)
            if "test" not in splits and report:
                raise AelabError("`data` has no test split; give one, or train with `report` False")
            requested, config = config, _fitted_to(config, splits, explicit, resumed=checkpoint is not None)
            few = few_test_images(splits["test"], config.data) if "test" in splits and rank == 0 else None
            if few:
                log.warning(few)
            channels = splits["train"].image_shape[0]
            _check_memory(config, splits, None if checkpoint is not None else
                          lambda height, width: _planned_at(requested, channels, len(splits["train"]), explicit, height,
                                                            width), device)
        except AelabError as raised:
            error = raised
        distributed.raise_together(error)  # (before the Trainer: building its DDP step is a collective)
        fingerprint = ckpt.data_fingerprint(splits)
        _same_data_on_every_rank(fingerprint)
        defaults = [RunFolder(), Figures()] + ([Report(progress)] if report else []) if rank == 0 else []
        callbacks = list(callbacks)
        if progress and rank == 0 and not any(isinstance(callback, ProgressBar) for callback in callbacks):
            callbacks.insert(0, ProgressBar())
        trainer = Trainer(config, run_dir, splits, [*defaults, *(callbacks if rank == 0 else ())],
                          device=device or resolve_device(config.train.device), fingerprint=fingerprint, record=record)
        del splits  # (the trainer keeps what this process needs: under torchrun, a share of val and test on rank > 0)
        if checkpoint is not None:
            ckpt.restore(trainer, checkpoint)
        elif rank == 0:  # a new run: the one it replaces (`overwrite`) goes only now, once the data are read
            remove_run_files(run_dir)
        result = trainer.fit()
        if distributed.active():
            distributed.teardown()  # (only after a clean end: with a rank gone it could wait for ever)
        return result
    finally:
        close_sets(owned)
        if lock is not None:
            lock.release()


def _plan(run_dir: Path, config: RunConfig | None, resume: bool, overwrite: bool,
          explicit: set[str] | None) -> tuple[Any, tuple[str, dict, ckpt.Checkpoint | None, dict]]:
    """What rank 0 decides from the run folder: its lock, and ("plan", the config as a dict, the
    checkpoint to resume from or None, what config.json records beside the config)."""
    if not resume and distributed.restarts() and ckpt.has_checkpoint(run_dir):
        # torchrun restarted the processes (--max-restarts) after one failed: go on from the checkpoint,
        # whatever the command said (an --overwrite would otherwise erase what the first try trained)
        resume = True
    if not resume:
        config = (config or RunConfig()).validate()
        lock = lock_new_run(run_dir, overwrite, config)
        return lock, ("plan", config.to_dict(), None, {"given": given_settings(config, explicit)})
    lock = lock_existing_run(run_dir)
    try:
        record = read_record(run_dir)
        if config is not None and "given" in record:  # (what a resume may change, given now, is the user's too;
            changed = set(given_settings(config, explicit)) & set(RESUMABLE)  # a run saved before records none)
            record["given"] = sorted(set(record["given"]) | changed)
        config = resumed_config(run_dir, config, explicit).validate()
        checkpoint = ckpt.read_checkpoint(run_dir)
        trained = int(checkpoint.state["epoch"])
        if config.train.epochs < trained:
            raise AelabError(f"`train.epochs` {config.train.epochs} is less than the {trained} epochs already trained; "
                             f"give {trained} or more")
    except BaseException:
        lock.release()
        raise
    return lock, ("plan", config.to_dict(), checkpoint, record)


def _check_memory(config: RunConfig, splits: dict[str, ImageSet], replan, device: torch.device | None = None) -> None:
    """Say the run's estimated peak memory, and refuse a run that would not fit, naming what to change
    (``footprint.check``; ``replan(height, width)``: the config at another image size; None for a
    resumed run, which is only told: it trained before; ``device``: where it trains, default the
    config's)."""
    held = sum(part.images.nbytes for part in splits.values() if not part.on_disk)  # (the splits: views or copies)
    device = str(device or resolve_device(config.train.device))
    found = footprint.estimate(config, len(splits["train"]), len(splits.get("test", splits["val"])), images=held,
                               device=device)
    allowed, what = footprint.limit(distributed.local_size())
    free = footprint.gpu_free(device)
    log.info(found.line(allowed, what, free))
    if replan is not None:
        footprint.check(found, allowed, what, config, replan, free)


def _planned_at(requested: RunConfig, channels: int, n_train: int, explicit: set[str] | None, height: int,
                width: int) -> RunConfig:
    """The config that ``n_train`` images of ``channels`` x ``height`` x ``width`` would choose for
    ``requested`` (``defaults.from_data``)."""
    sized = replace(requested, model=replace(requested.model, in_channels=channels, image_size=height,
                                             image_width=None if width == height else width))
    return from_data(sized, (channels, height, width), n_train, explicit)[0]


def _check_before_reading(requested: RunConfig, explicit: set[str] | None, device: torch.device | None) -> None:
    """A folder's run refused before any picture is decoded when it would not fit (``footprint``): its
    memory estimated from the pictures' headers (their count, colour and size) and the splits they
    will make; once the images are read, ``_check_memory`` measures again and says it."""
    from .data.folders import survey
    from .data.sources import resolve_data_dir

    data = requested.data
    found = survey(data.dataset, resolve_data_dir(data.data_dir), data.channels, data.size(), data.resize)
    n_train, n_test = split_sizes(len(found.good), data, found.split_counts())
    channels, (height, width) = found.channels, found.size
    n_train = max(1, n_train)
    planned = _planned_at(requested, channels, n_train, explicit, height, width)
    images = len(found.good) * channels * height * width
    held = images if images <= memory_budget(data.memory_limit) // distributed.local_size() else 0
    device = str(device or resolve_device(requested.train.device))
    estimate = footprint.estimate(planned, n_train, max(1, n_test), images=held, device=device)
    estimate = replace(estimate, now=estimate.now + held)  # (the images are not read yet)
    allowed, what = footprint.limit(distributed.local_size())
    footprint.check(estimate, allowed, what, planned,
                    lambda h, w: _planned_at(requested, channels, n_train, explicit, h, w), footprint.gpu_free(device))


def _same_data_on_every_rank(fingerprint: str) -> None:
    """Under torchrun: every rank must train on the same images (each reads them itself); checked
    before the model is built for them (a model of another size on one rank fails in DDP's own check)."""
    if not distributed.active():
        return
    found = distributed.gathered(fingerprint)
    other = next((rank for rank, value in enumerate(found) if value != found[0]), None)
    if other is not None:
        raise AelabError(f"the processes under torchrun read different training images (rank {other}'s differ from "
                         "rank 0's: another dataset version or data folder on its machine); every process must read "
                         "the same data")


def _fitted_to(config: RunConfig, splits: dict[str, ImageSet], explicit: set[str] | None = None,
               resumed: bool = False) -> RunConfig:
    """The config with the model sized for the data (its classes too), the images' channels, size and
    fingerprint (so any tool prepares other images the same way), a file's or folder's absolute path,
    what the user left out chosen from the data (``defaults.from_data``: ``explicit`` names what was
    given; not for a ``resumed`` run, whose config recorded every choice: the rules may have changed
    since), a variational family's KL warm-up left to the run, and the number of shards that auto
    resolves to."""
    channels, height, width = splits["train"].image_shape
    train = splits["train"]
    conditional = family(config.model.kind).conditional  # (a conditional family is sized for the classes)
    labelled = len(train.class_names) > 1 and bool((train.labels >= 0).all())
    config = replace(config, model=replace(config.model, in_channels=channels, image_size=height,
                                           image_width=None if width == height else width,
                                           n_classes=len(train.class_names) if conditional and labelled else 0))
    source = splits["train"].source
    data = replace(config.data, channels=channels, image_size=f"{height}x{width}",
                   fingerprint=source.fingerprint if source is not None else None)
    if data.kind() != "named" and Path(data.dataset).expanduser().exists():  # a file or folder: where it is
        data = replace(data, dataset=str(Path(data.dataset).expanduser().resolve()))
    config = replace(config, data=data)
    if not resumed:
        config, said = from_data(config, (channels, height, width), len(train), explicit)
        if said:
            log.info(said)
    model = resolved_kl_warmup(config.model, config.train.epochs)
    if model.kl_warmup != config.model.kl_warmup:
        log.info(f"the KL term's weight rises from 0 over the first {model.kl_warmup:g} epochs (--kl-warmup 0: none)")
    config = replace(config, model=model)
    world_size = distributed.world()[1]
    if distributed.active():  # under torchrun the ranks are the shards: the run is the one --shards N computes
        if config.train.shards not in (0, world_size):
            raise AelabError(f"`train.shards` is {config.train.shards} but {world_size} processes train this run; under "
                             f"torchrun each process is one shard: give {world_size} (or leave it out), or run "
                             f"{config.train.shards} processes")
        config = replace(config, train=replace(config.train, shards=world_size))
    elif config.train.shards == 0:  # auto: the run records the number it uses
        shards = resolve_shards(0, resolve_device(config.train.device), config.train.batch_size)
        config = replace(config, train=replace(config.train, shards=shards))
    return config
