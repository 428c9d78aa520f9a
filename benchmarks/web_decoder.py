"""How fast the report's "Decode any point" decodes, in headless Chromium: p50 and p95 of one decode.

    .venv/bin/python benchmarks/web_decoder.py                 # the two networks below, 200 points each
    .venv/bin/python benchmarks/web_decoder.py --runs runs/mnist-d4 runs/photos   # saved runs' decoders

The networks (seeded weights; the time does not depend on their values): the tutorial's, as the
default MNIST run has it (latent 4, 28x28 grey), and the deep network aelab chooses for a folder of
575 colour pictures at 64x64 (``aelab.defaults.from_data``: width 16, hidden 512, latent 32, 3
stages to an 8x8 map, resize-then-convolve). Each decoder is packed as the report packs it
(``aelab.explorer``: BatchNorm folded, float16 where the error stays under 1e-3) into a page that runs
``window.aelabDecode`` on 200 seeded codes after 20 warm-up decodes, each timed with
``performance.now()``; the page also says the largest difference from PyTorch's decode. Goals:
p95 under 16 ms for 28x28, under 50 ms for 64x64 colour (2 cores).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
POINTS, WARM = 200, 20


def networks(args) -> list[tuple[str, torch.nn.Module]]:
    from aelab.config import DataConfig, ModelConfig, RunConfig
    from aelab.defaults import from_data
    from aelab.models.registry import build_model
    from aelab.run import load_run

    if args.runs:
        return [(str(path), load_run(path).model) for path in args.runs]
    torch.manual_seed(0)
    tutorial = build_model(ModelConfig(arch="tutorial"), "mse")
    chosen, _ = from_data(RunConfig(data=DataConfig(dataset="/pictures")), (3, 64, 64), 575, explicit=set())
    deep = build_model(ModelConfig(**{**chosen.model.__dict__, "in_channels": 3, "image_size": 64}), "mse")
    return [("tutorial, 28x28 grey, latent 4", tutorial), ("deep default, 64x64 colour, latent 32", deep)]


def measure(name: str, model: torch.nn.Module, work: Path, chromium: str) -> dict:
    from aelab import plots
    from aelab.explorer import pack_decoder, script
    from aelab.latent import decode

    model = model.eval()
    spec = pack_decoder(model)
    codes = torch.randn(POINTS, model.config.latent_dim, generator=torch.Generator().manual_seed(1))
    expected = decode(model, codes, labels=0 if getattr(model, "conditional", False) else None).reshape(POINTS, -1)
    page = work / "timing.html"
    page.write_text(f"""<!DOCTYPE html><html><body data-result="none"><script>{script()}
const SPEC = {plots.script_json(spec)}, CODES = {json.dumps(codes.tolist())};
const decode = aelabDecoder(SPEC), times = [], outputs = [];
for (let i = 0; i < {WARM}; i++) decode(CODES[i % CODES.length], 0);
for (const code of CODES) {{ const t = performance.now(); outputs.push(decode(code, 0)); times.push(performance.now() - t); }}
times.sort(function (a, b) {{ return a - b; }});
document.body.dataset.result = JSON.stringify({{p50: times[Math.floor(0.5 * times.length)], p95: times[Math.floor(0.95 * times.length)],
  mean: times.reduce(function (a, b) {{ return a + b; }}, 0) / times.length, outputs: outputs.map(function (o) {{ return Array.from(o); }})}});
</script></body></html>""")
    profile = tempfile.mkdtemp(prefix="aelab-chromium-")
    try:
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                              "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                              "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=600).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    found = json.loads(html.unescape(re.search(r'data-result="([^"]*)"', dom).group(1)))
    error = float((torch.tensor(found.pop("outputs")) - expected).abs().max())
    return {"network": name, "p50_ms": round(found["p50"], 3), "p95_ms": round(found["p95"], 3),
            "mean_ms": round(found["mean"], 3), "max_pixel_error": error, "weights": spec["dtype"],
            "weights_base64_bytes": len(spec["weights"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, help="saved runs whose decoders to time instead")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        sys.exit("Chromium is needed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(name, model, Path(folder), chromium) for name, model in networks(args)]
    for row in rows:
        print(f"{row['network']:42} p50 {row['p50_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms  (weights {row['weights']}, "
              f"{row['weights_base64_bytes'] / 1e6:.2f} MB in the page; largest pixel error {row['max_pixel_error']:.1e})")
    out = HERE / "out" / "web-decoder.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
