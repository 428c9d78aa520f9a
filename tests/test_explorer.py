"""Decode any point: the run's decoder as layers for the page (aelab.explorer), the same pixels as
PyTorch's in headless Chromium, the pad, keys and the `aelab export --format web` page."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
import torch
from conftest import chromium, need_chromium

from aelab import AelabError
from aelab.cli import main
from aelab.config import ModelConfig
from aelab.explorer import FLOAT16_ERROR, decoder_inputs, decoder_spec, pack_decoder, run_layers
from aelab.latent import decode
from aelab.models.registry import build_model
from aelab.run import load_run

NETWORKS = {
    "tutorial": ModelConfig(arch="tutorial"),
    "deep colour non-square residual": ModelConfig(arch="deep", in_channels=3, image_size=24, image_width=40,
                                                   residual=True, width=8, hidden=32, latent_dim=6),
    "vae": ModelConfig(kind="vae", arch="tutorial", latent_dim=3),
    "cvae deep": ModelConfig(kind="cvae", arch="deep", n_classes=4, latent_dim=5, image_size=32, width=4, hidden=16),
}


def trained_like(config: ModelConfig) -> torch.nn.Module:
    """A model of ``config`` whose BatchNorm layers hold statistics and affine values of their own."""
    torch.manual_seed(0)
    model = build_model(config, "mse")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("name", NETWORKS)
def test_the_pages_layers_are_the_decoder_with_batchnorm_folded(name):
    model = trained_like(NETWORKS[name])
    codes = torch.randn(7, model.config.latent_dim, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(7) % 4 if model.conditional else None
    layers, weights = decoder_spec(model)
    assert not any(layer["op"] == "batchnorm" for layer in layers)
    found = run_layers(layers, weights, decoder_inputs(model, codes, labels))
    torch.testing.assert_close(found, decode(model, codes, labels=labels), atol=1e-5, rtol=0)
    packed = pack_decoder(model)
    assert packed["dtype"] == "float16" and packed["error"] <= FLOAT16_ERROR  # half the bytes, within 1e-3 a pixel


def test_weights_beyond_float16_travel_as_float32(monkeypatch):
    from aelab import explorer

    model = trained_like(NETWORKS["tutorial"])
    monkeypatch.setattr(explorer, "FLOAT16_ERROR", 0.0)  # no error allowed: float32
    packed = pack_decoder(model)
    assert packed["dtype"] == "float32" and packed["error"] < 1e-5
    monkeypatch.undo()
    with torch.no_grad():
        model.decoder.decoder_lin[0].weight.mul_(1e5)  # beyond float16's range (65504)
    assert pack_decoder(model)["dtype"] == "float32"


def test_weights_too_sensitive_for_float16_keep_those_arrays_in_float32(monkeypatch):
    import base64

    from aelab import explorer

    model = trained_like(NETWORKS["deep colour non-square residual"])
    whole = pack_decoder(model)["error"]  # all float16
    monkeypatch.setattr(explorer, "FLOAT16_ERROR", whole)  # half of that: some arrays must stay float32
    packed = pack_decoder(model)
    assert packed["dtype"] == "mixed" and packed["error"] <= whole / 2
    values = np.frombuffer(base64.b64decode(packed["weights"]), np.float16).astype(np.float32).copy()
    kept, at = np.frombuffer(base64.b64decode(packed["float32"]), np.float32), 0
    for start, length in packed["segments"]:  # as the page does
        values[start: start + length] = kept[at: at + length]
        at += length
    codes = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    found = run_layers(packed["layers"], values, decoder_inputs(model, codes))
    assert float((found - decode(model, codes)).abs().max()) <= whole / 2


def test_a_layer_the_page_cannot_run_is_a_clear_error():
    model = trained_like(NETWORKS["tutorial"])
    model.decoder.decoder_conv.append(torch.nn.Tanh())
    with pytest.raises(AelabError, match="cannot run the decoder's layer Tanh"):
        decoder_spec(model)


def picture_file(path, n=240, channels=1, height=28, width=28):
    """An .npz of discs of three brightness classes, labelled."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    labels = rng.integers(0, 3, n)
    images = np.zeros((n, height, width, channels), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, rng.uniform(3, height / 3)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        for c in range(channels):
            images[i, disc, c] = int(80 + 60 * labels[i] + rng.integers(0, 40))
    np.savez(path, images=images[..., 0] if channels == 1 else images, labels=labels)
    return path


def test_export_web_writes_the_explorer_alone(tmp_path, capsys):
    source = picture_file(tmp_path / "pictures.npz")
    run = tmp_path / "run"
    assert main(["train", "--data", str(source), "--data-dir", str(tmp_path / "cache"), "--epochs", "1",
                 "--out", str(run), "--no-report", "--quiet"]) == 0
    assert main(["export", str(run), "--format", "web", "--data-dir", str(tmp_path / "cache")]) == 0
    page = run / "outputs" / "explorer.html"
    assert capsys.readouterr().out.strip() == str(page)
    text = page.read_text()
    assert "aelabDecoder" in text and "Decode any point" in text and "https://" not in text and "<script src" not in text
    assert main(["export", str(run), "--format", "web", "--part", "encoder"]) == 2
    assert "exports the decoder" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx", "--data", str(source)]) == 2
    assert "are for --format web" in capsys.readouterr().err


def test_a_decoder_beyond_the_page_budget_gets_a_page_of_its_own(tmp_path, monkeypatch):
    from aelab import report

    source = picture_file(tmp_path / "pictures.npz", n=120)
    run = tmp_path / "run"
    assert main(["train", "--data", str(source), "--data-dir", str(tmp_path / "cache"), "--epochs", "1",
                 "--out", str(run), "--no-report", "--quiet", "--arch", "tutorial"]) == 0
    page = report.write_report(run, data_dir=str(tmp_path / "cache")).read_text()
    assert "AELAB_EXPLORER" in page and len(page.encode()) < report.PAGE_BYTES
    monkeypatch.setattr(report, "PAGE_BYTES", len(page.encode()) - 1)
    page = report.write_report(run, data_dir=str(tmp_path / "cache")).read_text()
    assert "AELAB_EXPLORER" not in page and f"aelab export --format web {run}" in page


PROBE = """<script>(function () {
  const result = {};
  try {
    const codes = %s;
    result.pixels = codes.map(function (code) { return Array.from(window.aelabDecode(code, 0)); });
    const root = document.getElementById("explorer"), pad = root.querySelector(".pad"), data = AELAB_EXPLORER;
    const d = data.decoder.latent_dim, plane = data.plane, raw = atob(data.codes), bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    const all = new Float32Array(bytes.buffer), n = data.labels.length, box = pad.getBoundingClientRect();
    const place = function (j) {
      let u = 0, v = 0;
      for (let i = 0; i < d; i++) { const c = all[j * d + i] - plane.origin[i]; u += c * plane.a[i]; v += c * plane.b[i]; }
      return [(u - plane.range_a[0]) / (plane.range_a[1] - plane.range_a[0]) * box.width,
              (1 - (v - plane.range_b[0]) / (plane.range_b[1] - plane.range_b[0])) * box.height];
    };
    let alone = -1;  /* a test image's point with no other within 12 pixels */
    for (let j = 0; j < n && alone < 0; j++) {
      const [x, y] = place(j); let near = false;
      for (let k = 0; k < n; k++) { if (k !== j) { const [a, b] = place(k); if ((a - x) ** 2 + (b - y) ** 2 < 144) near = true; } }
      if (!near && x > 0 && y > 0 && x < box.width && y < box.height) alone = j;
    }
    if (alone >= 0) {
      const [x, y] = place(alone);
      pad.dispatchEvent(new PointerEvent("pointerdown", {clientX: box.left + x, clientY: box.top + y, bubbles: true}));
      window.dispatchEvent(new PointerEvent("pointerup", {bubbles: true}));
      result.clicked = Array.from(all.slice(alone * d, alone * d + d)); result.loaded = window.aelabExplorerCode();
    }
    try { window.aelabDecode([1]); result.short = "accepted"; } catch (e) { result.short = e.name + ": " + e.message; }
    result.before = window.aelabExplorerCode();
    pad.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight", bubbles: true}));
    result.after = window.aelabExplorerCode();
    result.plane = plane; result.dtype = data.decoder.dtype;
    result.page_codes = Array.from(all.slice(0, Math.min(n, 20) * d)); result.latent_dim = d;
    result.page_pixels = [];
    for (let j = 0; j < Math.min(n, 20); j++) result.page_pixels.push(Array.from(window.aelabDecode(all.slice(j * d, j * d + d), 0)));
  } catch (e) { result.error = String(e && e.stack || e); }
  document.body.setAttribute("data-probe", JSON.stringify(result));
})();</script>"""


def probe(page, codes: torch.Tensor, tmp_path) -> dict:
    """What ``page`` computes for ``codes`` (window.aelabDecode), and what a click and a key do."""
    probed = tmp_path / f"probe-{page.stem}.html"
    probed.write_text(page.read_text().replace("</body>", PROBE % json.dumps(codes.tolist()) + "</body>"))
    dom = chromium("--virtual-time-budget=30000", "--window-size=1280,2400", "--dump-dom", probed.resolve().as_uri()).stdout
    found = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))
    assert "error" not in found, found.get("error")
    return found


