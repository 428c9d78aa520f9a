"""``aelab train``: options -> a RunConfig -> ``aelab.train``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..callbacks import TRACKERS
from ..config import ARCHITECTURES, BINARIZE, DATASETS, FAMILIES, KEEP, KL_WARMUP_SHARE, LOSSES, PRECISIONS, \
    RECIPE_MODELS, RECIPES, DataConfig, ModelConfig, RunConfig, TrainConfig, model_config_for, train_config_for
from ..errors import AelabError
from .common import add_common, add_preparation, command

# option dest -> (config section, field)
TRAIN_OPTIONS = {
    "dataset": ("data", "dataset"), "data_dir": ("data", "data_dir"), "val_fraction": ("data", "val_fraction"),
    "test_fraction": ("data", "test_fraction"), "channels": ("data", "channels"), "image_size": ("data", "image_size"),
    "resize": ("data", "resize"), "memory_limit": ("data", "memory_limit"), "classes": ("data", "classes"),
    "binarize": ("data", "binarize"),
    "latent_dim": ("model", "latent_dim"), "width": ("model", "width"), "hidden": ("model", "hidden"),
    "kind": ("model", "kind"), "beta": ("model", "beta"), "kl_warmup": ("model", "kl_warmup"),
    "samples": ("model", "samples"), "arch": ("model", "arch"), "stages": ("model", "stages"),
    "residual": ("model", "residual"), "augment": ("data", "augment"), "patience": ("train", "patience"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"), "loss": ("train", "loss"), "noise_factor": ("train", "noise_factor"),
    "seed": ("train", "seed"), "device": ("train", "device"), "keep": ("train", "keep"),
    "precision": ("train", "precision"), "shards": ("train", "shards"),
}


def build_config(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    """The RunConfig the options ask for, and the names ('train.epochs') given explicitly."""
    given = {dest: getattr(args, dest) for dest in TRAIN_OPTIONS if getattr(args, dest) is not None}
    explicit = {".".join(TRAIN_OPTIONS[dest]) for dest in given}
    if args.recipe is not None:  # (the model settings a recipe sets count as chosen: not chosen from the data)
        explicit |= {"train.recipe", *(f"model.{key}" for key in RECIPE_MODELS.get(args.recipe, {}))}
    section = {name: {key: value for dest, value in given.items()
                      for sec, key in [TRAIN_OPTIONS[dest]] if sec == name} for name in ("data", "model", "train")}
    config = RunConfig(
        data=DataConfig(**section["data"]),
        model=model_config_for(args.recipe or "fast", **section["model"]),
        train=train_config_for(args.recipe or "fast", **section["train"]),
    )
    return config, explicit


def cmd_train(args: argparse.Namespace) -> int:
    """Train a convolutional autoencoder (--model: the plain one, or the variational family) and write a
    run folder (config.json, model.safetensors, state/, metrics.csv, figures/, report.html). MNIST and
    Fashion-MNIST get the tutorial's network and the fast recipe; --recipe tutorial reproduces the
    tutorial's settings. Your own images get the deep network, with what you leave out chosen from
    them and said in one line (docs/training.md). Under torchrun (torchrun --nproc-per-node
    N -m aelab train ...) the processes train one run with DistributedDataParallel; --batch-size
    stays the global batch.
    """
    from ..callbacks import Console, ProgressBar, trackers
    from ..training import train

    config, explicit = build_config(args)
    callbacks = ([] if args.quiet else [ProgressBar(terminals_only=True), Console()]) + trackers(args.track or [])
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise AelabError("--resume RUN continues RUN in place; leave out --out (or give the same folder)")
    else:
        config.validate()
        out = Path(args.out or config.default_run_dir())
    train(config, out, resume=bool(args.resume), overwrite=args.overwrite, report=not args.no_report,
          explicit=explicit, callbacks=callbacks, progress=False)  # (the report's stages: lines, through the logger)
    return 0


def add_parsers(sub) -> None:
    t, m, d = TrainConfig(), ModelConfig(), DataConfig()
    p = command(sub, "train", "train an autoencoder and write a run folder", cmd_train, writes=False)
    p.add_argument("--out", metavar="RUN", help="run folder (default: runs/ and the data's name, then what sets the "
                   "run apart and the latent size: runs/mnist-d4, runs/mnist-vae-bce-dynamic-d4, runs/my_photos)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint, with its "
                   "own settings; --epochs may extend a finished run (the added epochs get a one-cycle of their "
                   "own, from the rate where the run ended up to a quarter of the peak and back down); under "
                   "torchrun only rank 0 needs to see RUN")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a set of settings: fast (the default); quick (9 "
                   "epochs); tutorial (the tutorial's as written); novelty (novelty detection when the normal images "
                   "are of several kinds, e.g. --classes 0,1,2,3,4,5,6,7,8: the autoencoder with latent size 16, 10 "
                   "epochs, and `aelab score` by the code's density; for one class the fast recipe with --latent-dim "
                   "16 scores higher; docs/using.md)")
    p.add_argument("--data", "--dataset", dest="dataset", metavar="SOURCE",
                   help=f"{' or '.join(DATASETS)}; a folder of images (PNG, JPEG, BMP, GIF, TIFF, WebP, searched in "
                        "subfolders; class subfolders give labels; train/ test/ (val/) subfolders give the splits; "
                        "decoded once into a cache under --data-dir; files that are not usable images are skipped and "
                        "listed in RUN/data-skipped.csv); or a .npy / .npz file of images: [N, H, W], [N, H, W, C] or "
                        "[N, C, H, W], uint8 or floats in [0, 1], a .npz with `images` and optionally `labels` "
                        f"(default: {d.dataset})")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="a file, or a folder without train/ and test/ subfolders: share of its images held out for "
                        f"testing (default: {d.test_fraction:g})")
    add_preparation(p)
    p.add_argument("--classes", metavar="C[,C...]",
                   help="train and validate on these classes only (labels or class names, e.g. 3 or 0,6): one-class "
                        "training for novelty detection (with --latent-dim 16: the recipe benchmarks/one_class.py "
                        "measures); the test split keeps every class, for `aelab score` (default: all)")
    p.add_argument("--binarize", choices=BINARIZE,
                   help="binarised pixels, as papers measure likelihoods on MNIST: dynamic (each training image drawn "
                        "anew every epoch, Bernoulli with its grey level; validation and test drawn once, seeded), "
                        "static (every split drawn once, seeded) or threshold (pixel > 0.5); use with --loss bce "
                        "(default: grey levels)")
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="a folder whose decoded images are larger than this is read from its cache on disk batch by "
                        "batch (the same run, slower), e.g. 4GB; K, M, G are powers of 1024 (default: auto, half the "
                        "machine's memory; under torchrun the processes on a machine share it)")
    p.add_argument("--model", dest="kind", choices=sorted(FAMILIES), metavar="FAMILY",
                   help="ae: the tutorial's autoencoder; vae: the variational autoencoder (the same network with two "
                        "heads, the ELBO; --beta, --kl-warmup); iwae: the VAE trained on the importance-weighted "
                        "bound (--samples); cvae: the VAE that also sees each image's label (labelled images); with "
                        f"--loss bce a Bernoulli decoder, else a Gaussian one whose variance is learned (default: {m.kind})")
    p.add_argument("--beta", type=float, metavar="B", help=f"vae, cvae: the KL term's weight, beta-VAE (default: "
                   f"{m.beta:g}, the ELBO)")
    p.add_argument("--kl-warmup", type=float, metavar="EPOCHS", help="vae, cvae: the KL term's weight rises linearly "
                   f"from 0 over this many epochs (0: none; default: the first {KL_WARMUP_SHARE * 100:g}%% of the epochs)")
    p.add_argument("--samples", type=int, metavar="K", help=f"iwae: codes drawn per image for the bound (default: "
                   f"{m.samples}; try 5)")
    p.add_argument("--arch", choices=ARCHITECTURES, help="the network: tutorial (the tutorial's, layer for layer), "
                   "deep (stride-2 stages down to a map of at most 8 on its shorter side, upsampling by resizing then "
                   "convolving), or auto: tutorial for mnist and fashion-mnist, deep for your own images, with the "
                   "settings you leave out chosen from the images and said when training starts (default: auto)")
    p.add_argument("--stages", type=int, metavar="N", help="deep: stride-2 stages (default: from the image size)")
    p.add_argument("--residual", action="store_const", const=True, help="deep: a residual block in every stage")
    p.add_argument("--latent-dim", type=int, metavar="N", help=f"size of the latent code (default: {m.latent_dim}; "
                   "--recipe novelty: 16; your own images: from their size)")
    p.add_argument("--width", type=int, metavar="N", help="channels of the first convolution, doubled at each stage "
                   f"(default: {m.width}, the tutorial's; your own images: from their size)")
    p.add_argument("--hidden", type=int, metavar="N", help="width of the fully connected layers "
                   f"(default: {m.hidden}, the tutorial's; your own images: 512)")
    p.add_argument("--epochs", type=int, metavar="N", help=f"default: {t.epochs}; your own images: enough for "
                   "4,000 optimizer steps at least")
    p.add_argument("--patience", type=int, metavar="N", help="stop when the validation loss has not improved for N "
                   "epochs (with --keep best, the default, the best epoch's weights are kept; default: 0, never)")
    p.add_argument("--augment", metavar="NAMES", help="change each training image anew every epoch, names joined by "
                   "commas: flip (half of them mirrored), shift (moved up to 1/16 of their size), turn (quarter turns; "
                   "half turns if not square), colour (the order of a colour image's channels), or none (default: "
                   "all four for your own images when fewer than 2,000 train, else none; none for the named datasets)")
    p.add_argument("--batch-size", type=int, metavar="N", help=f"default: {t.batch_size}; your own images: 64 under "
                   "20,000")
    p.add_argument("--lr", type=float, metavar="RATE",
                   help=f"learning rate; the peak of the one-cycle schedule in the fast recipe (default: {t.lr:g}; "
                        "your own images: 0.003)")
    p.add_argument("--weight-decay", type=float, metavar="W", help=f"Adam's weight decay (default: {t.weight_decay:g})")
    p.add_argument("--loss", choices=LOSSES, help="reconstruction loss: mse; bce; ssim, 0.84 (1 - SSIM) + 0.16 L1 "
                   "(Zhao et al. 2017), for pictures: sharper edges and textures than MSE, which blurs what it cannot "
                   f"place (the variational family: mse or bce, its likelihoods) (default: {t.loss})")
    p.add_argument("--noise-factor", type=float, metavar="F",
                   help="denoising: add Gaussian noise times F to the input, clipped to [0,1]; the target is "
                        f"the clean image (default: {t.noise_factor:g}, no noise; the tutorial uses 0.3)")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help=f"share of the training images kept for validation (default: {d.val_fraction:g})")
    p.add_argument("--seed", type=int, metavar="N", help=f"seed for weights, data order and noise (default: {t.seed})")
    p.add_argument("--device", metavar="DEV", help=f"auto (cuda, then mps, else cpu), cpu, cuda, cuda:N, mps "
                   f"(default: {t.device})")
    p.add_argument("--keep", choices=KEEP, help="which weights become model.safetensors: best (lowest validation "
                   f"loss) or last (default: {t.keep})")
    p.add_argument("--precision", choices=PRECISIONS, help="bf16: autocast the training step to bfloat16 (measured "
                   "no faster for this small model: slower on a 2-core CPU, equal on an H200; see benchmarks/RESULTS.md) "
                   f"(default: {t.precision})")
    p.add_argument("--shards", type=int, metavar="N",
                   help="CPU: split each batch into N shards trained at once, one thread each, each with its own "
                        "BatchNorm statistics (as multi-GPU data parallelism does); 1 = off; 0 = auto: 2 on a CPU "
                        "with 2+ threads and batches of 128+ (1.08x on 2 cores, see benchmarks/RESULTS.md); under "
                        "torchrun each process is one shard (default: 0)")
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    p.add_argument("--track", action="append", choices=TRACKERS, metavar="TRACKER",
                   help="also log to an experiment tracker (repeat for both): tensorboard (event files in "
                        "RUN/tensorboard/; pip install 'aelab[tensorboard]') or mlflow (params, metrics per epoch and "
                        "the run folder's files; $MLFLOW_TRACKING_URI, else MLflow's default; "
                        "pip install 'aelab[mlflow]')")
    add_common(p)
