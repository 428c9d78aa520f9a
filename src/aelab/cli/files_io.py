"""Image files in, files out: ``aelab reconstruct``, ``denoise`` and ``encode``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import AelabError
from .common import add_common, add_inputs, command, report_skipped, run_from_args


RECONSTRUCT = """{what}: NAME.png for each input in the output folder (--out DIR, else RUN/outputs/{name}/;
files, and folders searched in their subfolders, their layout kept), at the input's own size and
mode (grey or colour, alpha kept). Each input is prepared as the run's training images were
(channels, size, resize). Files that are not usable images are skipped and listed in skipped.csv
in the output folder."""


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """aelab reconstruct and aelab denoise (``RECONSTRUCT``)."""
    from ..files import reconstruct_files
    from ..run import output_path

    if getattr(args, "seed", None) is not None and not getattr(args, "add_noise", None):
        raise AelabError("--seed is the seed of --add-noise's noise: give --add-noise F too, or leave --seed out")
    run = run_from_args(args)
    noise = 0.0
    if args.command == "denoise":
        if run.config.train.noise_factor <= 0:
            logging.getLogger("aelab").warning("%s was not trained to denoise (no --noise-factor); its outputs are "
                                               "plain reconstructions", run.path)
        noise = args.add_noise or 0.0
    out = output_path(run.path, args.command, args.out)
    written, skipped = reconstruct_files(run, args.inputs, out, noise_factor=noise, seed=getattr(args, "seed", None) or 0)
    report_skipped(skipped, out)
    print(f"{len(written)} images written to {out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """Write one row per input image (files, and folders searched in their subfolders): path, z0 ...
    z{d-1}; as CSV, Parquet (pip install 'aelab[parquet]') or .npy (a structured array with fields
    path and z). Inputs are prepared as the run's training images were; files that are not usable
    images are skipped and listed in OUT-skipped.csv.
    """
    from ..files import encode_files, write_codes
    from ..run import output_path

    if args.out is not None and Path(args.out).suffix not in (".csv", ".parquet", ".npy"):
        raise AelabError(f"--out {args.out} must end in .csv, .parquet or .npy")
    run = run_from_args(args)
    out = output_path(run.path, "encoded.csv", args.out)
    paths, codes, skipped = encode_files(run, args.inputs)
    write_codes(paths, codes, out)
    report_skipped(skipped, out.parent, f"{out.stem}-skipped.csv")
    print(f"{out}: {len(paths)} rows (path, z0..z{codes.shape[1] - 1})")
    return 0


def add_parsers(sub) -> None:
    for name, summary in (("reconstruct", "the run's reconstruction of each input image, as PNG files"),
                          ("denoise", "a denoising run's output for each (noisy) input image, as PNG files")):
        p = command(sub, name, summary, cmd_reconstruct, RECONSTRUCT.format(what=summary[0].upper() + summary[1:], name=name))
        add_inputs(p)
        p.add_argument("--out", metavar="DIR", help=f"folder for the PNG files (default: RUN/outputs/{name}/)")
        if name == "denoise":
            p.add_argument("--add-noise", type=float, metavar="F", help="first add seeded Gaussian noise times F to "
                           "the inputs (to see the run at work on clean files; default: none, the inputs are noisy)")
            p.add_argument("--seed", type=int, help="with --add-noise: the seed of the noise (default: 0)")
        add_common(p, data_dir=False)

    p = command(sub, "encode", "the latent code of each input image, as a table", cmd_encode)
    add_inputs(p)
    p.add_argument("--out", metavar="FILE", help="FILE.csv, FILE.parquet or FILE.npy (default: RUN/outputs/encoded.csv)")
    add_common(p, data_dir=False)
