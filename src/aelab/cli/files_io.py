"""Image files in, files out: ``aelab reconstruct``, ``denoise`` and ``encode``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import AelabError
from .common import add_common, add_inputs, command, load_run, report_skipped


RECONSTRUCT = """{what}: OUT/NAME.png for each input (files, and folders searched in their subfolders,
their layout kept), at the input's own size and mode (grey or colour, alpha kept). Each input is
prepared as the run's training images were (channels, size, resize). Files that are not usable
images are skipped and listed in OUT/skipped.csv."""


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """aelab reconstruct and aelab denoise (``RECONSTRUCT``)."""
    from ..files import reconstruct_files

    if getattr(args, "seed", None) is not None and not getattr(args, "add_noise", None):
        raise AelabError("--seed is the seed of --add-noise's noise: give --add-noise F too, or leave --seed out")
    run = load_run(args)
    noise = 0.0
    if args.command == "denoise":
        if run.config.train.noise_factor <= 0:
            logging.getLogger("aelab").warning("%s was not trained to denoise (no --noise-factor); its outputs are "
                                               "plain reconstructions", run.path)
        noise = args.add_noise or 0.0
    written, skipped = reconstruct_files(run, args.inputs, args.out, noise_factor=noise, seed=getattr(args, "seed", None) or 0)
    report_skipped(skipped, Path(args.out))
    print(f"{len(written)} images written to {args.out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """Write one row per input image (files, and folders searched in their subfolders): path, z0 ...
    z{d-1}; as CSV, Parquet (pip install 'aelab[parquet]') or .npy (a structured array with fields
    path and z). Inputs are prepared as the run's training images were; files that are not usable
    images are skipped and listed in OUT-skipped.csv.
    """
    from ..files import encode_files, write_codes

    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet", ".npy"):
        raise AelabError(f"--out {out} must end in .csv, .parquet or .npy")
    run = load_run(args)
    paths, codes, skipped = encode_files(run, args.inputs)
    write_codes(paths, codes, out)
    report_skipped(skipped, out.parent, f"{out.stem}-skipped.csv")
    print(f"{out}: {len(paths)} rows (path, z0..z{codes.shape[1] - 1})")
    return 0


def add_parsers(sub) -> None:
    for name, summary in (("reconstruct", "the run's reconstruction of each input image, as PNG files"),
                          ("denoise", "a denoising run's output for each (noisy) input image, as PNG files")):
        p = command(sub, name, summary, cmd_reconstruct, RECONSTRUCT.format(what=summary[0].upper() + summary[1:]))
        add_inputs(p)
        p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files")
        if name == "denoise":
            p.add_argument("--add-noise", type=float, metavar="F", help="first add seeded Gaussian noise times F to "
                           "the inputs (to see the run at work on clean files; default: none, the inputs are noisy)")
            p.add_argument("--seed", type=int, help="with --add-noise: the seed of the noise (default: 0)")
        add_common(p, data_dir=False)

    p = command(sub, "encode", "the latent code of each input image, as a table", cmd_encode)
    add_inputs(p)
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.csv, FILE.parquet or FILE.npy")
    add_common(p, data_dir=False)
