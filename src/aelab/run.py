"""The run folder: its rules, its files, its lock, and ``load_run``, which every tool uses.

```
RUN/
  config.json            RunConfig + format and versions
  model.safetensors      the chosen weights (train.keep: best | last)
  metrics.csv            one row per epoch
  evaluation.json        test and validation MSE after training
  figures/               PNGs
  state/                 what resuming needs (aelab.checkpoint)
  report.html            the page that shows the run
  .lock                  held by the process that trains the run (an OS lock: gone when it dies)
```

Weights are only ever read from safetensors: nothing a user hands in is unpickled.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, default_setting, source_place
from .errors import AelabError
from .fsutil import ProcessLock, atomic_write_bytes, atomic_write_text
from .models.registry import build_model

FORMAT_VERSION = 1
METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "lr", "seconds")
# what a run folder holds (besides files a user puts there): replaced together by overwrite=True
OUTPUTS = "outputs"  # what the tools make from a run (maps, pictures, tables, scores, exports), unless told where
RUN_FILES = ("config.json", "model.safetensors", "metrics.csv", "state", "figures", "report.html", "evaluation.json",
             "tensorboard", "mlflow.json", "data-skipped.csv", "anomaly.json", "anomaly.safetensors", OUTPUTS)


def versions() -> dict[str, str]:
    from . import __version__

    return {"aelab": __version__, "torch": torch.__version__}


# --- weights ----------------------------------------------------------------------------------

def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors, written atomically (serialised in memory first: the model is small)."""
    from safetensors.torch import save

    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata or {}))


