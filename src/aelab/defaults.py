"""Defaults from the data: what a user does not set is chosen from the images (``model.arch`` auto).

The named datasets (MNIST, Fashion-MNIST) keep the tutorial's network and recipe exactly. The user's
own images (a folder or a file) get the deep network (``aelab.models.nets.DeepEncoder``): as many
stride-2 stages as take the image down to a map of at most 8 on its shorter side, a width and a
latent size that grow with the image, a training length counted in optimizer steps, with a floor, so that a folder of 600
pictures (3 batches an epoch) trains as long as it needs, and for a small folder each training image
flipped, shifted, turned and its colour channels reordered anew every epoch. Every choice is recorded in
config.json and said in one line when training starts; a setting the user gave is never changed.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .config import RECIPE_MODELS, RunConfig, default_setting
from .models.nets import stage_count

MIN_STEPS = 4000  # optimizer steps a run on the user's own images trains at least (unless `train.epochs` is given)
SMALL_FOLDER = 2000  # training images under which the training images are augmented unless told
# how: every change aelab has (on 575 clip-art pictures at 64x64, latent 64: test MSE 0.0197 with flip,shift,
# 0.0164 with all four, PCA-64 0.0170; benchmarks/RESULTS.md)
SMALL_FOLDER_AUGMENT = "flip,shift,turn,colour"


def latent_size(channels: int, height: int, width: int) -> int:
    """The deep network's latent size: 16 for images up to 32x32, 32 up to 64x64, 64 above."""
    side = max(height, width)
    return 16 if side <= 32 else 32 if side <= 64 else 64


def network_width(height: int, width: int) -> int:
    """The deep network's first stage's channels (doubled at each stage, at most 256): 32 up to
    32x32, 16 up to 64x64, 8 above: bigger maps cost more per channel (at 64x64, width 32 costs 2.7x
    width 16 a step; width 16 trains ``MIN_STEPS`` steps in about 6 minutes on 2 cores, benchmarks/RESULTS.md)."""
    side = max(height, width)
    return 32 if side <= 32 else 16 if side <= 64 else 8


def _given(explicit: set[str] | None, config: RunConfig, name: str) -> bool:
    """Whether the user set ``name`` ("model.latent_dim"): named in ``explicit`` (the command line's
    options), or without it a value other than the default."""
    if explicit is not None:
        return name in explicit
    section, key = name.split(".")  # (a value equal to the default counts as not given: ModelConfig(latent_dim=4)
    return getattr(getattr(config, section), key) != default_setting(name)  # on your own images is chosen from them


def from_data(config: RunConfig, image_shape: tuple[int, int, int], n_train: int,
              explicit: set[str] | None = None) -> tuple[RunConfig, str]:
    """``config`` with ``model.arch`` auto resolved and, for the deep network, the settings the user
    left out chosen from the images (their shape and the number of training images); and a line that
    says what was chosen ("" when nothing was). auto is the tutorial's network for the named datasets
    and with ``--recipe tutorial``; a recipe the user named keeps its training settings (only the
    network and the augmentation are chosen then), but for one of a model and a score
    (``config.RECIPE_MODELS``: novelty), whose training length the images choose as ever."""
    recipe = _given(explicit, config, "train.recipe")
    if config.model.arch == "tutorial":
        return config, ""
    if config.model.arch == "auto" and (config.data.kind() == "named" or (recipe and config.train.recipe == "tutorial")):
        return replace(config, model=replace(config.model, arch="tutorial")), ""  # the tutorial's network, as ever
    channels, height, width = image_shape
    model, train = config.model, config.train
    chosen: dict[str, object] = {}

    # a recipe the user named keeps its training settings; one of a model and a score (novelty: measured on MNIST)
    keeps_training = recipe and config.train.recipe not in RECIPE_MODELS  # leaves the training length to the data

    def choose(name: str, value) -> None:
        if not _given(explicit, config, name) and not (keeps_training and name.startswith("train.")):
            chosen[name] = value

    choose("model.width", network_width(height, width))
    choose("model.hidden", 512)
    choose("model.latent_dim", latent_size(channels, height, width))
    choose("train.batch_size", 64 if n_train < 20_000 else 256)
    choose("train.lr", 3e-3)
    batch = int(chosen.get("train.batch_size", train.batch_size))
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    choose("train.epochs", max(train.epochs, math.ceil(MIN_STEPS / steps_per_epoch)))
    if n_train < SMALL_FOLDER and config.data.kind() != "named":  # a small folder: each image changed anew every epoch (measured: benchmarks/RESULTS.md)
        choose("data.augment", SMALL_FOLDER_AUGMENT)
    model = replace(model, arch="deep", stages=model.stages or stage_count(height, width),
                    **{key.split(".")[1]: value for key, value in chosen.items() if key.startswith("model.")})
    train = replace(train, **{key.split(".")[1]: value for key, value in chosen.items() if key.startswith("train.")})
    data = replace(config.data, **{key.split(".")[1]: value for key, value in chosen.items() if key.startswith("data.")})
    rate = "peak rate" if train.schedule == "onecycle" else "rate"
    said = {"model.width": f"width {model.width}", "model.hidden": f"hidden {model.hidden}",
            "model.latent_dim": f"latent size {model.latent_dim}", "train.batch_size": f"batch {train.batch_size}",
            "train.lr": f"{rate} {train.lr:g}",
            "train.epochs": f"{_count(train.epochs, 'epoch')} ({_count(train.epochs * steps_per_epoch, 'step')})"}
    picked = [text for name, text in said.items() if name in chosen]
    kept = [text for name, text in said.items() if name not in chosen]
    line = (f"chosen from the data ({n_train} training images of {channels} x {height} x {width}): the deep network "
            f"with {model.stages} stages{', ' if picked else ''}{', '.join(picked)}")
    if kept:
        line += f"; as given{f' or recipe {train.recipe} sets' if keeps_training else ''}: {', '.join(kept)}"
    if "data.augment" in chosen:
        colours = " and its colours reordered" if channels == 3 else ""
        line += (f"; a small folder: each training image flipped, shifted, turned{colours} "
                 "anew every epoch (--augment flip,shift leaves out turns and colours, --augment none every change)")
    return replace(config, data=data, model=model, train=train), line


def _count(n: int, thing: str) -> str:
    """ "1 epoch", "4,000 steps"."""
    return f"{n:,} {thing}{'s' if n != 1 else ''}"
