"""Run folders: saving and loading. One loading function (``load_run``) serves every tool.

```
RUN/
  config.json            RunConfig + format and versions
  model.safetensors      the chosen weights (--keep best|last)
  metrics.csv            one row per epoch
  figures/               PNGs
  state/
    last.json            points at the newest complete checkpoint folder (renamed into place last)
    ckpt-NNNN-SSSSS/     weights.safetensors + trainer.pt (optimizer, scheduler, RNG, position)
    best.safetensors     the weights with the lowest validation loss so far
```

Weights are only ever read from safetensors. ``trainer.pt`` holds only tensors, numbers,
strings, lists and dicts and is read with ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .errors import AelabError
from .fsutil import atomic_write_bytes, atomic_write_text
from .model import ConvAutoencoder

FORMAT_VERSION = 1
METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "lr", "seconds")


def versions() -> dict[str, str]:
    from . import __version__

    return {"aelab": __version__, "torch": torch.__version__}


# --- weights ----------------------------------------------------------------------------------

def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors, written atomically (serialised in memory first: the model is small)."""
    from safetensors.torch import save

    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata or {}))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file; a clear AelabError for a missing or foreign file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise AelabError(f"{path} is missing; the run folder is incomplete (train again, or --resume it)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise AelabError(f"{path} is not a valid safetensors file ({error}); the weights are damaged "
                         "or the file is of another kind (aelab never reads pickled weights)") from None


def load_weights_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``tensors`` into ``model`` after checking names, shapes and finiteness."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AelabError(f"{source} does not match the model in config.json: "
                         f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}; "
                         "the weights and config.json come from different runs")
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise AelabError(f"{source}: {name} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(expected[name].shape)}; the weights and config.json come from different runs")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise AelabError(f"{source}: {name} holds NaN or infinite values; these weights are unusable "
                             "(train again, or use state/best.safetensors if it is finite)")
    model.load_state_dict(tensors)


# --- config -----------------------------------------------------------------------------------

def save_config(config: RunConfig, run_dir: Path) -> None:
    values = {"format_version": FORMAT_VERSION, "versions": versions(), **config.to_dict()}
    atomic_write_text(run_dir / "config.json", json.dumps(values, indent=2) + "\n")


def load_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.json"
    config = RunConfig.load(path)
    version = json.loads(path.read_text()).get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AelabError(f"{path}: run folder format {version!r} is not supported by this aelab "
                         f"(it reads format {FORMAT_VERSION} and older); upgrade aelab")
    return config


# --- metrics ----------------------------------------------------------------------------------

def write_metrics(rows: list[dict[str, float]], run_dir: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in METRIC_FIELDS})
    atomic_write_text(run_dir / "metrics.csv", buffer.getvalue())


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        try:
            return [{key: (int(row[key]) if key == "epoch" else float(row[key])) for key in METRIC_FIELDS}
                    for row in csv.DictReader(handle)]
        except (KeyError, TypeError, ValueError) as error:
            raise AelabError(f"{path} is damaged ({error}); delete it or train again") from None


# --- the training state (resume) --------------------------------------------------------------

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


def load_checkpoint(run_dir: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load the last complete checkpoint's weights into ``model``; return its trainer state."""
    pointer = run_dir / "state" / "last.json"
    if not pointer.is_file():
        raise AelabError(f"{run_dir} has no checkpoint to resume (state/last.json is missing); "
                         "start a new run instead of --resume")
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError):
        raise AelabError(f"{pointer} is damaged; the run cannot be resumed (start it again with --overwrite)") from None
    folder = run_dir / "state" / str(name)
    if Path(str(name)).name != str(name) or not folder.is_dir():
        raise AelabError(f"{pointer} points at a checkpoint that does not exist ({name}); start again with --overwrite")
    load_weights_into(model, read_weights(folder / "weights.safetensors"), folder / "weights.safetensors")
    return load_trusted_state(folder / "trainer.pt")


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


# --- loading a run for the tools --------------------------------------------------------------

@dataclass
class Run:
    """A trained run loaded from its folder: config, model (eval mode) and metrics."""

    path: Path
    config: RunConfig
    model: ConvAutoencoder
    metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def check_run_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.exists():
        raise AelabError(f"run folder {path} does not exist; give the folder that `aelab train --out` wrote")
    if not path.is_dir():
        raise AelabError(f"{path} is a file, not a run folder; give the folder that `aelab train --out` wrote")
    return path


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load a run folder: config.json + model.safetensors, checked, the model in eval mode."""
    path = check_run_dir(run_dir)
    config = load_config(path)
    model = ConvAutoencoder.from_config(config.model)
    load_weights_into(model, read_weights(path / "model.safetensors"), path / "model.safetensors")
    model.to(device, memory_format=torch.channels_last).eval()  # the layout training uses: identical outputs
    return Run(path, config, model, read_metrics(path))


def write_json(path: Path, values: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(values, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a run folder; {} when the file is missing."""
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise AelabError(f"{path} is damaged ({error}); delete it or train again") from None
    return values if isinstance(values, dict) else {}
