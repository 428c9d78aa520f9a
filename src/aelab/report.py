"""The report: one self-contained HTML page that shows a run (no network needed to view it).

It holds the configuration, the metrics and loss curves, the reconstructions across epochs
(a slider), the validation and test MSE, interactive latent maps (scatter and t-SNE, with the
image under the pointer), a decoded grid, samples, an interpolation, denoising examples for a
denoising run, and the most anomalous test images with their error maps (``aelab score``'s default
score). The pictures are also saved as PNGs in the run's figures/ folder. Pictures are shrunk (or
made JPEG) and hover previews made thumbnails beyond a byte budget, so the page stays under 10 MB
for any image size.
"""

from __future__ import annotations

import html
import importlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import figures, latent, plots
from .data.sets import ImageSet, close_sets, data_for_run, load_run_splits
from .errors import AelabError
from .fsutil import atomic_write_text
from .run import Run, load_run, read_json

log = logging.getLogger("aelab")

REPORT_LIBRARIES = (("plotly", "plotly"), ("matplotlib", "matplotlib"), ("sklearn", "scikit-learn"))
MAP_POINTS = 3000  # points on each interactive map (stratified by label); fewer for big or colour images:
MAP_PIXELS = MAP_POINTS * 28 * 28  # the hover thumbnails' pixels (MNIST's 3000 points)
FIGURE_BYTES = 250_000  # each picture on the page at most (shrunk or JPEG beyond); the page stays under 10 MB
SLIDER_BYTES = 1_000_000  # the reconstructions across epochs, all together (fewer epochs shown beyond)
GRID_N = 12
SAMPLES = 32
INTERPOLATION_STEPS = 12


