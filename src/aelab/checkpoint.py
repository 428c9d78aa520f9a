"""The training state that resuming needs: what a ``Trainer`` saves (``trainer_state``) and how it
continues from it (``restore``), checkpoints on disk, and the data's fingerprint.

```
RUN/state/
  last.json            points at the newest complete checkpoint folder (replaced last)
  ckpt-EEEE-SSSSS/     weights.safetensors + trainer.pt (optimizer, schedule, noise and draws generators, position)
  best.safetensors     the weights with the lowest validation loss so far
```

``trainer.pt`` holds only tensors, numbers, strings, lists and dicts and is read with
``torch.load(weights_only=True)``: nothing is unpickled. Training draws every random number from
generators of its own (the data order, the noise), seeded by ``train.seed`` and saved here, so the
global RNGs are neither used, saved nor set (checkpoints of earlier versions keep an "rng" entry,
ignored).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import AelabError
from .fsutil import atomic_write_bytes, atomic_write_text
from .optim import Schedule, describe_change
from .run import FORMAT_VERSION, load_config, load_weights_into, read_weights, save_weights

log = logging.getLogger("aelab")


def save_checkpoint(run_dir: Path, model: torch.nn.Module, trainer_state: dict[str, Any], name: str) -> None:
    """Write a complete checkpoint folder, then point ``state/last.json`` at it, then prune.

    The pointer is replaced atomically only after both files are on disk, so a crash at any
    moment leaves the previous checkpoint complete and pointed at.
    """
    state_dir = run_dir / "state"
    folder = state_dir / name
    if folder.exists():
        shutil.rmtree(folder)
    save_weights(model, folder / "weights.safetensors")
    buffer = io.BytesIO()
    torch.save(trainer_state, buffer)  # in memory: a full disk then fails in our write, as an OSError
    atomic_write_bytes(folder / "trainer.pt", buffer.getvalue())
    atomic_write_text(state_dir / "last.json", json.dumps({"checkpoint": name}) + "\n")
    for old in state_dir.glob("ckpt-*"):
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class Checkpoint:
    """A checkpoint read from a run folder: the weights, the trainer's state (``trainer_state``),
    the best weights so far, and how many epochs the run had planned (for a state saved before
    schedules were saved with it)."""

    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    best: dict[str, torch.Tensor] | None
    planned_epochs: int
    source: Path


def read_checkpoint(run_dir: Path) -> Checkpoint:
    """The run folder's last complete checkpoint (read by rank 0 alone under torchrun)."""
    pointer = run_dir / "state" / "last.json"
    if not pointer.is_file():
        raise AelabError(f"{run_dir} has no checkpoint to resume (state/last.json is missing); "
                         "start a new run instead of `resume`")
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError):
        raise AelabError(f"{pointer} is damaged; the run cannot be resumed (start it again with `overwrite`)") from None
    folder = run_dir / "state" / str(name)
    if Path(str(name)).name != str(name) or not folder.is_dir():
        raise AelabError(f"{pointer} points at a checkpoint that does not exist ({name}); start again with `overwrite`")
    best = run_dir / "state" / "best.safetensors"
    return Checkpoint(read_weights(folder / "weights.safetensors"), load_trusted_state(folder / "trainer.pt"),
                      read_weights(best) if best.is_file() else None, load_config(run_dir).train.epochs,
                      folder / "weights.safetensors")


