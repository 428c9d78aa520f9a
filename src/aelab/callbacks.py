"""What happens around training: the run folder, figures, the report, progress, console lines,
experiment trackers. The ``Trainer`` only emits events; each ``Callback`` acts on the ones it wants.

Events, in order: ``on_train_start``; per epoch ``on_epoch_start``, ``on_step_end`` after each
step, ``on_epoch_end`` with the epoch's metrics row; ``on_interrupt`` when a signal stops training
mid-epoch (a checkpoint is due); ``on_train_end`` with the result after the final evaluation; and
always, last, ``on_close`` (also after an error). Callbacks read the trainer; they do not change it.

``train()`` always runs ``RunFolder`` and ``Figures`` (and ``Report``) first; pass your own after them:
``train(config, out, callbacks=[ProgressBar(), Console(), TensorBoard()])``.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from . import distributed
from .errors import AelabError

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from .config import RunConfig
    from .data.batches import Batches
    from .data.sets import ImageSet


class TrainerView(Protocol):
    """What a callback reads of the training loop (``aelab.training.Trainer`` is one): its run,
    model and data, and where it is. Read it; do not change it."""

    config: "RunConfig"
    run_dir: "Path"
    model: "torch.nn.Module"
    device: "torch.device"
    splits: "dict[str, ImageSet]"
    batches: "Batches"
    epoch: int  # epochs done
    step: int  # optimizer steps done in the current epoch
    metrics: list[dict[str, float]]  # a row per epoch done
    best_val: float
    best_epoch: int
    running_loss: float  # the current epoch's mean training loss so far


class ResultView(Protocol):
    """What ``on_train_end`` gets (``aelab.training.TrainResult`` is one); ``report`` may be set."""

    run_dir: "Path"
    evaluation: dict[str, Any]
    report: "Path | None"


class Callback:
    """Override the events you need; every one gets the trainer (read its state, do not change it)."""

    def on_train_start(self, trainer: "TrainerView") -> None: ...

    def on_epoch_start(self, trainer: "TrainerView") -> None: ...

    def on_step_end(self, trainer: "TrainerView") -> None: ...

    def on_epoch_end(self, trainer: "TrainerView", row: dict[str, float]) -> None: ...

    def on_interrupt(self, trainer: "TrainerView") -> None: ...

    def on_train_end(self, trainer: "TrainerView", result: "ResultView") -> None: ...

    def on_close(self, trainer: "TrainerView") -> None: ...


EVENTS = ("on_train_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_interrupt", "on_train_end")


class CallbackList(Callback):
    """Calls each callback in order; ``on_close`` reaches every one even when another fails."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise AelabError(f"callbacks must be aelab.callbacks.Callback objects, got {type(callback).__name__}; "
                                 "subclass Callback and override its on_* methods")

    def on_close(self, trainer):
        first_error = None
        for callback in self.callbacks:
            try:
                callback.on_close(trainer)
            except Exception as error:  # the others still release what they hold
                first_error = first_error or error
        if first_error is not None:
            raise first_error


def _in_order(event: str):
    def call(self: CallbackList, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)

    call.__name__ = event
    return call


for _event in EVENTS:
    setattr(CallbackList, _event, _in_order(_event))


# --- the run folder -------------------------------------------------------------------------------

class RunFolder(Callback):
    """Removes a detector fitted on earlier weights (anomaly.json), writes config.json,
    data-skipped.csv (the files of a folder that are not usable images, with why), the checkpoint
    of every epoch (and of an interrupt), state/best.safetensors, model.safetensors (the weights
    ``train.keep`` chooses), metrics.csv and evaluation.json."""

    def on_train_start(self, trainer):
        from .run import save_config, write_skipped
        from .scores import remove_detector

        remove_detector(trainer.run_dir)  # (fitted on weights that training now replaces)
        save_config(trainer.config, trainer.run_dir, trainer.record)
        source = trainer.splits["train"].source
        if source is not None and source.skipped:
            write_skipped(source.skipped, trainer.run_dir)

    def on_epoch_end(self, trainer, row):
        from .fsutil import atomic_save
        from .run import save_weights, write_metrics

        best = trainer.run_dir / "state" / "best.safetensors"
        if trainer.best_epoch == trainer.epoch:
            save_weights(trainer.model, best, {"epoch": str(trainer.epoch), "val_loss": repr(trainer.best_val)})
        self._checkpoint(trainer)
        write_metrics(trainer.metrics, trainer.run_dir)
        chosen = trainer.run_dir / "model.safetensors"
        if trainer.config.train.keep == "best" and best.is_file():
            atomic_save(chosen, lambda tmp: shutil.copyfile(best, tmp))
        else:
            save_weights(trainer.model, chosen, {"epoch": str(trainer.epoch)})

    def on_interrupt(self, trainer):
        self._checkpoint(trainer)

    def on_train_end(self, trainer, result):
        from .run import write_json

        write_json(trainer.run_dir / "evaluation.json", result.evaluation)

    @staticmethod
    def _checkpoint(trainer) -> None:
        from .checkpoint import save_checkpoint, trainer_state

        save_checkpoint(trainer.run_dir, trainer.model, trainer_state(trainer),
                        f"ckpt-{trainer.epoch:04d}-{trainer.step:05d}")


