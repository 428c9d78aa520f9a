"""Decode any point, live, in the browser: the run's decoder as data for plain JavaScript.

``decoder_spec`` turns a run's decoder (the tutorial's, or the deep one with resize-then-convolve
upsampling and residual blocks; any family, channel count and size) into a list of layers (linear,
ReLU, reshape, convolution, transposed convolution, nearest resize, residual block) with every
BatchNorm folded into the convolution before it, and one flat array of weights: float16 where the
decoded pixels stay within ``FLOAT16_ERROR`` of the model's, else float32. ``templates/explorer.js``
runs the layers (``aelabDecoder``) and draws the explorer: a pad over the report's latent plane with
the test codes behind it, a slider per latent dimension (or per principal direction), a label picker
for a conditional model, arrow keys. ``run_layers`` runs the same layers in PyTorch: the reference
the page is tested against. ``explorer_data`` gathers what the page needs; ``write_page`` writes the
explorer alone as one HTML file (``aelab export --format web``).
"""

from __future__ import annotations

import base64
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import AelabError

FLOAT16_ERROR = 1e-3  # largest pixel difference (pixels in [0, 1]) for which the weights travel as float16
MAX_SLIDERS = 32  # one slider per latent dimension up to this; above, one per principal direction of the codes
MAX_POINTS = 1000  # test codes drawn behind the pad (a sample stratified by label)