def check_page(page, run_dir, tmp_path, dtype: str = "float16") -> None:
    """20 seeded codes and 20 of the page's own test codes decode in the page as in PyTorch (within
    1e-3 with float16 or mixed weights, 1e-5 with float32); a click loads a test image's code; ArrowRight
    moves along the pad; a code of the wrong length is refused."""
    run = load_run(run_dir)
    codes = torch.randn(20, run.config.model.latent_dim, generator=torch.Generator().manual_seed(1))
    found = probe(page, codes, tmp_path)
    assert found["dtype"] == dtype or (dtype == "float16" and found["dtype"] == "mixed")
    tolerance = 1e-5 if found["dtype"] == "float32" else 1e-3
    page_codes = torch.tensor(found["page_codes"]).reshape(-1, found["latent_dim"])
    for asked, pixels in ((codes, found["pixels"]), (page_codes, found["page_pixels"])):
        labels = torch.zeros(len(asked), dtype=torch.long) if run.model.conditional else None
        expected = decode(run.model, asked, labels=labels).reshape(len(asked), -1)  # channels x height x width
        assert torch.tensor(pixels).shape == expected.shape
        assert float((torch.tensor(pixels) - expected).abs().max()) <= tolerance
    assert found["short"].startswith("RangeError: aelabDecode: a code is")
    assert "clicked" in found  # clicking a test image's point loads its code
    np.testing.assert_allclose(found["loaded"], found["clicked"], atol=1e-6)
    moved = np.subtract(found["after"], found["before"])  # ArrowRight: 1/50 of the pad along its first axis
    plane = found["plane"]
    np.testing.assert_allclose(moved, (plane["range_a"][1] - plane["range_a"][0]) / 50 * np.array(plane["a"]), atol=1e-4)