def _epoch_number(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else 0


def build_figures(run: Run, test: ImageSet, train: ImageSet, val: ImageSet | None = None) -> dict[str, Any]:
    """Compute every figure of the report; save PNGs into the run's figures/ folder. With ``val``
    (or a saved RUN/anomaly.json) the test images are also scored for anomalies."""
    figures_dir = run.path / "figures"
    config = run.config
    out: dict[str, Any] = {}
    log.info("report: decoded images (grid, samples, interpolation) ...")
    train_codes = latent.encode(run.model, train.images)
    plane = latent.latent_plane(train_codes)
    scale = plots.display_scale(config.model.image_size, config.model.image_width or config.model.image_size, 2)
    out["grid"] = plots.save_png(figures.grid_picture(run, plane, GRID_N), figures_dir / "latent_grid.png", scale=scale)
    out["grid_plane"] = plane.names
    samples = figures.samples_picture(run, train_codes, SAMPLES, seed=config.train.seed, columns=SAMPLES // 4)
    out["samples"] = plots.save_png(samples, figures_dir / "samples.png", scale=scale)
    first, second = _interpolation_pair(test)
    line = figures.interpolation_picture(run, test, first, second, INTERPOLATION_STEPS)
    out["interpolation"] = plots.save_png(line, figures_dir / "interpolation.png", scale=min(3, scale + 1))
    out["interpolation_pair"] = (int(test.indices[first]), int(test.indices[second]))
    if config.train.noise_factor > 0:
        clean, noisy, denoised = figures.reconstruction_examples(run.model, test.images[:8], config.train.noise_factor)
        out["denoising"] = plots.reconstruction_figure(clean, denoised, figures_dir / "denoising.png",
                                                       title=f"noise factor {config.train.noise_factor:g}", noisy=noisy)
    log.info("report: latent maps (scatter, t-SNE) ...")
    embedding = latent.embed(run, test)
    subset = latent.stratified_subset(embedding.label, map_points(test.image_shape), seed=0)
    shown = embedding.subset(subset)
    perplexity = latent.suggested_perplexity(len(shown))
    maps = {method: figures.latent_map(shown, method, "test", perplexity=perplexity) for method in ("scatter", "tsne")}
    out["maps"] = {method: found.figure for method, found in maps.items()}
    out["n_map_points"] = len(shown)
    out["map_images"] = maps["scatter"].hover_images(test, subset)
    anomalies = anomaly_section(run, test, train, val)
    if anomalies is not None:
        out["anomalies"] = anomalies
    return out


_METHOD_WORDS = {  # what each score of aelab.scores measures, in the report's words
    "combined": " (the reconstruction error in pixels and in the encoder's features, and how far the image's "
                "features lie from the training images')",
    "mse": " (the reconstruction error)", "feature_error": " (the reconstruction error in the encoder's features)",
    "feature_distance": " (how far the image's features lie from the training images')",
    "density": " (how unlikely the image's code is)",
}


def anomaly_section(run: Run, test: ImageSet, train: ImageSet, val: ImageSet | None) -> dict[str, Any] | None:
    """The test images' anomaly scores (``aelab score``'s default): the most unusual with their error
    maps, how many pass the threshold, and AUROC when the run was trained on some classes only."""
    from . import scores

    detector = scores.load_detector(run.path, run.model)
    if detector is None:
        if val is None:
            return None
        log.info("report: anomaly scores ...")
        detector = scores.fit_detector(run.model, train.images, val.images, seed=run.config.train.seed)
        scores.save_detector(detector, run.path)
    scored = scores.score_images(run.model, detector, test.images)
    top = np.argsort(-scored.score, kind="stable")[:8]
    figure = scores.anomaly_figure(run.model, test.images[torch.as_tensor(top)], scored.score[top],
                                   run.path / "figures" / "anomalies.png")
    section = {"figure": figure, "n": int(scored.is_anomaly.sum()), "total": len(test), "method": detector.method,
               "threshold": detector.threshold, "contamination": detector.contamination}
    labels = test.labels.numpy()
    if run.config.data.classes and (labels >= 0).all():
        from .data.sets import class_labels

        normal = class_labels(run.config.data.class_list(), test.class_names)
        truth = ~np.isin(labels, normal)
        if truth.any() and not truth.all():
            section.update(scores.metrics(scored.score, scored.is_anomaly, truth), normal=run.config.data.classes)
    return section


def map_points(image_shape: tuple[int, int, int]) -> int:
    """Points on a map of the report: 3000, fewer where the hover thumbnails are big or in colour."""
    channels, height, width = image_shape
    thumbnail = plots.thumbnails(torch.zeros(1, channels, height, width)).shape
    return max(100, min(MAP_POINTS, MAP_PIXELS // (channels * thumbnail[-2] * thumbnail[-1])))


def slider_pictures(paths: list[Path]) -> tuple[list[str], list[int]]:
    """The reconstruction pictures of the epochs as data URIs, and their epoch numbers: every epoch
    while they fit ``SLIDER_BYTES``, else evenly spaced epochs (the first and the last among them)."""
    uris = [plots.picture_uri(path, FIGURE_BYTES) for path in paths]
    largest = max((len(uri) for uri in uris), default=1)
    keep = max(2, SLIDER_BYTES * 4 // 3 // largest)
    chosen = sorted(set(np.linspace(0, len(paths) - 1, keep).round().astype(int))) if keep < len(paths) else range(len(paths))
    return [uris[i] for i in chosen], [_epoch_number(paths[i]) for i in chosen]


def _interpolation_pair(test: ImageSet) -> tuple[int, int]:
    """The first test image and the first one after it with another label."""
    labels = test.labels.numpy()
    first = 0
    others = np.flatnonzero(labels != labels[first])
    return first, int(others[0]) if len(others) else min(1, len(labels) - 1)


def write_report(run_dir: str | Path, data_dir: str | None = None, splits: dict[str, ImageSet] | None = None,
                 data: str | None = None, device: str | torch.device = "cpu") -> Path:
    """Write RUN/report.html and return its path.

    The images come from the run's source (``data_dir`` may move its folder; ``data`` names another
    source, prepared as the run's images were), or from ``splits`` (``{"train", "val", "test"}``
    ImageSets; without "val" the anomaly section needs a saved RUN/anomaly.json) for a run trained on
    data given in memory. ``device``: where the model runs (``auto``: cuda, then mps, else cpu).
    """
    started = time.perf_counter()
    for module, package in REPORT_LIBRARIES:  # an incomplete install: say so before any work
        try:
            importlib.import_module(module)
        except ImportError:
            raise AelabError(f"the report needs {package}, which is not installed: pip install {package} "
                             f"(or reinstall aelab), then write the report again (aelab report {run_dir})") from None
    from .devices import resolve_device

    run = load_run(run_dir, device=resolve_device(device) if isinstance(device, str) else device)
    log.info("writing the report (generated images, latent maps, t-SNE) ...")
    owned = None
    if splits is None:
        owned = splits = load_run_splits(run.config, data_for_run(run.config, data, data_dir))
    try:
        page = render(run, build_figures(run, splits["test"], splits["train"], splits.get("val")))
    finally:
        close_sets(owned)
    path = run.path / "report.html"
    atomic_write_text(path, page)
    log.info("report written in %.1f s: %s", time.perf_counter() - started, path)
    return path


# --- the page ----------------------------------------------------------------------------------

def _uri(source) -> str:
    return plots.picture_uri(source, FIGURE_BYTES)


def _text(value: Any) -> str:
    """Any value (a class name, a path, a number read from a run's files) as HTML text: the one way
    values reach the page's HTML."""
    return html.escape(str(value))


def _table(rows: list[tuple[str, Any]]) -> str:
    return "<table class='kv'>" + "".join(
        f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in rows) + "</table>"


def _fmt(value: Any, digits: int = 5) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render(run: Run, parts: dict[str, Any]) -> str:
    """The page, from the run folder's files and ``parts`` (what ``build_figures`` computed)."""
    from plotly.offline import get_plotlyjs

    config, metrics = run.config, run.metrics
    evaluation = read_json(run.path / "evaluation.json")
    saved = read_json(run.path / "config.json")
    recon = sorted((run.path / "figures" / "reconstructions").glob("epoch-*.png"), key=_epoch_number)
    slider = slider_pictures(recon)
    loss_png = run.path / "figures" / "loss_curves.png"
    cards = [
        ("test MSE", _fmt(evaluation.get("test_mse", float("nan")))),
        ("test PSNR", f"{evaluation.get('test_psnr', float('nan')):.2f} dB"),
        ("validation MSE", _fmt(evaluation.get("val_mse", float("nan")))),
        ("epochs", str(len(metrics))),
        ("training time", f"{evaluation.get('train_seconds', sum(r['seconds'] for r in metrics)):.1f} s"),
        ("latent size", str(config.model.latent_dim)),
    ]
    if "test_denoising_mse" in evaluation:
        cards.insert(1, ("test denoising MSE", _fmt(evaluation["test_denoising_mse"])))
    config_rows = [(f"{section}.{key}", "default" if value is None else value) for section in ("data", "model", "train")
                   for key, value in saved.get(section, {}).items()]
    config_rows += [(f"version of {name}", value) for name, value in saved.get("versions", {}).items()]
    metric_rows = "".join(
        f"<tr><td>{r['epoch']}</td><td>{r['train_loss']:.5f}</td><td>{r['val_loss']:.5f}</td>"
        f"<td>{r['lr']:.2e}</td><td>{r['seconds']:.2f}</td></tr>" for r in metrics)
    a, b = parts["interpolation_pair"]
    denoising = (f"<section><h2>Denoising</h2><p>Test images, the same with noise (factor "
                 f"{config.train.noise_factor:g}), and the model's output.</p>"
                 f"<img class='fig' src='{_uri(parts['denoising'])}' alt='denoising examples'></section>"
                 if "denoising" in parts else "")
    anomalies = ""
    if "anomalies" in parts:
        found = parts["anomalies"]
        quality = (f" Trained on class {_text(found['normal'])} only: AUROC {found['auroc']:.4f}, average "
                   f"precision {found['average_precision']:.4f}, F1 {found['f1']:.4f} (the other classes as the "
                   "anomalies)." if "auroc" in found else "")
        anomalies = (f"<section><h2>Anomaly scores</h2><p class='muted'>The test images with the highest "
                     f"{_text(found['method'])} scores{_METHOD_WORDS.get(found['method'], '')}, above their "
                     f"reconstructions and per-pixel error maps. {found['n']} of {found['total']} test images score "
                     f"above the threshold {found['threshold']:.3f}, the {1 - found['contamination']:.0%} quantile of the validation scores."
                     f"{quality} All scores: <code>aelab score {_text(run.path)}</code>.</p>"
                     f"<img class='fig' src='{_uri(found['figure'])}' alt='most anomalous test images'></section>")
    maps_js = plots.maps_script({f"map-{name}": figure for name, figure in parts["maps"].items()}, parts["map_images"])
    title = f"aelab run {run.path.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_text(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2433; background: #f5f6f8; }}
header {{ background: #1d2433; color: white; padding: 18px 32px; }}
header h1 {{ margin: 0 0 4px 0; font-size: 22px; }}
header p {{ margin: 0; opacity: .8; }}
main {{ max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }}
section {{ background: white; border-radius: 8px; padding: 16px 20px; margin: 16px 0; box-shadow: 0 1px 3px rgba(0,0,0,.08); }}
h2 {{ margin: 0 0 10px 0; font-size: 18px; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; }}
.card {{ background: white; border-radius: 8px; padding: 12px 16px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }}
.card .v {{ font-size: 22px; font-weight: 600; }} .card .k {{ color: #5a6478; font-size: 13px; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ padding: 3px 10px; text-align: right; border-bottom: 1px solid #eceef2; }}
table.kv th {{ text-align: left; color: #5a6478; font-weight: normal; }} table.kv td {{ text-align: left; }}
.two {{ display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }} @media (max-width: 900px) {{ .two {{ grid-template-columns: 1fr; }} }}
.scroll {{ max-height: 320px; overflow-y: auto; }}
img.fig {{ max-width: 100%; image-rendering: pixelated; }}
{plots.MAP_CSS}
.muted {{ color: #5a6478; font-size: 13px; }}
</style></head>
<body data-rendered="no">
<header><h1>{_text(title)}</h1>
<p>{_text(config.data.dataset)} · latent size {_text(config.model.latent_dim)} · recipe {_text(config.train.recipe)} ·
loss {_text(config.train.loss)}{' · denoising, noise ' + format(config.train.noise_factor, 'g') if config.train.noise_factor else ''}</p></header>
<main>
<div class="cards">{''.join(f"<div class='card'><div class='v'>{_text(v)}</div><div class='k'>{_text(k)}</div></div>" for k, v in cards)}</div>
<section><h2>Training</h2><div class="two">
<div><img class="fig" src="{_uri(loss_png)}" alt="loss curves"></div>
<div class="scroll"><table><tr><th>epoch</th><th>train loss</th><th>val loss</th><th>lr</th><th>seconds</th></tr>{metric_rows}</table></div>
</div><p class="muted">Weights kept: {_text(evaluation.get('kept', config.train.keep))} (epoch {_text(evaluation.get('best_epoch', '?'))} had the lowest validation loss).</p></section>
<section><h2>Reconstructions across epochs</h2>
<p class="muted">The first five test images above the model's reconstructions. Move the slider to see how they improve.</p>
<input id="epoch" type="range" min="1" max="{len(slider[0])}" value="{len(slider[0])}" style="width: 60%"> <span id="epoch-label"></span><br>
<img id="recon" class="fig" alt="reconstructions"></section>
{denoising}
{anomalies}
<section><h2>The latent space</h2>
<p class="muted">Codes of {parts['n_map_points']} test images (a sample stratified by label). Hover a point to see its image; click a label in the legend to hide it.</p>
<div class="two"><div class="map"><div id="map-scatter"></div><canvas class="preview"></canvas></div>
<div class="map"><div id="map-tsne"></div><canvas class="preview"></canvas></div></div></section>
<section><h2>Generated images</h2>
<h3>A {GRID_N} × {GRID_N} grid over the latent plane ({_text(' / '.join(parts['grid_plane']))})</h3>
<p class="muted">Decoded from evenly spaced points between the 1st and 99th percentiles of the training codes{'' if config.model.latent_dim == 2 else ', the other directions held at the mean code'}.</p>
<img class="fig" src="{_uri(parts['grid'])}" alt="latent grid">
<div class="two"><div><h3>Samples</h3><p class="muted">Decoded from codes drawn from a Gaussian mixture (10 components) fitted to the training codes.</p>
<img class="fig" src="{_uri(parts['samples'])}" alt="samples"></div>
<div><h3>Interpolation</h3><p class="muted">The straight line between the codes of test images {a} and {b}.</p>
<img class="fig" src="{_uri(parts['interpolation'])}" alt="interpolation"></div></div></section>
<section><h2>Configuration</h2>{_table(config_rows)}<p class="muted">Run folder: {_text(run.path.resolve())}</p></section>
</main>
<script>window.__errors = [];
window.addEventListener("error", function (e) {{ window.__errors.push(String(e.message)); }});
(function () {{ var original = console.error; console.error = function () {{ window.__errors.push(Array.from(arguments).join(" ")); original.apply(console, arguments); }}; }})();</script>
<script>{get_plotlyjs()}</script>
<script>
const RECON = {plots.script_json(slider[0])};
const EPOCHS = {plots.script_json(slider[1])};
{plots.MAP_SCRIPT}
{maps_js}
const slider = document.getElementById("epoch"), recon = document.getElementById("recon");
function showEpoch() {{ const i = Number(slider.value) - 1; recon.src = RECON[i]; document.getElementById("epoch-label").textContent = "epoch " + EPOCHS[i]; }}
slider.addEventListener("input", showEpoch); showEpoch();
const sprite = AELAB_MAPS.sprite, plotted = AELAB_MAPS.plotted;
const images = Array.from(document.images).concat([sprite]);
Promise.all(plotted.concat(images.map(function (img) {{ return img.decode(); }}))).then(function () {{
  const broken = images.filter(function (img) {{ return !(img.naturalWidth > 0); }}).length;
  const maps = document.querySelectorAll(".js-plotly-plot .main-svg").length > 0 ? plotted.length : 0;
  document.body.dataset.images = String(images.length - broken); document.body.dataset.brokenImages = String(broken);
  document.body.dataset.maps = String(maps); document.body.dataset.errors = JSON.stringify(window.__errors);
  document.body.dataset.rendered = broken === 0 && maps === plotted.length ? "ok" : "incomplete";
}}).catch(function (e) {{ window.__errors.push(String(e)); document.body.dataset.errors = JSON.stringify(window.__errors); document.body.dataset.rendered = "failed"; }});
</script>
</body></html>
"""