def _layers_of(modules, weights: list[np.ndarray]) -> list[dict[str, Any]]:
    """The layers of ``modules`` (in order), BatchNorm folded into the convolution before it;
    their parameters appended to ``weights`` (float64 arrays), referred to by offset."""
    from .models.nets import Residual

    layers: list[dict[str, Any]] = []

    def put(array: np.ndarray) -> int:
        start = sum(w.size for w in weights)
        weights.append(np.asarray(array, dtype=np.float64).ravel())
        return start

    def walk(module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for child in module:
                walk(child)
        elif isinstance(module, nn.Linear):
            layers.append({"op": "linear", "in": module.in_features, "out": module.out_features,
                           "w": module.weight.detach().double().numpy(), "b": _bias(module, module.out_features)})
        elif isinstance(module, nn.ReLU):
            layers.append({"op": "relu"})
        elif isinstance(module, nn.Unflatten):
            layers.append({"op": "reshape", "shape": [int(s) for s in module.unflattened_size]})
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            transposed = isinstance(module, nn.ConvTranspose2d)
            if module.groups != 1 or module.dilation != (1, 1) or module.kernel_size[0] != module.kernel_size[1]:
                raise AelabError(f"the web explorer runs square, ungrouped convolutions only, not {module}")
            layer = {"op": "convT" if transposed else "conv", "cin": module.in_channels, "cout": module.out_channels,
                     "k": module.kernel_size[0], "stride": list(module.stride), "pad": list(module.padding),
                     "w": module.weight.detach().double().numpy(), "b": _bias(module, module.out_channels)}
            if transposed:
                layer["outpad"] = list(module.output_padding)
            layers.append(layer)
        elif isinstance(module, nn.BatchNorm2d):
            before = layers[-1] if layers else None
            if before is None or before["op"] not in ("conv", "convT"):
                raise AelabError("the web explorer folds BatchNorm into the convolution before it; this decoder has none")
            scale = (module.weight.detach().double() / torch.sqrt(module.running_var.double() + module.eps)).numpy()
            shift = module.bias.detach().double().numpy() - module.running_mean.double().numpy() * scale
            axis = 1 if before["op"] == "convT" else 0  # (a transposed convolution's weight is [C_in, C_out, k, k])
            shape = [1, 1, 1, 1]
            shape[axis] = -1
            before["w"] = before["w"] * scale.reshape(shape)
            before["b"] = before["b"] * scale + shift
        elif isinstance(module, nn.Upsample):
            if module.mode != "nearest" or module.size is None:
                raise AelabError(f"the web explorer resizes to a given size by nearest neighbour only, not {module}")
            size = module.size if isinstance(module.size, (tuple, list)) else (module.size, module.size)
            layers.append({"op": "resize", "size": [int(s) for s in size]})
        elif isinstance(module, Residual):
            layers.append({"op": "residual", "body": module.body})  # (its layers once the arrays before it are in)
        else:
            raise AelabError(f"the web explorer cannot run the decoder's layer {type(module).__name__}")

    walk(modules)
    for layer in layers:  # the arrays into the flat weights, in order
        if layer["op"] == "residual":
            layer["body"] = _layers_of(layer["body"], weights)
        for key in ("w", "b"):
            if key in layer:
                layer[key] = put(layer[key])
    return layers


def _bias(module: nn.Module, size: int) -> np.ndarray:
    return module.bias.detach().double().numpy() if module.bias is not None else np.zeros(size)


def decoder_spec(model: nn.Module) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The layers of ``model``'s decoder (in eval mode: BatchNorm folded) and its weights, one
    flat float32 array; the last layer's output goes through a sigmoid (the pixel means)."""
    weights: list[np.ndarray] = []
    decoder = model.decoder
    layers = _layers_of(nn.Sequential(decoder.decoder_lin, decoder.unflatten, decoder.decoder_conv), weights)
    return layers, np.concatenate(weights).astype(np.float32)


def run_layers(layers: list[dict[str, Any]], weights: np.ndarray, inputs: torch.Tensor) -> torch.Tensor:
    """``layers`` run in PyTorch on ``inputs`` [B, n] (the code, and a conditional model's one-hot
    label): images [B, C, H, W] in [0, 1], as the page computes them."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))

    def take(start: int, shape) -> torch.Tensor:
        return w[start: start + math.prod(shape)].view(*shape)

    def run(x: torch.Tensor, found: list[dict[str, Any]]) -> torch.Tensor:
        for layer in found:
            op = layer["op"]
            if op == "linear":
                x = F.linear(x, take(layer["w"], (layer["out"], layer["in"])), take(layer["b"], (layer["out"],)))
            elif op == "relu":
                x = F.relu(x)
            elif op == "reshape":
                x = x.reshape(len(x), *layer["shape"])
            elif op == "conv":
                x = F.conv2d(x, take(layer["w"], (layer["cout"], layer["cin"], layer["k"], layer["k"])),
                             take(layer["b"], (layer["cout"],)), layer["stride"], layer["pad"])
            elif op == "convT":
                x = F.conv_transpose2d(x, take(layer["w"], (layer["cin"], layer["cout"], layer["k"], layer["k"])),
                                       take(layer["b"], (layer["cout"],)), layer["stride"], layer["pad"], layer["outpad"])
            elif op == "resize":
                x = F.interpolate(x, size=tuple(layer["size"]), mode="nearest")
            elif op == "residual":
                x = F.relu(x + run(x, layer["body"]))
            else:
                raise AelabError(f"unknown layer {op!r}")
        return x

    with torch.no_grad():
        return torch.sigmoid(run(inputs.float(), layers))


def decoder_inputs(model: nn.Module, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """What the decoder's first layer sees: the codes, and a conditional model's one-hot labels."""
    if not getattr(model, "conditional", False):
        return codes.float()
    labels = torch.zeros(len(codes), dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
    return torch.cat([codes.float(), F.one_hot(labels, model.config.n_classes).float()], 1)


def _arrays(layers: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """(start, length, "w" or "b") of every array of ``layers`` in the flat weights."""
    found = []
    for layer in layers:
        if layer["op"] == "residual":
            found += _arrays(layer["body"])
        if "w" in layer:
            shape = ((layer["out"], layer["in"]) if layer["op"] == "linear" else (layer["cout"], layer["cin"], layer["k"], layer["k"]))
            found += [(layer["w"], math.prod(shape), "w"), (layer["b"], shape[0], "b")]
    return found


def _with_float32(weights: np.ndarray, kept: list[tuple[int, int]]) -> np.ndarray:
    """``weights`` rounded to float16, but for the ``kept`` (start, length) segments."""
    values = weights.astype(np.float16).astype(np.float32)
    for start, length in kept:
        values[start: start + length] = weights[start: start + length]
    return values


def pack_decoder(model: nn.Module, seed: int = 0, codes: np.ndarray | None = None) -> dict[str, Any]:
    """The decoder for the page: its layers, its weights (base64) and how they travel: float16 where
    the pixels stay within half of ``FLOAT16_ERROR`` of PyTorch's for the ``codes`` the page can reach
    (the test codes, the pad's corners, the sliders' ends; at most 256 of them, seeded) and 64 seeded
    normal codes; else "mixed": the biases and the weights that move the pixels most kept in float32
    (``float32``, ``segments``), added from the most sensitive until the pixels are within it; else
    float32 (also where mixed would be larger). Its input and image sizes, and the largest pixel difference of the weights chosen. The
    model is copied to the CPU in float32 first (a run trained on a GPU packs the same)."""
    import copy

    from .latent import conditions, decode

    model = copy.deepcopy(model).cpu().float().eval()
    layers, weights = decoder_spec(model)
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    checked = torch.randn(64, config.latent_dim, generator=generator)
    if codes is not None:
        reachable = torch.as_tensor(np.asarray(codes, dtype=np.float32))
        if len(reachable) > 256:
            reachable = reachable[torch.randperm(len(reachable), generator=generator)[:256]]
        checked = torch.cat([checked, reachable])
    labels = conditions(model, len(checked), None)  # (a conditional model: the classes in turn)
    expected = decode(model, checked, labels=labels)
    inputs = decoder_inputs(model, checked, labels)
    limit = FLOAT16_ERROR / 2  # (half the promise: a margin for the points between those checked)

    def error_of(values: np.ndarray) -> float:
        found = float((run_layers(layers, values, inputs) - expected).abs().max())
        return found if math.isfinite(found) else math.inf

    finite = bool(np.isfinite(weights.astype(np.float16)).all())
    packed: dict[str, Any] = {"dtype": "float16", "error": error_of(_with_float32(weights, [])) if finite else math.inf}
    if packed["error"] > limit:
        arrays = _arrays(layers)
        kept = [(start, length) for start, length, kind in arrays if kind == "b"]
        weights_only = [(start, length) for start, length, kind in arrays if kind == "w"]
        alone = {part: error_of(_with_float32(weights, [other for other in weights_only if other != part] + kept))
                 for part in weights_only}  # each weight array alone in float16
        half = []
        for part in sorted(weights_only, key=lambda part: alone[part]):  # the least sensitive first
            trial = error_of(_with_float32(weights, [other for other in weights_only if other not in half + [part]] + kept))
            if trial <= limit:
                half.append(part)
        kept += [part for part in weights_only if part not in half]
        if half and (weights.size * 2 + sum(n for _, n in kept) * 4) < weights.size * 4:  # (smaller than float32)
            packed = {"dtype": "mixed", "error": error_of(_with_float32(weights, kept)),
                      "segments": sorted(kept),
                      "float32": base64.b64encode(np.concatenate([weights[s: s + n] for s, n in sorted(kept)])
                                                  .astype(np.float32).tobytes()).decode("ascii")}
        else:
            packed = {"dtype": "float32", "error": error_of(weights)}
    data = weights if packed["dtype"] == "float32" else weights.astype(np.float16)
    return {"layers": layers, "weights": base64.b64encode(data.tobytes()).decode("ascii"),
            "inputs": int(inputs.shape[1]), "latent_dim": config.latent_dim,
            "image": [config.in_channels, config.image_size, config.image_width or config.image_size],
            "classes": config.n_classes if getattr(model, "conditional", False) else 0, **packed}


def explorer_data(run, codes: np.ndarray, labels: np.ndarray, class_names: list[str], plane,
                  train_codes: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """Everything the explorer needs: the decoder (``pack_decoder``), up to ``MAX_POINTS`` test
    ``codes`` [N, d] with their ``labels`` (a sample stratified by label), the pad's plane
    (``latent.LatentPlane``, the report grid's), and the sliders: one per latent dimension (in units
    of the prior's standard deviation for a variational model), or for codes of more than
    ``MAX_SLIDERS`` numbers one per principal direction of the codes."""
    from .latent import stratified_subset
    from .likelihood import is_variational

    model = run.model
    reference = train_codes if train_codes is not None else codes
    shown = stratified_subset(np.asarray(labels), MAX_POINTS, seed=seed)
    d = codes.shape[1]
    variational = is_variational(model)
    if d <= MAX_SLIDERS:
        basis = np.eye(d, dtype=np.float32)
        names = [f"z{i}" for i in range(d)]
    else:
        centered = reference - reference.mean(axis=0)
        basis = np.linalg.svd(centered, full_matrices=False)[2][:MAX_SLIDERS].astype(np.float32)
        names = [f"PC{i + 1}" for i in range(len(basis))]  # (fewer codes than sliders: as many directions as they span)
    # the sliders measure the code from the prior's mean (0) for a variational model, in its standard deviations
    # along any unit direction (the prior is N(0, I)); else from 0 along a dimension, from the mean code along a PC
    centre = reference.mean(axis=0) if d > MAX_SLIDERS and not variational else np.zeros(d, dtype=np.float32)
    along = (reference - centre) @ basis.T
    if variational:  # from -3 to 3 standard deviations (wider where codes lie)
        low = np.minimum(-3.0, np.percentile(along, 0.5, axis=0))
        high = np.maximum(3.0, np.percentile(along, 99.5, axis=0))
    else:
        low, high = np.percentile(along, 0.5, axis=0), np.percentile(along, 99.5, axis=0)
        margin = 0.15 * np.maximum(high - low, 1e-3)
        low, high = low - margin, high + margin
    margin_a = 0.15 * (plane.range_a[1] - plane.range_a[0])
    margin_b = 0.15 * (plane.range_b[1] - plane.range_b[0])
    corners = [plane.origin + a * plane.axis_a + b * plane.axis_b
               for a in (plane.range_a[0] - margin_a, plane.range_a[1] + margin_a)
               for b in (plane.range_b[0] - margin_b, plane.range_b[1] + margin_b)]
    ends = [centre + value * basis[k] for k in range(len(basis)) for value in (low[k], high[k])]
    reachable = np.concatenate([codes[shown], np.asarray(corners, np.float32), np.asarray(ends, np.float32)])
    return {
        "decoder": pack_decoder(model, seed, reachable),
        "codes": base64.b64encode(np.ascontiguousarray(codes[shown], dtype=np.float32).tobytes()).decode("ascii"),
        "labels": [int(v) for v in np.asarray(labels)[shown]], "class_names": [str(c) for c in class_names],
        "plane": {"origin": _floats(plane.origin), "a": _floats(plane.axis_a), "b": _floats(plane.axis_b),
                  "range_a": [plane.range_a[0] - margin_a, plane.range_a[1] + margin_a],
                  "range_b": [plane.range_b[0] - margin_b, plane.range_b[1] + margin_b],
                  "names": list(plane.names), "words": plane.description},
        "sliders": {"basis": [_floats(row) for row in basis], "names": names, "low": _floats(low),
                    "high": _floats(high), "centre": _floats(centre) if d > MAX_SLIDERS else None,
                    "unit": "σ" if variational else ""},
        "start": _floats(codes[shown[0]]), "variational": bool(variational),  # (a real image's code to start from)
    }


def _floats(values) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values).ravel()]


def script() -> str:
    """The explorer's JavaScript (``aelabDecoder``, ``aelabExplorer``), a package data file."""
    return resources.files("aelab").joinpath("templates/explorer.js").read_text(encoding="utf-8")


def run_explorer_data(run, data, seed: int = 0) -> dict[str, Any]:
    """``explorer_data`` for a saved run and its data (a DataConfig, ``data.sets.data_for_run``): its
    training codes give the plane, its test codes the points."""
    from .data.sets import close_sets, load_run_split
    from .latent import encode, latent_plane

    train, test = load_run_split(run.config, data, "train"), load_run_split(run.config, data, "test")
    try:
        train_codes = encode(run.model, train.images, labels=train.labels)
        codes = encode(run.model, test.images, labels=test.labels)
        if codes.shape[1] < 2:
            raise AelabError("the web explorer needs at least 2 latent dimensions; this run has 1: train with "
                             "--latent-dim 2 or more")
        return explorer_data(run, codes, test.labels, test.class_names, latent_plane(train_codes), train_codes, seed)
    finally:
        close_sets(train, test)


def write_page(run, out: Path, data: dict[str, Any]) -> Path:
    """The explorer alone (decoder and pad) as one self-contained HTML file."""
    import markupsafe

    from .fsutil import atomic_write_text
    from .pages import template

    page = template("explorer_page.html.j2").render(title=f"aelab run {run.path.name}: decode any point",
                                                    explorer=data, explorer_js=markupsafe.Markup(script()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