@pytest.mark.browser
def test_the_report_decodes_as_pytorch_does(fake_mnist, tmp_path):
    need_chromium()
    run = tmp_path / "mnist"
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(run), "--quiet"]) == 0
    page = run / "report.html"
    assert "Decode any point" in page.read_text()
    check_page(page, run, tmp_path)


@pytest.mark.browser
@pytest.mark.parametrize("kind", ["colour non-square", "vae", "cvae"])
def test_the_exported_page_decodes_as_pytorch_does(kind, tmp_path, monkeypatch):
    need_chromium()
    if kind == "colour non-square":  # (25 x 37: 7 x 10 maps resized to 13 x 19, not doubled)
        source, options = picture_file(tmp_path / "p.npz", channels=3, height=25, width=37), ["--residual"]
    else:
        source, options = picture_file(tmp_path / "p.npz"), ["--model", kind, "--arch", "tutorial", "--latent-dim", "3"]
    run = tmp_path / "run"
    assert main(["train", "--data", str(source), "--data-dir", str(tmp_path / "cache"), "--epochs", "1",
                 "--out", str(run), "--no-report", "--quiet", *options]) == 0
    if kind == "vae":  # the float32 path: no error allowed of float16
        from aelab import explorer

        monkeypatch.setattr(explorer, "FLOAT16_ERROR", 0.0)
    assert main(["export", str(run), "--format", "web", "--data-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    check_page(run / "outputs" / "explorer.html", run, tmp_path, "float32" if kind == "vae" else "float16")
