"""``aelab export``: a run's model as an ONNX or TorchScript file, for other programs."""

from __future__ import annotations

import argparse

from .common import add_common, add_device, add_run_folder, command, run_from_args


def cmd_export(args: argparse.Namespace) -> int:
    """Export the run's autoencoder, encoder or decoder from plain PyTorch modules, in eval mode, with
    a dynamic batch axis. Images in and out are float32 [N, C, H, W] in [0, 1] (pixel / 255); codes
    are [N, latent size]. The file's metadata holds the shapes, the value range, the latent size,
    the run's settings and the aelab version (ONNX: metadata_props; TorchScript: the extra file
    aelab.json). ONNX needs pip install 'aelab[onnx]'; run it with onnxruntime. (PyTorch deprecates
    TorchScript; it still loads with torch.jit.load.)
    """
    from ..exporting import export

    print(export(run_from_args(args), args.out, args.format, args.part))
    return 0


def add_parsers(sub) -> None:
    p = command(sub, "export", "the model as an ONNX or TorchScript file, for other programs", cmd_export)
    add_run_folder(p)
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    p.add_argument("--part", choices=("autoencoder", "encoder", "decoder"), default="autoencoder",
                   help="autoencoder: images -> reconstructions; encoder: images -> codes; decoder: codes -> images "
                        "(default: autoencoder)")
    p.add_argument("--out", metavar="FILE", help="default: RUN/outputs/PART.onnx or RUN/outputs/PART.pt")
    add_device(p)
    add_common(p, data_dir=False)