class Figures(Callback):
    """figures/reconstructions/epoch-NNN.png after every epoch (the first test images, or validation
    images when there is no test split, above their reconstructions, with the noisy inputs of a
    denoising run; a run of more than ``figures.SLIDER_EPOCHS`` epochs: after that many evenly spaced
    ones, the last among them, the most the report's slider shows) and figures/loss_curves.png at the end."""

    def on_epoch_end(self, trainer, row):
        from .figures import EXAMPLES, SLIDER_EPOCHS, reconstruction_examples
        from .plots import reconstruction_figure

        epochs, most = trainer.config.train.epochs, SLIDER_EPOCHS
        if epochs > most and trainer.epoch not in {round(1 + i * (epochs - 1) / (most - 1)) for i in range(most)}:
            return  # (thousands of short epochs: a picture for every one would cost more than the epoch)

        shown = trainer.splits["test" if "test" in trainer.splits else "val"]
        clean, noisy, output = reconstruction_examples(trainer.model, shown.images[:EXAMPLES],
                                                       trainer.config.train.noise_factor, shown.labels[:EXAMPLES])
        path = trainer.run_dir / "figures" / "reconstructions" / f"epoch-{trainer.epoch:03d}.png"
        reconstruction_figure(clean, output, path, title=f"epoch {trainer.epoch}", noisy=noisy)

    def on_train_end(self, trainer, result):
        from .plots import loss_curves_figure

        loss_curves_figure(trainer.metrics, trainer.run_dir / "figures" / "loss_curves.png",
                           f"loss: {trainer.model.objective_label}")


class Report(Callback):
    """report.html at the end of training (``aelab.report.write_report``; ``progress``: with a bar over
    its stages)."""

    def __init__(self, progress: bool = False):
        self.progress = progress

    def on_train_end(self, trainer, result):
        from .report import write_report

        result.report = write_report(trainer.run_dir, splits=trainer.splits, device=trainer.device,
                                     progress=self.progress)


# --- what a person sees ---------------------------------------------------------------------------

