"""``aelab generate``: images decoded from the latent space (grid, samples, interpolation, traversals)."""

from __future__ import annotations

import argparse

from ..errors import AelabError
from .common import add_common, add_run, command, data_config, dims, opened, options_for, run_and_split

# which of the command's modes each option applies to; an option given for another mode is refused
OPTIONS = {"n": ("--grid",), "dims": ("--grid",), "range": ("--grid",), "steps": ("--interpolate", "--traverse"),
           "split": ("--interpolate", "--traverse"), "seed": ("--samples",), "sampler": ("--samples",),
           "scale": ("--samples", "--interpolate"), "label": ("--samples", "--grid")}
DEFAULTS = {"n": 12, "split": "test", "seed": 0, "scale": 2}


def cmd_generate(args: argparse.Namespace) -> int:
    """--grid: an n x n grid of images decoded over a latent plane, drawn with the plane's axes and
    values (2-D codes: the whole plane; more dimensions: --dims I,J with the others at the mean code,
    or by default the plane of the codes' first two principal components); each axis spans the 1st
    to the 99th percentile of the training codes, or --range LO HI. Where no training code lies
    (often a corner) the decoder never learned what to draw. --samples N: new images from codes
    drawn from the prior N(0, I) (a variational run's default) or from a Gaussian mixture fitted to
    the training codes (an autoencoder's); --out FILE.npy or --out FOLDER saves the images themselves
    (a uint8 array [N, C, H, W], or PNG files), --out FILE.png a picture of them; a conditional run
    (cvae) draws the class --label C, or the classes in turn. --interpolate I J:
    the line between the codes of images I and J. --traverse I: latent traversals around the code of
    image I, a row per latent dimension (the first 16) moved from -3 to +3 standard deviations (the
    prior's for a variational run, the training codes' otherwise).
    """
    from .. import figures, latent, plots
    from ..data.sets import load_run_split
    from ..run import output_path

    modes = {"--grid": bool(args.grid), "--samples": args.n_samples is not None,
             "--interpolate": args.interpolate is not None, "--traverse": args.traverse is not None}
    if sum(modes.values()) != 1:
        raise AelabError("choose one of --grid, --samples N, --interpolate I J or --traverse I")
    mode = next(mode for mode, chosen in modes.items() if chosen)
    options_for(args, mode, OPTIONS, {**DEFAULTS, "steps": 9 if mode == "--traverse" else 10})
    run, data = run_and_split(args)
    if args.label is not None and not run.model.conditional:
        raise AelabError(f"--label draws a class of a conditional run (--model cvae); {run.path} is "
                         f"{run.config.model.kind}: leave --label out")
    if args.interpolate is not None:
        picture = figures.interpolation_picture(run, data, *args.interpolate, steps=args.steps)
        name = f"interpolation-{args.interpolate[0]}-{args.interpolate[1]}.png"
        print(figures.save_picture(run, picture, name, args.out, scale=args.scale))
        return 0
    sampler = args.sampler or latent.default_sampler(run.model)
    train_codes = None
    if args.grid or sampler == "gmm" or (args.traverse is not None and not latent.default_sampler(run.model) == "prior"):
        train = opened(args, load_run_split(run.config, data_config(run.config, args), "train"))
        train_codes = latent.encode(run.model, train.images, labels=train.labels)
    if args.grid:
        plane = latent.latent_plane(train_codes, args.dims, limits=args.range)
        print(figures.grid_figure(run, plane, args.n, output_path(run.path, "grid.png", args.out), label=args.label))
        return 0
    if args.traverse is not None:
        path = output_path(run.path, f"traversal-{args.traverse}.png", args.out)
        print(figures.traversal_figure(run, data, path, args.traverse, train_codes, args.steps))
        return 0
    themselves = args.out is not None and not args.out.endswith(".png")  # (else a picture of them: shrunk)
    largest = None if themselves else plots.PICTURE_SIDE
    if sampler == "prior":
        images = latent.prior_images(run, args.n_samples, seed=args.seed, label=args.label, largest=largest)
    else:
        images = latent.sample_images(run, train_codes, args.n_samples, seed=args.seed, label=args.label,
                                      largest=largest)
    if themselves:
        print(figures.write_images(images, output_path(run.path, "samples", args.out)))
        return 0
    print(figures.save_picture(run, figures.tiled(images), "samples.png", args.out, scale=args.scale))
    return 0


def add_parsers(sub) -> None:
    p = command(sub, "generate", "decode images from the latent space (grid, samples, interpolation, traversals)",
                cmd_generate)
    add_run(p, split_help="--interpolate, --traverse: the split of the images (default: test)", split_default=None)
    p.add_argument("--grid", action="store_true", help="decode an n x n grid")
    p.add_argument("--n", type=int, help="--grid: its size (default: 12)")
    p.add_argument("--dims", type=dims, metavar="I,J", help="--grid: over two latent variables (default: the plane "
                   "of the codes' first two principal components)")
    p.add_argument("--range", type=float, nargs=2, metavar=("LO", "HI"), help="--grid: the values each axis spans, "
                   "e.g. --range -3 3 (default: the 1st to the 99th percentile of the training codes along it)")
    p.add_argument("--samples", type=int, metavar="N", dest="n_samples", help="draw N new images")
    p.add_argument("--sampler", choices=("prior", "gmm"), help="--samples: codes from the prior N(0, I), or from a "
                   "Gaussian mixture fitted to the training codes (default: prior for a variational run, gmm for an "
                   "autoencoder)")
    p.add_argument("--label", type=int, metavar="C", help="--samples, --grid: a conditional run's (cvae) class to draw "
                   "(default: --samples the classes in turn, --grid class 0)")
    p.add_argument("--interpolate", type=int, nargs=2, metavar=("I", "J"), help="interpolate between images I and J of --split")
    p.add_argument("--traverse", type=int, metavar="I", help="latent traversals around the code of image I of --split")
    p.add_argument("--steps", type=int, help="--interpolate, --traverse: the images along each line (default: 10; "
                   "traversals 9)")
    p.add_argument("--seed", type=int, help="--samples: their seed (default: 0)")
    p.add_argument("--scale", type=int, help="--samples, --interpolate: enlarge the PNG this many times (default: 2)")
    p.add_argument("--out", metavar="FILE",
                   help="FILE.png (a picture); --samples also FILE.npy or a FOLDER (the images themselves) "
                        "(default: RUN/outputs/grid.png, samples.png, interpolation-I-J.png, traversal-I.png)")
    add_common(p)
