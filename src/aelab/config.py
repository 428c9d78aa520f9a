"""Configuration: the one place where defaults live.

The command-line tool, the Python API and the recipes all build these dataclasses;
nothing else invents a default. A run folder's ``config.json`` is ``RunConfig.to_dict()``
and reads back with ``RunConfig.from_dict``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.catalog import ARRAY_SUFFIXES, DATASETS
from .errors import AelabError

LOSSES = ("mse", "bce", "ssim")
# the model families (aelab.models.registry builds them): kind -> (module, class, the settings of ModelConfig's
# FAMILY_SETTINGS it takes; another family refuses them)
FAMILIES: dict[str, tuple] = {
    "ae": ("aelab.models.ae", "ConvAutoencoder", ()),  # the tutorial's convolutional autoencoder
    "vae": ("aelab.models.vae", "VariationalAutoencoder", ("beta", "kl_warmup")),  # two heads, the ELBO (beta-VAE)
    "iwae": ("aelab.models.iwae", "ImportanceWeightedAutoencoder", ("samples",)),  # the VAE on the K-sample bound
    "cvae": ("aelab.models.cvae", "ConditionalVariationalAutoencoder", ("beta", "kl_warmup")),  # it sees the label
}
FAMILY_SETTINGS = ("beta", "kl_warmup", "samples")  # ModelConfig's settings of some families
# the KL warm-up of a vae or cvae run that does not set one: the first quarter of its epochs, as the one-cycle rate
# rises (on MNIST, 30 epochs: 7 to 8 nats better test NLL than none, benchmarks/RESULTS.md, issue 22)
KL_WARMUP_SHARE = 0.25
# a family setting's values that ask for nothing of a family without it (runs saved before the warm-up's default
# was None record 0.0, as does `--kl-warmup 0`)
UNSET: dict[str, tuple] = {"kl_warmup": (None, 0.0)}


def family_settings(kind: str) -> tuple[str, ...]:
    """The settings of ``FAMILY_SETTINGS`` that the family ``kind`` takes (one registered as (module,
    class) alone takes none)."""
    entry = FAMILIES[kind]
    return entry[2] if len(entry) > 2 else ()


SCHEDULES = ("onecycle", "constant")
KEEP = ("best", "last")
PRECISIONS = ("fp32", "bf16")


@dataclass
class DataConfig:
    """Where the images come from, how they are made uniform, and how they are split."""

    # the source: mnist | fashion-mnist | a .npy / .npz file of images | a folder of image files
    dataset: str = "mnist"
    data_dir: str | None = None  # None: $AELAB_DATA_DIR, else ~/.cache/aelab/data (datasets, the folder cache)
    val_fraction: float = 0.2  # share of the training images kept for validation
    test_fraction: float = 0.1  # a file or a folder without train/ test/ subfolders: share held out for testing
    split_seed: int = 0  # the splits depend on this only, not on the training seed
    channels: int | None = None  # 1 or 3; None: 3 if any image has colour, else 1 (a run records what it used)
    # "H" or "HxW"; None: the most common size, made at most LARGEST_DEFAULT_SIDE on its longer side (a run records
    # what it used)
    image_size: str | None = None
    resize: str = "stretch"  # how images of another size are fitted: stretch | crop | pad
    # a folder larger than this is read from its cache on disk batch by batch (the machine's limit: under
    # torchrun its processes share it)
    memory_limit: str = "auto"
    fingerprint: str | None = None  # of the images a run was trained on (set by training)
    classes: str | None = None  # train (and validate) on these classes only, e.g. "3" or "0,6": one-class training
    # binarised pixels, as papers use MNIST for likelihoods: dynamic (a fresh Bernoulli draw of each training
    # image every epoch; validation and test drawn once, seeded), static (every split drawn once, seeded) or
    # threshold (pixel > 0.5); None: grey levels as they are
    binarize: str | None = None
    # training images changed anew every epoch (a seeded draw), for small folders: some of "flip" (horizontal, half
    # of them), "shift" (up to 1/16 of the size each way), "turn" (quarter turns), "colour" (the channels' order),
    # joined by commas; "none" or None: as they are. None for your own images lets aelab.defaults choose (all four
    # for a small folder, SMALL_FOLDER_AUGMENT); the named datasets: none unless given
    augment: str | None = None

    def validate(self) -> None:
        if not self.dataset:
            raise AelabError("`data.dataset` is empty; choose one of " + ", ".join(DATASETS) +
                             ", a .npy / .npz file or a folder of images")
        for name in ("val_fraction", "test_fraction"):
            if not (0.0 < getattr(self, name) < 1.0):
                raise AelabError(f"`data.{name}` must be between 0 and 1 (exclusive), got {getattr(self, name)}; "
                                 "try 0.2")
        if self.channels not in (None, 1, 3):
            raise AelabError(f"`data.channels` must be 1 or 3, got {self.channels}; choose 1 (grey) or 3 (colour)")
        if self.image_size is not None:
            parse_size(self.image_size)
        if self.resize not in RESIZE_METHODS:
            raise AelabError(f"unknown `data.resize` {self.resize!r}; choose one of {', '.join(RESIZE_METHODS)}")
        memory_budget(self.memory_limit)
        if self.augment not in (None, "none") and (not self.augment_list() or set(self.augment_list()) - set(AUGMENTATIONS)):
            raise AelabError(f"unknown `data.augment` {self.augment!r}; give some of {', '.join(AUGMENTATIONS)} joined "
                             "by commas (flip,shift), or none")
        if self.binarize not in (None, *BINARIZE):
            raise AelabError(f"unknown `data.binarize` {self.binarize!r}; choose one of {', '.join(BINARIZE)}")
        if self.classes is not None and not self.class_list():
            raise AelabError(f"`data.classes` {self.classes!r} names no class; give labels or class names like 3 or 0,6")

    def augment_list(self) -> list[str]:
        """``augment`` as a list of its names ([] for none)."""
        return [part.strip() for part in str(self.augment or "").split(",") if part.strip() and part.strip() != "none"]

    def class_list(self) -> list[str]:
        """``classes`` as a list of names or label numbers (as written)."""
        return [part.strip() for part in str(self.classes or "").split(",") if part.strip()]

    def kind(self) -> str:
        """``named`` (mnist, fashion-mnist), ``array`` (.npy / .npz) or ``folder``."""
        if self.dataset in DATASETS:
            return "named"
        return "array" if Path(self.dataset).suffix.lower() in ARRAY_SUFFIXES else "folder"

    def source_name(self) -> str:
        """A short name of the source: the dataset's, or the file's or folder's without its suffix."""
        return self.dataset if self.dataset in DATASETS else (Path(self.dataset).expanduser().resolve().stem or "data")

    def size(self) -> tuple[int, int] | None:
        """``image_size`` as (height, width)."""
        return None if self.image_size is None else parse_size(self.image_size)