class ProgressBar(Callback):
    """One tqdm bar over the whole training (``tqdm.auto``: a widget in a notebook, text in a
    terminal), on stderr: the epoch, the running training loss, the time so far and the time left.
    ``terminals_only``: no bar where the output is not a terminal (a file, a pipe: the command line's)."""

    def __init__(self, file=None, terminals_only: bool = False):
        self.file, self.bar, self.shown = file, None, math.nan
        self.terminals_only = terminals_only

    def on_train_start(self, trainer):
        from tqdm.auto import tqdm

        steps = len(trainer.batches)
        self.bar = tqdm(total=trainer.config.train.epochs * steps, initial=trainer.epoch * steps + trainer.step,
                        desc=self._epoch(trainer), unit="step", file=self.file or sys.stderr, mininterval=0.5,
                        dynamic_ncols=True, disable=None if self.terminals_only else False)

    @staticmethod
    def _epoch(trainer) -> str:
        return f"epoch {min(trainer.epoch + 1, trainer.config.train.epochs)}/{trainer.config.train.epochs}"

    def on_epoch_start(self, trainer):
        if self.bar is not None:
            self.bar.set_description_str(self._epoch(trainer), refresh=False)

    def on_step_end(self, trainer):
        if self.bar is None:
            return
        self.bar.update(1)
        if trainer.running_loss != self.shown and not math.isnan(trainer.running_loss):  # nan: none measured yet
            self.shown = trainer.running_loss
            self.bar.set_postfix_str(f"loss {trainer.running_loss:.5f}", refresh=False)

    def on_epoch_end(self, trainer, row):
        if trainer.epoch >= trainer.config.train.epochs:  # (done: not left showing while the report is written)
            self.on_close(trainer)

    def on_train_end(self, trainer, result):
        self.on_close(trainer)

    def on_close(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Console(Callback):
    """One line when training starts, an estimate of its length once the first steps are timed (for a
    run of more than a minute), one line per epoch with the time so far and the time left (for a run
    of over ``EVERY_EPOCH`` epochs, one every ``LINES_EVERY`` seconds), and the results at the end
    (stdout; written above a progress bar that is showing, not through it)."""

    ESTIMATE_AFTER = (5, 25)  # the steps of this session between which a step is timed for the estimate
    ESTIMATE_FROM = 60.0  # seconds: a run estimated to take longer says so
    EVERY_EPOCH = 100  # a run of more epochs than this gets an epoch's line every LINES_EVERY seconds (and the last)
    LINES_EVERY = 10.0

    def __init__(self, file=None):
        self.file = file
        self.steps, self.timed = 0, None  # this session's steps; when the first of the timed steps ended
        self.began, self.epochs_done = 0.0, 0  # when this session's training began; its epochs done
        self.said_at = 0.0  # when the last epoch's line was said

    def _say(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=self.file or sys.stdout)  # (above a bar that is showing, not through it)
        (self.file or sys.stdout).flush()

    def on_train_start(self, trainer):
        import time

        self.began = time.perf_counter()
        splits, config = trainer.splits, trainer.config
        done = trainer.epoch >= config.train.epochs
        where = ("evaluating" if done else f"resuming at epoch {trainer.epoch + 1}") if trainer.epoch or trainer.step \
            else "training"
        on = f"{trainer.device}"
        if distributed.active():
            size = distributed.world()[1]
            on += f" (under torchrun: {size} process{'es' if size > 1 else ''}, {distributed.backend_name()})"
        self._say(f"aelab: {where} on {on}: {len(splits['train'])} train / {len(splits['val'])} val images, "
                  f"latent size {config.model.latent_dim}, recipe {config.train.recipe}, run folder {trainer.run_dir}")
        if trainer.epoch >= config.train.epochs:
            self._say(f"aelab: the run has trained its {config.train.epochs} epochs already: nothing to train "
                      f"(--epochs N, more than {config.train.epochs}, extends it); evaluating it again")

    def on_step_end(self, trainer):
        import time

        self.steps += 1
        first, last = self.ESTIMATE_AFTER
        if self.steps == first:
            self.timed = time.perf_counter()
        elif self.steps == last and self.timed is not None:
            per_step = (time.perf_counter() - self.timed) / (last - first)
            steps = len(trainer.batches)
            left = (trainer.config.train.epochs * steps - trainer.epoch * steps - trainer.step) * per_step
            left *= 1 + self._validation_share(trainer)
            if left > self.ESTIMATE_FROM:
                from .progress import duration

                epochs = trainer.config.train.epochs - trainer.epoch
                self._say(f"aelab: about {duration(left)} of training left ({epochs} epochs of {steps} steps, "
                          f"{per_step * 1000:.0f} ms a step here)")

    @staticmethod
    def _validation_share(trainer) -> float:
        """The validation pass after each epoch, as a share of the epoch's steps: a forward pass (about a
        third of a training step's work) over the validation images."""
        return len(trainer.splits["val"]) / max(1, len(trainer.splits["train"])) / 3

    def on_epoch_end(self, trainer, row):
        import time

        from .progress import duration

        self.epochs_done += 1
        epochs = trainer.config.train.epochs
        now = time.perf_counter()
        if epochs > self.EVERY_EPOCH and 1 < row["epoch"] < epochs and now - self.said_at < self.LINES_EVERY:
            return  # (thousands of short epochs: a line every few seconds)
        self.said_at = now
        # the clock on the wall: an epoch's steps and validation, and what the run folder's files take after it
        so_far = now - self.began
        left = (epochs - row["epoch"]) * so_far / self.epochs_done
        timing = f"{row['seconds']:.1f} s  ({duration(so_far)} so far"
        timing += f", about {duration(left)} left)" if row["epoch"] < epochs else ")"
        self._say(f"epoch {row['epoch']:3d}/{trainer.config.train.epochs}  train loss {row['train_loss']:.5f}  "
                  f"val loss {row['val_loss']:.5f}  {timing}")

    def on_train_end(self, trainer, result):
        evaluation = result.evaluation
        split = "test" if "test_mse" in evaluation else "val"
        denoising = evaluation.get(f"{split}_denoising_mse")
        terms = [f"{term} {evaluation[f'{split}_{term}']:.2f}" for term in trainer.model.summary_terms
                 if f"{split}_{term}" in evaluation]
        pca = evaluation.get(f"{split}_pca_mse")
        self._say(f"{split} MSE {evaluation[f'{split}_mse']:.5f} (PSNR {evaluation[f'{split}_psnr']:.2f} dB)"
                  + (f", denoising MSE {denoising:.5f}" if denoising is not None else "")
                  + (f"; {', '.join(terms)} (nats per image)" if terms else ""))
        if pca is not None:
            from .evaluation import pca_verdict

            self._say(pca_verdict(evaluation[f"{split}_mse"], pca, trainer.config.model.latent_dim,
                                  evaluation.get("pca_components")).text)
        if result.report is not None:
            self._say(f"report: {result.report}")
        self._say(f"run folder: {result.run_dir}")


# --- experiment trackers --------------------------------------------------------------------------

def _metrics_of(row: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in row.items() if key != "epoch" and isinstance(value, (int, float))}


class TensorBoard(Callback):
    """Event files under RUN/tensorboard/: per epoch train_loss, val_loss, lr and seconds (step =
    epoch), and the final test metrics. Needs ``tensorboard`` (pip install 'aelab[tensorboard]');
    view with ``tensorboard --logdir RUN/tensorboard``."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 (needs the tensorboard package)
        except ImportError:
            raise AelabError("tracking with TensorBoard needs tensorboard: pip install 'aelab[tensorboard]'") from None
        self.writer = None

    def on_train_start(self, trainer):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(trainer.run_dir / "tensorboard"))

    def on_epoch_end(self, trainer, row):
        for key, value in _metrics_of(row).items():
            self.writer.add_scalar(key, value, global_step=row["epoch"])
        self.writer.flush()

    def on_train_end(self, trainer, result):
        for key, value in _metrics_of(result.evaluation).items():
            self.writer.add_scalar(f"final/{key}", value, global_step=trainer.epoch)
        self.writer.flush()

    def on_close(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflow(Callback):
    """An MLflow run: the configuration as params, per-epoch metrics (step = epoch), the final test
    metrics, and the run folder's files as artifacts (all but state/ and tensorboard/).

    The tracking server is ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's own default;
    the experiment ``experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else "aelab". RUN/mlflow.json
    remembers the MLflow run, so a resumed run logs into the same one. Needs ``mlflow``
    (pip install 'aelab[mlflow]').
    """

    ARTIFACTS_SKIPPED = ("state", "tensorboard", ".lock")

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None):
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise AelabError("tracking with MLflow needs mlflow: pip install 'aelab[mlflow]'") from None
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client, self.run_id, self.finished = None, None, False

    def on_train_start(self, trainer):
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        from .run import read_json, write_json

        uri = self.tracking_uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=uri)
        saved = read_json(trainer.run_dir / "mlflow.json")
        if saved.get("tracking_uri") == uri and saved.get("run_id"):
            self.run_id = saved["run_id"]  # resumed: log into the same MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "aelab"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=trainer.run_dir.name).info.run_id
        params = [Param(f"{section}.{key}", str(value)) for section, values in trainer.config.to_dict().items()
                  for key, value in values.items()]
        self.client.log_batch(self.run_id, params=params)
        write_json(trainer.run_dir / "mlflow.json", {"tracking_uri": uri, "run_id": self.run_id,
                                                     "experiment_id": experiment_id})

    def _log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def on_epoch_end(self, trainer, row):
        self._log(_metrics_of(row), row["epoch"])

    def on_train_end(self, trainer, result):
        self._log({f"final_{key}": value for key, value in _metrics_of(result.evaluation).items()}, trainer.epoch)
        for path in sorted(trainer.run_dir.iterdir()):
            if path.name in self.ARTIFACTS_SKIPPED:
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        self.finished = True

    def on_close(self, trainer):
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FINISHED" if self.finished else "KILLED")
            self.client = None


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow}


def trackers(names: Iterable[str]) -> list[Callback]:
    """The tracker callbacks named (``tensorboard``, ``mlflow``), each checked for its library."""
    out = []
    for name in names:
        if name not in TRACKERS:
            raise AelabError(f"unknown tracker {name!r}; choose {' or '.join(TRACKERS)}")
        out.append(TRACKERS[name]())
    return out

