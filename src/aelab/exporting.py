"""A trained run as a file another program runs: ONNX (onnxruntime, any language) or TorchScript.

The export is made from plain PyTorch modules (``nn.ConvTranspose2d``, not aelab's CPU fast path),
in eval mode, with a dynamic batch axis. Parts: ``autoencoder`` (images -> reconstructions),
``encoder`` (images -> codes), ``decoder`` (codes -> images). Images are float32 [N, C, H, W] with
values in [0, 1] (pixel / 255); reconstructions are in [0, 1] too (the sigmoid is inside). The
file's metadata says so: input and output names and shapes, value range, latent size, the run's
settings and the aelab version (ONNX: ``metadata_props``; TorchScript: the extra file
``aelab.json``, read with ``torch.jit.load(path, _extra_files={"aelab.json": ""})``).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import AelabError
from .fsutil import atomic_path

FORMATS = ("onnx", "torchscript")
PARTS = ("autoencoder", "encoder", "decoder")


def plain_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode on the CPU whose layers are PyTorch's own (same weights)."""
    from .ops import ConvTranspose2d

    plain = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    for module in list(plain.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ConvTranspose2d):
                replacement = nn.ConvTranspose2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                                 child.padding, child.output_padding, child.groups,
                                                 child.bias is not None, child.dilation, child.padding_mode)
                replacement.load_state_dict(child.state_dict())
                setattr(module, name, replacement.eval())
    return plain


def describe(run, part: str) -> dict:
    """The metadata written into an exported file."""
    from . import __version__

    model = run.config.model
    image = [model.in_channels, model.image_size, model.image_width or model.image_size]
    code = [model.latent_dim]
    shapes = {"autoencoder": (image, image), "encoder": (image, code), "decoder": (code, image)}[part]
    return {
        "aelab_version": __version__, "part": part,
        "input": {"name": "codes" if part == "decoder" else "images", "shape": ["N", *shapes[0]],
                  "dtype": "float32", "range": None if part == "decoder" else [0.0, 1.0]},
        "output": {"name": "codes" if part == "encoder" else "reconstructions", "shape": ["N", *shapes[1]],
                   "dtype": "float32", "range": None if part == "encoder" else [0.0, 1.0]},
        "latent_dim": model.latent_dim, "preprocessing": "pixel / 255, images of the run's channels and size",
        "run": str(run.path.resolve()), "config": run.config.to_dict(),
        **_outputs(run.model, part, code),
        **_inputs(run.model, part, run.config.model.n_classes),
    }


def _inputs(model, part: str, classes: int) -> dict:
    """A part with a second input (a conditional model's labels, one-hot floats [N, classes]): every
    input under "inputs" (the first under "input")."""
    names = getattr(model, "part_inputs", {}).get(part)
    if not names:
        return {}
    return {"inputs": [None, {"name": names[1], "shape": ["N", classes], "dtype": "float32", "range": [0.0, 1.0],
                              "meaning": "the label, one-hot"}]}


def _outputs(model, part: str, code: list[int]) -> dict:
    """A part with several outputs (a variational encoder: the means and the log-variances, in that
    order; ``model.part_outputs``): all of them under "outputs" (and the first under "output")."""
    names = getattr(model, "part_outputs", {}).get(part)
    if not names:
        return {}
    outputs = [{"name": name, "shape": ["N", *code], "dtype": "float32", "range": None} for name in names]
    return {"output": outputs[0], "outputs": outputs}


SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


def export(run, out: str | Path | None = None, format: str = "onnx", part: str = "autoencoder") -> Path:
    """Write ``part`` of the run's model to ``out`` as ONNX or TorchScript (default: outputs/PART.onnx
    or outputs/PART.pt in the run folder); return the path."""
    from .run import output_path

    if format not in FORMATS:
        raise AelabError(f"unknown `format` {format!r}; choose {' or '.join(FORMATS)}")
    if part not in PARTS:
        raise AelabError(f"unknown `part` {part!r}; choose one of {', '.join(PARTS)}")
    out = output_path(run.path, part + SUFFIXES[format], out)
    meta = describe(run, part)
    if "inputs" in meta:
        meta["inputs"][0] = meta["input"]
    module = plain_model(run.model).part(part).eval()  # (the model says what each part is)
    generator = torch.Generator().manual_seed(0)  # (not the caller's RNG)
    examples = tuple(torch.rand(2, *spec["shape"][1:], generator=generator) for spec in meta.get("inputs", [meta["input"]]))
    if format == "torchscript":  # (PyTorch deprecates TorchScript in favour of torch.export; it still runs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(module, examples)
            with atomic_path(out) as tmp:
                torch.jit.save(traced, str(tmp), _extra_files={"aelab.json": json.dumps(meta)})
        return out
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise AelabError("ONNX export needs onnx and onnxscript: pip install 'aelab[onnx]'") from None
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = [output["name"] for output in meta.get("outputs", [meta["output"]])]
        inputs = [spec["name"] for spec in meta.get("inputs", [meta["input"]])]
        program = torch.onnx.export(module, examples, dynamo=True, input_names=inputs,
                                    output_names=names, dynamic_shapes=tuple({0: batch} for _ in inputs),
                                    external_data=False, verbose=False)
        proto = program.model_proto
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        proto.producer_name, proto.producer_version = "aelab", meta["aelab_version"]
        onnx.save(proto, str(tmp))
    return out