def load_trusted_state(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AelabError(f"{path} is missing; the checkpoint is incomplete") from None
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError ... here
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AelabError(f"{path} was refused: it is not a plain aelab training state ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise AelabError(f"{path} is not an aelab training state of format {FORMAT_VERSION}")
    return state


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "state" / "last.json").is_file()


def data_fingerprint(splits: dict) -> str:
    """A short hash of the training and validation images and labels (checked on resume)."""
    digest = hashlib.blake2b(digest_size=12)
    for name in ("train", "val"):
        splits[name].hash_into(digest)
    return digest.hexdigest()


# --- a trainer's state ----------------------------------------------------------------------------

def trainer_state(trainer: Any) -> dict[str, Any]:
    """What resuming a ``training.Trainer`` needs besides its weights (a checkpoint's trainer.pt):
    its position, optimizer, schedule, noise generator, running loss, metrics and best epoch."""
    return {
        "format_version": FORMAT_VERSION,
        "epoch": trainer.epoch, "step": trainer.step,
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "noise_rng": trainer.noise.get_state() if trainer.noise is not None else None,
        "draws_rng": trainer.draws.get_state() if trainer.draws is not None else None,
        "pixels_rng": trainer.pixels.get_state() if trainer.pixels is not None else None,
        "changes_rng": trainer.changes.get_state() if trainer.changes is not None else None,
        "loss_sum": trainer.loss_sum.cpu(), "loss_count": trainer.loss_count,
        "metrics": trainer.metrics, "best_val": trainer.best_val, "best_epoch": trainer.best_epoch,
        "data_fingerprint": trainer.fingerprint, "elapsed": trainer.elapsed,
        "schedule": trainer.schedule.state(),
    }


def restore(trainer: Any, saved: Checkpoint) -> None:
    """Continue ``trainer`` (a ``training.Trainer``) from a checkpoint (``read_checkpoint``; under
    torchrun, rank 0's), after checking that it trains on the same data.

    The learning-rate schedule planned so far is kept; epochs added beyond it (or taken away)
    change only what comes after the current step (``optim.Schedule.resized``)."""
    load_weights_into(trainer.model, saved.weights, saved.source)
    state = saved.state
    if state.get("data_fingerprint") != trainer.fingerprint:
        raise AelabError(f"resume {trainer.run_dir}: the training data differ from the data this run was trained on "
                         "(another dataset version or data folder); resume with the same data")
    optimizer = trainer.optimizer
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # the run may have been saved on another device: keep this one's
        group["fused"], group["capturable"] = optimizer.defaults["fused"], optimizer.defaults["capturable"]
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
    trainer.loss_sum = state["loss_sum"].to(trainer.device)
    trainer.loss_count = int(state["loss_count"])
    trainer.metrics = list(state["metrics"])
    trainer.best_val, trainer.best_epoch = float(state["best_val"]), int(state["best_epoch"])
    trainer.elapsed = float(state["elapsed"])
    if saved.best is not None:
        trainer.best_weights = {name: value.to(trainer.device) for name, value in saved.best.items()}
    steps = len(trainer.batches)
    train = trainer.config.train
    # (a state saved before the schedule was: the one-cycle the run had planned)
    planned = Schedule.from_state(state["schedule"]) if "schedule" in state else Schedule.planned(
        train.schedule, saved.planned_epochs * steps)
    at = trainer.epoch * steps + trainer.step
    resized = planned.resized(at, train.epochs * steps)
    trainer.schedule.pieces, trainer.schedule.total = resized.pieces, resized.total  # (the scheduler holds it)
    if resized.total != planned.total:  # said, and recorded in config.json (aelab info and the report show it)
        said = describe_change(planned, resized, at, steps, train.lr)
        log.info(said)
        trainer.record.setdefault("schedule_changes", []).append(
            {"epoch": round(at / steps, 3), "epochs_before": planned.total // steps, "epochs": train.epochs,
             "highest_rate": train.lr * resized.highest(), "said": said})
    if trainer.step > 0 and state["noise_rng"] is not None:
        trainer.noise = trainer.noise_for(trainer.epoch)
        trainer.noise.set_state(state["noise_rng"])
    for name in ("draws", "pixels", "changes"):  # (a state saved before draws or augmentation existed has none)
        if trainer.step > 0 and state.get(f"{name}_rng") is not None:
            generator = getattr(trainer, f"{name}_for")(trainer.epoch)
            generator.set_state(state[f"{name}_rng"])
            setattr(trainer, name, generator)