def _require(ok: bool, name: str, value: Any, what: str, fix: str) -> None:
    """Refuse ``value`` of the setting ``name`` unless ``ok``, saying what it must be and a value that works."""
    if not ok:
        raise AelabError(f"`{name}` must be {what}, got {value}; try {fix}")


# the longer side of the size your own images are made when none is given (`data.image_size`): larger pictures
# are made smaller, keeping their shape; the deep network trains its defaults at 128x128 in about 12 minutes on 2
# CPU cores and in under 1 GB (benchmarks/RESULTS.md), and at 4096x4096 would need hundreds of GB
LARGEST_DEFAULT_SIDE = 128


def default_image_size(most_common: tuple[int, int]) -> tuple[int, int]:
    """The size (height, width) images are made when ``data.image_size`` is not given: their most
    common size, or for larger pictures that shape made ``LARGEST_DEFAULT_SIDE`` on its longer side
    (the other side rounded, at least 16)."""
    height, width = most_common
    longer = max(height, width)
    if longer <= LARGEST_DEFAULT_SIDE:
        return int(height), int(width)
    scale = LARGEST_DEFAULT_SIDE / longer
    return max(16, round(height * scale)), max(16, round(width * scale))


RESIZE_METHODS = ("stretch", "crop", "pad")
BINARIZE = ("dynamic", "static", "threshold")
ARCHITECTURES = ("auto", "tutorial", "deep")
AUGMENTATIONS = ("flip", "shift", "turn", "colour")
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def source_place(dataset: str) -> str:
    """Where a data source is: a named dataset's name, or a file's or folder's absolute path (two
    ways of writing one folder give one place)."""
    return dataset if dataset in DATASETS else str(Path(dataset).expanduser().resolve())