def weights_digest(model: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """A short hash of a model's weights and buffers (names, dtypes, shapes, values; or of the same
    tensors as ``read_weights`` gives them): what a detector fitted on them records, so that it is
    never used with other weights."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    tensors = model.state_dict() if isinstance(model, torch.nn.Module) else model
    for name, value in sorted(tensors.items()):
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file; a clear AelabError for a missing or foreign file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise AelabError(f"{path} is missing; the run folder is incomplete (train again, or `resume` it)")
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

# what config.json records beside the config: the settings the user gave (the rest aelab filled in or chose), and
# each resume that changed the run's length (when, from how many epochs to how many, the highest rate left)
RECORD_KEYS = ("given", "schedule_changes")


def save_config(config: RunConfig, run_dir: Path, record: dict[str, Any] | None = None) -> None:
    """config.json: the config, the format and versions, and ``record`` (``RECORD_KEYS``)."""
    extra = {key: (record or {})[key] for key in RECORD_KEYS if key in (record or {})}
    values = {"format_version": FORMAT_VERSION, "versions": versions(), **config.to_dict(), **extra}
    atomic_write_text(run_dir / "config.json", json.dumps(values, indent=2) + "\n")


def read_record(run_dir: Path) -> dict[str, Any]:
    """What config.json records beside the config (``RECORD_KEYS``; a run saved before has none)."""
    values = read_json(Path(run_dir) / "config.json")
    return {key: values[key] for key in RECORD_KEYS if isinstance(values.get(key), list)}


def given_settings(requested: RunConfig, explicit: set[str] | None) -> list[str]:
    """The settings the user gave ("train.epochs"): ``explicit`` (the command line's options), or
    without it those where ``requested`` differs from the defaults (the Python API)."""
    return sorted(explicit if explicit is not None else config_differences(requested, RunConfig()))


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
    """metrics.csv: ``METRIC_FIELDS``, then the columns a family adds (a VAE's ``val_recon``, ``val_kl``)."""
    fields = list(METRIC_FIELDS) + [key for key in (rows[0] if rows else {}) if key not in METRIC_FIELDS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in fields})
    atomic_write_text(run_dir / "metrics.csv", buffer.getvalue())


def write_skipped(skipped: list[tuple[str, str]], run_dir: Path, name: str = "data-skipped.csv") -> Path:
    """RUN/data-skipped.csv (or ``run_dir/name``): files that are not usable images (path, reason)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(skipped)
    path = Path(run_dir) / name
    atomic_write_text(path, buffer.getvalue())
    return path


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        try:
            rows = list(csv.DictReader(handle))
            return [{key: int(row[key]) if key == "epoch" else float(row[key])
                     for key in (*METRIC_FIELDS, *(key for key in row if key not in METRIC_FIELDS))} for row in rows]
        except (KeyError, TypeError, ValueError) as error:
            raise AelabError(f"{path} is damaged ({error}); delete it or train again") from None


# --- loading a run for the tools --------------------------------------------------------------

@dataclass
class Run:
    """A trained run loaded from its folder: config, model (eval mode) and metrics."""

    path: Path
    config: RunConfig
    model: torch.nn.Module  # of the run's family (aelab.models.registry)
    metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def output_path(run_dir: str | Path, name: str, out: str | Path | None = None) -> Path:
    """Where a tool writes what it made (a file or a folder): ``out`` when given, else the run
    folder's ``outputs/NAME`` (``OUTPUTS``). Training and the report own every other file of a run
    folder, so ``out`` may not be one of those (``check_not_a_run_file``); a tool run again replaces
    its own earlier output of the same name."""
    if out is None:
        return Path(run_dir) / OUTPUTS / name
    check_not_a_run_file(Path(out))
    return Path(out)


def check_not_a_run_file(path: Path) -> None:
    """Refuse ``path`` when it is (or lies inside) a file that training or the report wrote in a
    run folder: config.json, model.safetensors, figures/, report.html, ... (``RUN_FILES``)."""
    path = path.expanduser().resolve()
    for folder in path.parents:
        if (folder / "config.json").is_file() and (folder / "metrics.csv").is_file():  # a run folder
            first = path.relative_to(folder).parts[0]
            if first in RUN_FILES and first != OUTPUTS:
                raise AelabError(f"{path} is one of the run's own files (training and the report write {first}); "
                                 f"choose another `out`, or leave it out to write into {folder / OUTPUTS}")
            return


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
    model = build_model(config.model, config.train.loss)
    load_weights_into(model, read_weights(path / "model.safetensors"), path / "model.safetensors")
    model.to(device, memory_format=torch.channels_last).eval()  # the layout training uses: identical outputs
    return Run(path, config, model, read_metrics(path))


def summary(run_dir: str | Path) -> dict[str, Any]:
    """What a user asks of a run folder first (``aelab info``): its data, model and recipe, how far
    it has trained, its best epoch and test metrics, its anomaly detector, and the versions that
    made it; read from the folder's files (the model is not built)."""
    path = check_run_dir(run_dir)
    config, versions = load_config(path), read_json(path / "config.json").get("versions", {})
    metrics = read_metrics(path)
    evaluation = read_json(path / "evaluation.json")
    detector = read_json(path / "anomaly.json")
    done, planned = len(metrics), config.train.epochs
    if evaluation and done >= planned:
        status = "finished"
    elif evaluation.get("stopped_early"):
        status = f"finished early after {done} of {planned} epochs (the validation loss stopped improving)"
    elif (path / "state" / "last.json").is_file():
        status = f"stopped after {done} of {planned} epochs (continue it: aelab train --resume {path})"
    else:
        status = "not trained yet"
    found: dict[str, Any] = {
        "run": str(path), "status": status,
        "data": {"source": config.data.dataset, "channels": config.model.in_channels,
                 "image_size": f"{config.model.image_size}x{config.model.image_width or config.model.image_size}",
                 "classes": config.data.classes, "val_fraction": config.data.val_fraction},
        "model": {"latent_dim": config.model.latent_dim, "width": config.model.width, "hidden": config.model.hidden},
        "train": {key: getattr(config.train, key) for key in ("recipe", "epochs", "batch_size", "lr", "schedule",
                                                              "loss", "noise_factor", "seed", "keep", "shards")},
        "epochs_done": done, "best_epoch": evaluation.get("best_epoch"),
        "best_val_loss": min((row["val_loss"] for row in metrics), default=None),
        "evaluation": split_metrics(evaluation),
        "detector": None,
        "schedule_changes": read_record(path).get("schedule_changes", []),
        "versions": versions,
    }
    if detector:
        weights = path / "model.safetensors"
        found["detector"] = {key: detector.get(key) for key in ("method", "contamination", "threshold")}
        found["detector"]["fitted_on_these_weights"] = bool(
            weights.is_file() and detector.get("weights") == weights_digest(read_weights(weights)))
    return found


def summary_lines(found: dict) -> list[tuple[str, str]]:
    """``summary`` as (heading, text) lines (``aelab info``)."""
    data, model, recipe, evaluation = found["data"], found["model"], found["train"], found["evaluation"]
    lines = [("run", f"{found['run']}: {found['status']}"),
             ("data", f"{data['source']}, {data['channels']} x {data['image_size']}"
                      + (f", classes {data['classes']}" if data["classes"] else "")),
             ("model", f"latent size {model['latent_dim']}, width {model['width']}, hidden {model['hidden']}"),
             ("recipe", f"{recipe['recipe']}: {recipe['epochs']} epochs ({found['epochs_done']} done), batch "
                        f"{recipe['batch_size']}, lr {recipe['lr']:g} {recipe['schedule']}, loss {recipe['loss']}"
                        + (f", noise {recipe['noise_factor']:g}" if recipe["noise_factor"] else "")
                        + f", seed {recipe['seed']}, shards {recipe['shards']}")]
    for change in found.get("schedule_changes", []):  # (resumed with another length: the schedule as it ran)
        lines.append(("schedule", change.get("said") or f"the run had planned {change['epochs_before']} epochs and "
                                                        f"was resumed for {change['epochs']}"))
    if found["best_val_loss"] is not None:
        best = f"epoch {found['best_epoch']}, " if found["best_epoch"] else ""
        lines.append(("best", f"{best}validation loss {found['best_val_loss']:.5f} (model.safetensors holds the "
                              f"{recipe['keep']} epoch's weights)"))
    for split in ("test", "val"):
        if f"{split}_mse" in evaluation:
            psnr = evaluation.get(f"{split}_psnr")
            lines.append((split, f"MSE {evaluation[f'{split}_mse']:.5f}" + (f", PSNR {psnr:.2f} dB" if psnr else "")
                          + (f", denoising MSE {evaluation[f'{split}_denoising_mse']:.5f}"
                             if f"{split}_denoising_mse" in evaluation else "")
                          + (f"; PCA with as many components: MSE {evaluation[f'{split}_pca_mse']:.5f}"
                             if f"{split}_pca_mse" in evaluation else "")))
    detector = found["detector"]
    if detector:
        said = [f"{detector['method'] or 'unnamed'} score"]
        said += [f"{key} {detector[key]:{form}}" for key, form in (("contamination", "g"), ("threshold", ".3f"))
                 if isinstance(detector[key], (int, float))]  # (a detector file from elsewhere may lack them)
        said.append("fitted on these weights" if detector["fitted_on_these_weights"] else
                    "fitted on other weights (fitted anew when used)")
        lines.append(("detector", ", ".join(said)))
    else:
        lines.append(("detector", "none yet (`aelab score` fits one)"))
    lines.append(("versions", ", ".join(f"{name} {version}" for name, version in found["versions"].items())))
    return lines

def split_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """The per-split image metrics of an evaluation.json (``test_mse``, ``val_psnr``,
    ``test_denoising_mse``, a variational run's ``test_nelbo``, ...), without its other entries
    (best epoch, seconds)."""
    return {key: value for key, value in evaluation.items() if key.startswith(("test_", "val_"))}


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


# --- the rules: one process per run; new, resumed, replaced -------------------------------------

class RunLock:
    """An OS lock on ``RUN/.lock`` (a ``fsutil.ProcessLock``), held by the one process that trains,
    resumes or replaces a run.

    The operating system releases it when the process ends in any way, so a crash never leaves a
    stale lock. A second process is refused with the holder's process id; a folder where the lock
    file cannot be made (read-only) is refused with the fix. (Where the OS has no ``fcntl``, as on
    Windows, runs are not locked.)
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._lock: ProcessLock | None = None

    def acquire(self) -> "RunLock":
        lock = ProcessLock(self.path)
        try:
            taken = lock.open().try_acquire()
        except OSError as error:
            lock.release()
            raise AelabError(f"cannot lock the run folder {self.path.parent} ({error.strerror or error}): training "
                             "writes into it; make it writable, or copy the run to a folder you can write to (or "
                             "choose another `out` folder)") from None
        if not taken:
            holder = lock.holder() or "?"
            lock.release()
            raise AelabError(f"{self.path.parent} is in use: process {holder} is training it; wait for it to "
                             f"finish (or stop it), or choose another folder")
        self._lock = lock
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()  # closing the file releases the lock (the file stays: removing it would race)
            self._lock = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_new_run(run_dir: Path, overwrite: bool, config: RunConfig | None = None) -> RunLock:
    """Make the folder of a new run (with ``config``) and lock it.

    A folder that already holds a run is refused unless ``overwrite``, with what to do: continue it
    (offered only when the run there has the settings ``config`` asks for) or replace it, naming the
    settings that differ. The run there is removed only later (``remove_run_files``), once the new
    run's data are read, so that a mistake found before training starts loses nothing, and never
    under another process that trains it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise AelabError(f"{run_dir} is a file; give a folder for the run as `out`")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AelabError(f"cannot create the run folder {run_dir} ({error.strerror}); choose another `out` folder") from None
    lock = RunLock(run_dir).acquire()
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if present and not overwrite:
        lock.release()
        raise AelabError(f"{run_dir} already holds a run ({', '.join(present)}); {_what_to_do(run_dir, config)}")
    return lock


def _what_to_do(run_dir: Path, config: RunConfig | None) -> str:
    """What a new run in a folder that holds another can do: continue that run when it has the
    settings asked for, else replace it (naming the settings that differ), or go elsewhere."""
    elsewhere = "or choose another `out` folder"
    try:
        saved = load_config(run_dir)
    except AelabError:  # (a damaged or foreign config.json: nothing to continue)
        return f"replace it with `overwrite`, {elsewhere}"
    if config is None:
        return f"continue it with `resume`, replace it with `overwrite`, {elsewhere}"
    differ = config_differences(config, saved) - {"data.data_dir", "data.memory_limit", "train.device"}
    if source_place(config.data.dataset) == source_place(saved.data.dataset):  # (given relative, recorded absolute)
        differ.discard("data.dataset")
    differ = sorted(differ)
    if not differ:
        return f"continue it with `resume`, replace it with `overwrite`, {elsewhere}"
    said = ", ".join(f"`{name}` {_setting(saved, name)!r} (not {_setting(config, name)!r})" for name in differ[:4])
    more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
    if set(differ) <= set(RESUMABLE):  # (a resume takes these: more epochs, the data elsewhere)
        return (f"it was trained with {said}: continue it with `resume` and those, replace it with `overwrite`, "
                f"{elsewhere}")
    return f"it was trained with {said}{more}: replace it with `overwrite`, {elsewhere}"


def remove_run_files(run_dir: Path) -> None:
    """Remove what a run wrote in ``run_dir`` (``RUN_FILES``; other files stay), for the new run
    that replaces it; its lock must be held."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def lock_existing_run(run_dir: Path) -> RunLock:
    """Lock the folder of a run that is resumed."""
    return RunLock(check_run_dir(run_dir)).acquire()


# what a resumed run may change besides `train.epochs`: where the data are and how they are read (the data
# themselves are checked by their fingerprint) and where it trains; nothing else changes
RESUMABLE = ("train.epochs", "train.device", "train.keep", "data.data_dir", "data.dataset", "data.memory_limit")
# settings that training fills in from the data (or resolves from auto): a config that leaves them as they
# start (None, 0, the model's defaults) asks for nothing
FITTED = {"model.in_channels": 1, "model.image_size": 28, "model.image_width": None, "model.n_classes": 0,
          "model.arch": "auto", "model.stages": 0, "model.kl_warmup": None, "data.channels": None,
          "data.image_size": None, "data.fingerprint": None, "train.shards": 0}
# what aelab.defaults chooses from the data for the deep network (the settings' defaults): a config that
# leaves them so asks for nothing when the saved run has the deep network
FROM_DATA = {name: default_setting(name) for name in ("model.width", "model.hidden", "model.latent_dim",
                                                     "train.batch_size", "train.lr", "train.epochs", "data.augment")}


def _setting(config: RunConfig, name: str) -> Any:
    section, key = name.split(".")
    return getattr(getattr(config, section), key)


def config_differences(requested: RunConfig, saved: RunConfig) -> set[str]:
    """The settings (``"train.lr"``) where ``requested`` asks for something else than ``saved`` has;
    a setting that training fills in (``FITTED``), or chooses from the data for a saved deep network
    (``FROM_DATA``), counts only when ``requested`` sets it."""
    names = {f"{section}.{key}" for section, values in requested.to_dict().items() for key in values}
    left = {**FITTED, **(FROM_DATA if saved.model.arch == "deep" and requested.model.arch in ("auto", "deep") else {})}
    return {name for name in names if _setting(requested, name) != _setting(saved, name)
            and not (name in left and _setting(requested, name) == left[name])}


def resumed_config(run_dir: Path, requested: RunConfig | None, explicit: set[str] | None = None) -> RunConfig:
    """The run's own config, with what ``requested`` changes of it: the settings named in ``explicit``
    (the command line's options, ``"train.epochs"``), or without ``explicit`` every setting where
    ``requested`` differs from the run's. Only those in ``RESUMABLE`` may differ; any other is refused,
    each named."""
    saved = load_config(check_run_dir(run_dir))
    if requested is None:
        return saved
    changed = {name for name in (config_differences(requested, saved) if explicit is None else explicit)
               if _setting(requested, name) != _setting(saved, name)}
    refused = sorted(changed - set(RESUMABLE))
    if refused:
        said = "; ".join(f"`{name}` {_setting(saved, name)!r}, not {_setting(requested, name)!r}" for name in refused)
        raise AelabError(f"resume: the run was trained with {said}; a resumed run keeps its architecture, data and "
                         f"recipe (only {', '.join(f'`{n}`' for n in RESUMABLE)} may change); start a new run in "
                         "another folder instead")
    changes: dict[str, dict[str, Any]] = {"data": {}, "train": {}}
    for name in changed:
        section, key = name.split(".")
        changes[section][key] = _setting(requested, name)
    return replace(saved, data=replace(saved.data, **changes["data"]), train=replace(saved.train, **changes["train"]))
