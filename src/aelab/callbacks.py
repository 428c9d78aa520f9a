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
        save_config(trainer.config, trainer.run_dir)
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
    denoising run) and figures/loss_curves.png at the end."""

    N_IMAGES = 5

    def on_epoch_end(self, trainer, row):
        from .figures import reconstruction_examples
        from .plots import reconstruction_figure

        shown = trainer.splits["test" if "test" in trainer.splits else "val"]
        clean, noisy, output = reconstruction_examples(trainer.model, shown.images[: self.N_IMAGES],
                                                       trainer.config.train.noise_factor, shown.labels[: self.N_IMAGES])
        path = trainer.run_dir / "figures" / "reconstructions" / f"epoch-{trainer.epoch:03d}.png"
        reconstruction_figure(clean, output, path, title=f"epoch {trainer.epoch}", noisy=noisy)

    def on_train_end(self, trainer, result):
        from .plots import loss_curves_figure

        loss_curves_figure(trainer.metrics, trainer.run_dir / "figures" / "loss_curves.png",
                           f"loss: {trainer.model.objective_label}")


class Report(Callback):
    """report.html at the end of training (``aelab.report.write_report``)."""

    def on_train_end(self, trainer, result):
        from .report import write_report

        result.report = write_report(trainer.run_dir, splits=trainer.splits, device=trainer.device)


# --- what a person sees ---------------------------------------------------------------------------

class ProgressBar(Callback):
    """A tqdm bar per epoch on stderr, with the running training loss."""

    def __init__(self, file=None):
        self.file, self.bar = file, None

    def on_epoch_start(self, trainer):
        from tqdm.auto import tqdm

        cfg = trainer.config.train
        self.bar = tqdm(total=len(trainer.batches), initial=trainer.step, desc=f"epoch {trainer.epoch + 1}/{cfg.epochs}",
                        leave=False, unit="batch", file=self.file or sys.stderr, mininterval=0.5)
        self.shown = trainer.running_loss

    def on_step_end(self, trainer):
        self.bar.update(1)
        if trainer.running_loss != self.shown and not math.isnan(trainer.running_loss):  # nan: none measured yet
            self.shown = trainer.running_loss
            self.bar.set_postfix_str(f"loss {trainer.running_loss:.5f}", refresh=False)

    def on_epoch_end(self, trainer, row):
        self.on_close(trainer)

    def on_close(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Console(Callback):
    """One line when training starts, one per epoch, and the results at the end (stdout)."""

    def __init__(self, file=None):
        self.file = file

    def _say(self, text: str) -> None:
        print(text, file=self.file or sys.stdout, flush=True)

    def on_train_start(self, trainer):
        splits, config = trainer.splits, trainer.config
        where = f"resuming at epoch {trainer.epoch + 1}" if trainer.epoch or trainer.step else "training"
        on = f"{trainer.device}"
        if distributed.active():
            size = distributed.world()[1]
            on += f" (under torchrun: {size} process{'es' if size > 1 else ''}, {distributed.backend_name()})"
        self._say(f"aelab: {where} on {on}: {len(splits['train'])} train / {len(splits['val'])} val images, "
                  f"latent size {config.model.latent_dim}, recipe {config.train.recipe}, run folder {trainer.run_dir}")

    def on_epoch_end(self, trainer, row):
        self._say(f"epoch {row['epoch']:3d}/{trainer.config.train.epochs}  train loss {row['train_loss']:.5f}  "
                  f"val loss {row['val_loss']:.5f}  {row['seconds']:.1f} s")

    def on_train_end(self, trainer, result):
        evaluation = result.evaluation
        split = "test" if "test_mse" in evaluation else "val"
        denoising = evaluation.get(f"{split}_denoising_mse")
        terms = [f"{term} {evaluation[f'{split}_{term}']:.2f}" for term in trainer.model.summary_terms
                 if f"{split}_{term}" in evaluation]
        pca = evaluation.get(f"{split}_pca_mse")
        self._say(f"{split} MSE {evaluation[f'{split}_mse']:.5f} (PSNR {evaluation[f'{split}_psnr']:.2f} dB)"
                  + (f" against {pca:.5f} for PCA with the same code size" if pca is not None else "")
                  + (f", denoising MSE {denoising:.5f}" if denoising is not None else "")
                  + (f"; {', '.join(terms)} (nats per image)" if terms else ""))
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