def parse_size(text: str) -> tuple[int, int]:
    """ "64" -> (64, 64); "48x64" -> (48, 64): height x width."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) < 16:
        raise AelabError(f"`data.image_size` {text!r} is not a size of at least 16 pixels; give H or HxW, like 64 or 48x64")
    return (numbers[0], numbers[-1])


def memory_budget(text: str) -> int:
    """A memory size in bytes: "auto" (half the machine's memory), or a number with K, M, G or T
    (powers of 1024; "512MB", "2G", "1.5GiB")."""
    value = str(text).strip().lower()
    if value == "auto":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError, AttributeError):  # pragma: no cover (no sysconf)
            return 4 * 2**30
    number = value.rstrip("bgikmt")
    unit = value[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or not (amount >= 0 and math.isfinite(amount)):
        raise AelabError(f"`data.memory_limit` {text!r} is not a memory size; give auto or one like 512MB or 4GB")
    return int(amount * _UNITS[unit])


@dataclass
class ModelConfig:
    """The tutorial's convolutional autoencoder, sized for the images; its defaults are the tutorial's."""

    latent_dim: int = 4  # size of the code between encoder and decoder (the tutorial's d)
    in_channels: int = 1  # set from the data
    image_size: int = 28  # image height, set from the data
    image_width: int | None = None  # set from the data; None: square (= image_size)
    width: int = 8  # channels of the first convolution, doubled at each of the three stages (the tutorial's 8)
    hidden: int = 128  # width of the fully connected layers (the tutorial's 128)
    even_padding: bool = True  # the third convolution pads even sizes (no dead border); runs saved before: False
    kind: str = "ae"  # the model family (aelab.config.FAMILIES); runs saved before are "ae"
    # the variational families: vae's weight of the KL term (1: the ELBO; beta-VAE otherwise) and the epochs over
    # which it rises linearly from 0 (a KL warm-up; 0: none; None: the first KL_WARMUP_SHARE of the run's epochs,
    # which training records as a number); iwae's samples per image (its bound's K)
    beta: float = 1.0
    kl_warmup: float | None = None
    samples: int = 1
    n_classes: int = 0  # the classes of the data (set from them; the cvae family sees each image's label)
    # the network: tutorial (the tutorial's, layer for layer) or deep (stages down to a map of at most 8 on its
    # shorter side, resize-then-convolve upsampling, optional residual blocks); auto: tutorial for the named
    # datasets, deep for your own images, with the settings left at their defaults chosen from the data
    # (aelab.defaults)
    arch: str = "auto"
    stages: int = 0  # deep: stride-2 stages (0: from the image size, down to a map of at most 8 on its shorter side)
    residual: bool = False  # deep: a residual block in every stage

    def validate(self) -> None:
        if self.kind not in FAMILIES:
            raise AelabError(f"unknown `model.kind` {self.kind!r}; choose {' or '.join(FAMILIES)}")
        _require(self.latent_dim >= 1, "model.latent_dim", self.latent_dim, "at least 1", "4")
        _require(self.in_channels >= 1, "model.in_channels", self.in_channels, "at least 1",
                 "1 (it is set from the data)")
        for size in (self.image_size, self.image_width or self.image_size):
            if size < 16:
                raise AelabError(f"images must be at least 16x16 pixels, got {self.image_size}x"
                                 f"{self.image_width or self.image_size}; choose larger images")
        _require(self.width >= 1, "model.width", self.width, "at least 1", "8")
        _require(self.hidden >= 1, "model.hidden", self.hidden, "at least 1", "128")
        _require(self.beta > 0 and math.isfinite(self.beta), "model.beta", self.beta, "a positive number", "1 (the ELBO)")
        _require(self.kl_warmup is None or (self.kl_warmup >= 0 and math.isfinite(self.kl_warmup)), "model.kl_warmup",
                 self.kl_warmup, "0 (none) or more epochs", "0")
        _require(self.samples >= 1, "model.samples", self.samples, "at least 1", "1")
        _require(self.n_classes >= 0, "model.n_classes", self.n_classes, "0 or more", "0 (it is set from the data)")
        if self.arch not in ARCHITECTURES:
            raise AelabError(f"unknown `model.arch` {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        _require(self.stages >= 0, "model.stages", self.stages, "0 (from the image size) or more", "0")
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        for name in FAMILY_SETTINGS:
            if getattr(self, name) not in UNSET.get(name, (defaults[name],)) and name not in family_settings(self.kind):
                users = [kind for kind in FAMILIES if name in family_settings(kind)]
                raise AelabError(f"`model.{name}` applies to the {' and '.join(users)} famil"
                                 f"{'ies' if len(users) > 1 else 'y'}, not to {self.kind}; choose `model.kind` "
                                 f"{users[0]} or leave `model.{name}` out")


@dataclass
class TrainConfig:
    """How to train. The defaults are the fast recipe; see ``RECIPES`` for the tutorial's."""

    recipe: str = "fast"  # the recipe these values came from (informative)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-2  # peak rate of the one-cycle schedule (constant schedule: the rate; tutorial 1e-3)
    weight_decay: float = 1e-5  # Adam's L2 penalty, as in the tutorial
    schedule: str = "onecycle"  # onecycle | constant
    shuffle: bool = True  # reshuffle the training images every epoch (the tutorial does not)
    loss: str = "mse"  # mse | bce | ssim
    noise_factor: float = 0.0  # > 0: denoising; Gaussian noise * factor added to the input, clipped
    seed: int = 0  # weights, data order and noise
    device: str = "auto"  # auto (cuda, then mps, else cpu) | cpu | cuda | cuda:N | mps
    keep: str = "best"  # which weights become model.safetensors: best (by val loss) | last
    precision: str = "fp32"  # fp32 | bf16 (autocast in the training step; weights and evaluation stay fp32)
    # CPU: each batch is split into this many shards, trained at once by one thread each, each shard
    # with its own BatchNorm statistics (as in multi-GPU data-parallel training). 0 = auto: 2 on a
    # CPU with 2 or more threads and batches of 128 or more, else 1 (the whole batch, one stream).
    # A run records the number it used. Ignored on GPUs.
    shards: int = 0
    patience: int = 0  # stop when the validation loss has not improved for this many epochs (0: never)

    def validate(self) -> None:
        _require(self.epochs >= 1, "train.epochs", self.epochs, "at least 1", "30")
        _require(self.patience >= 0, "train.patience", self.patience, "0 (never stop early) or more epochs", "10")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "at least 1", "256")
        _require(self.lr > 0 and math.isfinite(self.lr), "train.lr", self.lr, "a positive number", "1e-3")
        _require(self.weight_decay >= 0 and math.isfinite(self.weight_decay), "train.weight_decay", self.weight_decay,
                 "0 or more", "1e-5")
        if self.schedule not in SCHEDULES:
            raise AelabError(f"unknown `train.schedule` {self.schedule!r}; choose {' or '.join(SCHEDULES)}")
        if self.loss not in LOSSES:
            raise AelabError(f"unknown `train.loss` {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if not (self.noise_factor >= 0 and math.isfinite(self.noise_factor)):
            raise AelabError(
                f"`train.noise_factor` must be 0 (no noise) or more, got {self.noise_factor}; try 0.3"
            )
        if self.shards < 0:
            raise AelabError(f"`train.shards` must be 0 (auto) or more, got {self.shards}; try 0")
        if self.precision not in PRECISIONS:
            raise AelabError(f"unknown `train.precision` {self.precision!r}; choose {' or '.join(PRECISIONS)}")
        if self.keep not in KEEP:
            raise AelabError(f"unknown `train.keep` {self.keep!r}; choose {' or '.join(KEEP)}")
        if self.recipe not in RECIPES:
            raise AelabError(f"unknown `train.recipe` {self.recipe!r}; choose one of {', '.join(RECIPES)}")


# Each recipe is a set of TrainConfig values; explicit options override them.
RECIPES: dict[str, dict[str, Any]] = {
    # Measured on a 2-core CPU: see benchmarks/RESULTS.md.
    "fast": {},
    # The fast recipe on a budget: 9 epochs at a higher peak rate end at the tutorial's final test MSE
    # (0.0265 at latent size 4) or below with seeds 0-5 but one (0.0259-0.0264; seed 5: 0.02653), in
    # 25 s of training on 2 CPU cores (44 s with start-up and the report); 8 epochs missed with 4 seeds of 6
    # (benchmarks/RESULTS.md).
    "quick": {"epochs": 9, "lr": 1.5e-2},
    # The tutorial as written: constant rate 1e-3, batch 256, one fixed data order.
    "tutorial": {"schedule": "constant", "lr": 1e-3, "batch_size": 256, "shuffle": False},
    # Novelty detection when the normal images are of several kinds (train on nine MNIST digits, the
    # tenth is new): 10 epochs, with the model and the score below (benchmarks/RESULTS.md, issue 22).
    "novelty": {"epochs": 10},
}
# What a recipe sets beyond training: the model's settings (explicit options override them) and the
# anomaly score its runs use unless told (aelab.scores.default_method; the others: combined).
RECIPE_MODELS: dict[str, dict[str, Any]] = {"novelty": {"kind": "ae", "latent_dim": 16}}
RECIPE_SCORES: dict[str, str] = {"novelty": "density"}


def train_config_for(recipe: str = "fast", **overrides: Any) -> TrainConfig:
    """A TrainConfig from a recipe's values, with ``overrides`` (None values ignored) on top."""
    if recipe not in RECIPES:
        raise AelabError(f"unknown `train.recipe` {recipe!r}; choose one of {', '.join(RECIPES)}")
    values = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(recipe=recipe, **values)


def model_config_for(recipe: str = "fast", **overrides: Any) -> ModelConfig:
    """A ModelConfig with a recipe's model settings (``RECIPE_MODELS``), ``overrides`` (None values
    ignored) on top."""
    if recipe not in RECIPES:
        raise AelabError(f"unknown `train.recipe` {recipe!r}; choose one of {', '.join(RECIPES)}")
    return ModelConfig(**{**RECIPE_MODELS.get(recipe, {}), **{k: v for k, v in overrides.items() if v is not None}})


def resolved_kl_warmup(model: ModelConfig, epochs: int) -> ModelConfig:
    """``model`` with a KL warm-up left to the run (None) made a number: ``KL_WARMUP_SHARE`` of the run's
    ``epochs`` for a family that takes one (vae, cvae); the other families keep None (they have none)."""
    if model.kl_warmup is not None or "kl_warmup" not in family_settings(model.kind):
        return model
    return dataclasses.replace(model, kl_warmup=round(KL_WARMUP_SHARE * epochs, 3))


@dataclass
class RunConfig:
    """Everything needed to rebuild and reproduce a run; saved as the run's config.json."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        self.data.validate()
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "RunConfig":
        """Rebuild from a dict; unknown or missing sections give a clear AelabError."""
        parts = {}
        for name, kind in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
            section = values.get(name)
            if not isinstance(section, dict):
                raise AelabError(f"{source}: section {name!r} is missing; the file is not an aelab config")
            known = {f.name for f in dataclasses.fields(kind)}
            if name == "train" and "shards" not in section:  # written before shards existed: trained unsharded
                section = {**section, "shards": 1}
            if name == "model" and "even_padding" not in section:  # written before: the third convolution unpadded
                section = {**section, "even_padding": False}
            if name == "model" and "arch" not in section:  # written before the deep network: the tutorial's
                section = {**section, "arch": "tutorial"}
            unknown = set(section) - known
            if unknown:
                raise AelabError(
                    f"{source}: unknown {name} settings {sorted(unknown)}; "
                    "the run was made by a newer aelab: upgrade aelab"
                )
            try:
                parts[name] = kind(**section)
            except TypeError as error:
                raise AelabError(f"{source}: bad {name} section ({error})") from None
        return cls(**parts)

    def default_run_dir(self) -> str:
        """Where a run goes when no folder is given: runs/, the data source's name, what sets the run
        apart (a model family other than ae, a recipe other than fast, denoising, a loss other than
        mse, binarised pixels, some classes only) and the latent size, where it is known before the
        images are read (your own images' is chosen from them unless given): runs/mnist-d4,
        runs/mnist-vae-bce-dynamic-d4, runs/mnist-denoise0.3-d4, runs/my_photos."""
        data, model, train = self.data, self.model, self.train
        parts = [data.source_name(), *([model.kind] if model.kind != "ae" else []),
                 *([train.recipe] if train.recipe != "fast" else []),
                 *([f"denoise{train.noise_factor:g}"] if train.noise_factor > 0 else []),
                 *([train.loss] if train.loss != "mse" else []), *([data.binarize] if data.binarize else []),
                 *([f"classes{'+'.join(data.class_list())}"] if data.classes else [])]
        chosen_later = data.kind() != "named" and model.arch != "tutorial" and model.latent_dim == default_setting(
            "model.latent_dim")
        return "runs/" + "-".join(parts) + ("" if chosen_later else f"-d{model.latent_dim}")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise AelabError(f"{path} does not exist: is this a run folder made by `aelab train`?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise AelabError(f"{path} is not valid JSON ({error}); the run folder is damaged") from None
        if not isinstance(values, dict):
            raise AelabError(f"{path} is not an aelab config (expected a JSON object)")
        return cls.from_dict(values, source=str(path)).validate()


def default_setting(name: str) -> Any:
    """The default of the setting ``name`` ("model.latent_dim"), as ``RunConfig()`` has it."""
    section, key = name.split(".")
    return getattr(getattr(RunConfig(), section), key)
