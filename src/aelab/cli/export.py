"""``aelab export``: a run's model as an ONNX or TorchScript file for other programs, or its decoder
with the latent explorer as one web page."""

from __future__ import annotations

import argparse

from ..errors import AelabError
from .common import add_common, add_device, add_run_folder, command, data_config, run_from_args


def cmd_export(args: argparse.Namespace) -> int:
    """Export the run's autoencoder, encoder or decoder from plain PyTorch modules, in eval mode, with
    a dynamic batch axis. Images in and out are float32 [N, C, H, W] in [0, 1] (pixel / 255); codes
    are [N, latent size]. The file's metadata holds the shapes, the value range, the latent size,
    the run's settings and the aelab version (ONNX: metadata_props; TorchScript: the extra file
    aelab.json). ONNX needs pip install 'aelab[onnx]'; run it with onnxruntime. (PyTorch deprecates
    TorchScript; it still loads with torch.jit.load.)

    --format web writes the report's "Decode any point" explorer alone, as one HTML file that works
    offline from a file:// URL: the run's decoder, in plain JavaScript, and a pad over the latent
    plane with the test codes (read from the run's data, or --data) behind it.
    """
    from ..exporting import export

    if args.format == "web" and args.part not in (None, "decoder"):
        raise AelabError(f"--format web exports the decoder (with its explorer), not the {args.part}; leave --part out")
    if args.format != "web" and (args.data is not None or args.data_dir is not None):
        raise AelabError("--data and --data-dir are for --format web (its explorer shows the test codes); leave them out")
    run = run_from_args(args)
    if args.format == "web":
        from ..explorer import run_explorer_data, write_page
        from ..run import output_path

        print(write_page(run, output_path(run.path, "explorer.html", args.out),
                         run_explorer_data(run, data_config(run.config, args), run.config.train.seed)))
        return 0
    print(export(run, args.out, args.format, args.part or "autoencoder"))
    return 0


def add_parsers(sub) -> None:
    p = command(sub, "export", "the model as an ONNX or TorchScript file for other programs, or a web page that "
                "decodes any point", cmd_export)
    add_run_folder(p)
    p.add_argument("--format", choices=("onnx", "torchscript", "web"), default="onnx",
                   help="web: the decoder and its explorer, one HTML page (default: onnx)")
    p.add_argument("--part", choices=("autoencoder", "encoder", "decoder"),
                   help="autoencoder: images -> reconstructions; encoder: images -> codes; decoder: codes -> images "
                        "(default: autoencoder; web: the decoder)")
    p.add_argument("--out", metavar="FILE", help="default: RUN/outputs/PART.onnx, RUN/outputs/PART.pt or "
                   "RUN/outputs/explorer.html")
    p.add_argument("--data", metavar="SOURCE", help="web: the run's images from here (another copy of its data; "
                   "default: the run's own source)")
    add_device(p)
    add_common(p)
