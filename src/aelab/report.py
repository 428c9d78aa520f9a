"""The report: one self-contained HTML page that shows a run (no network needed to view it).

It holds the configuration, the metrics and loss curves, the reconstructions across epochs
(a slider), the validation and test MSE, interactive latent maps (scatter and t-SNE, with the
image under the pointer), a decoded grid, samples, an interpolation, denoising examples for a
denoising run, the most anomalous test images with their error maps (``aelab score``'s default
score), and "Decode any point": the run's decoder in the page's JavaScript (``aelab.explorer``).
The pictures are also saved as PNGs in the run's figures/ folder. Pictures are shrunk (or made
JPEG) and hover previews made thumbnails beyond a byte budget, so the page stays under 10 MB for
any image size (the explorer's decoder is left out where it would not fit).
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import markupsafe
import numpy as np
import torch

from . import explorer, figures, latent, pages, plots
from .config import FAMILY_SETTINGS, LARGEST_DEFAULT_SIDE, family_settings
from .data.sets import ImageSet, close_sets, data_for_run, few_test_images, load_run_splits
from .errors import AelabError
from .evaluation import pca_verdict
from .likelihood import ACTIVE, is_variational, posterior_summary
from .fsutil import atomic_write_text
from .progress import Stages, duration
from .run import Run, load_run, read_json

log = logging.getLogger("aelab")

REPORT_LIBRARIES = (("plotly", "plotly"), ("matplotlib", "matplotlib"), ("sklearn", "scikit-learn"))
FIGURE_BYTES = 250_000  # each picture on the page at most (shrunk or JPEG beyond); the page stays under 10 MB
PAGE_BYTES = 10_000_000  # the page at most: beyond, the explorer's decoder is left out (aelab export --format web)
# the largest images the page decodes live ("decode any point"): beyond, the JavaScript decoder takes seconds a frame
# (and checking its float16 weights, minutes); the default size of your own images
EXPLORER_SIDE = LARGEST_DEFAULT_SIDE
EXPLORER_PIXELS = EXPLORER_SIDE * EXPLORER_SIDE
SLIDER_BYTES = 1_000_000  # the reconstructions across epochs, all together (fewer epochs shown beyond)
# the settings a person chooses (the command line's options, the recipe's values): the report's
# "What you chose"; the others (filled in from the data and the machine, or internal) are its details
CHOSEN = {"data.dataset", "data.classes", "data.val_fraction", "data.test_fraction", "data.resize", "data.split_seed",
          "data.binarize", "model.kind", "model.beta", "model.kl_warmup", "model.samples", "train.device",
          "model.latent_dim", "model.width", "model.hidden", "train.recipe", "train.epochs", "train.batch_size",
          "train.lr", "train.weight_decay", "train.schedule", "train.shuffle", "train.loss", "train.noise_factor",
          "train.seed", "train.keep", "train.precision"}
GRID_N = 12
SAMPLES = 32
INTERPOLATION_STEPS = 12


def _epoch_number(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else 0


TSNE_SECONDS = 2.4e-3  # t-SNE's seconds a point on 2 CPU cores (3,000 points: about 7 s; a 2-core EPYC)
SECONDS = {"codes": 0.5, "decoder": 1.0, "maps": 0.3, "anomalies": 1.0, "page": 1.5}  # each stage's fixed part
SMALL_BATCH = 2.0  # an image encoded among 64 takes about this many times its share of a whole split (MNIST: 2x)


def stage_costs(run: Run, test: ImageSet, train: ImageSet, val: ImageSet | None,
                per_image: float | None = None) -> dict[str, float]:
    """What each stage of the report is expected to take (seconds): a fixed part, and what grows
    with the images, from ``per_image``, the seconds to encode an image (default: timed here on 64 of
    them; the report revises it once it has encoded the training images)."""
    from . import scores

    if per_image is None:
        sample = train.images[: min(len(train), 64)]
        latent.encode(run.model, sample[:8], labels=train.labels[:8])  # (warm: the first call pays for set-up)
        started = time.perf_counter()
        latent.encode(run.model, sample, labels=train.labels[: len(sample)])
        per_image = (time.perf_counter() - started) / max(1, len(sample)) / SMALL_BATCH
    points = min(len(test), figures.map_points(test.image_shape))
    scored = min(len(train), scores.FIT_IMAGES) + (len(val) if val is not None else 0) + len(test)
    return {"codes": SECONDS["codes"] + per_image * len(train), "decoder": SECONDS["decoder"] + per_image * len(test),
            "maps": SECONDS["maps"] + (TSNE_SECONDS * points if points >= latent.MIN_NEIGHBOUR_POINTS else 0.0),
            "anomalies": SECONDS["anomalies"] + 1.5 * per_image * scored, "page": SECONDS["page"]}


def build_figures(run: Run, test: ImageSet, train: ImageSet, val: ImageSet | None = None,
                  stages: Stages | None = None) -> dict[str, Any]:
    """Compute every figure of the report; save PNGs into the run's figures/ folder. With ``val``
    (or a saved RUN/anomaly.json) the test images are also scored for anomalies. ``stages`` (of
    ``stage_costs``) says each stage as it starts, with the time so far and the time left."""
    figures_dir = run.path / "figures"
    config = run.config
    out: dict[str, Any] = {}
    stages = stages or Stages("report", stage_costs(run, test, train, val))
    out["few_test"] = few_test_images(test, config.data)  # (a note on the page: too few to trust)
    stages.start("codes", "the training images' codes, a decoded grid, samples, an interpolation")
    started = time.perf_counter()
    train_codes = latent.encode(run.model, train.images, labels=train.labels)
    if len(train) >= 256:  # (enough images to time the model: the stages left, expected again)
        stages.revise(stage_costs(run, test, train, val, (time.perf_counter() - started) / len(train)))
    plane = latent.latent_plane(train_codes)
    scale = plots.display_scale(config.model.image_size, config.model.image_width or config.model.image_size, 2)
    out["grid"] = figures.grid_figure(run, plane, GRID_N, figures_dir / "latent_grid.png")
    out["grid_plane"] = plane
    stages.start("decoder", "the decoder for the page (decode any point)")
    embedding = latent.embed(run, test)  # (the test codes: the explorer's points, and the latent maps' below)
    height, width = config.model.image_size, config.model.image_width or config.model.image_size
    out["explorer"], out["explorer_left_out"] = None, ""
    if height * width <= EXPLORER_PIXELS:
        out["explorer"] = explorer.explorer_data(run, embedding.codes, test.labels, test.class_names, plane,
                                                 train_codes, config.train.seed)
    else:
        out["explorer_left_out"] = (f"Images of {height} x {width} pixels are too large to decode in a page as the "
                                    f"pointer moves (it does so up to {EXPLORER_SIDE} x {EXPLORER_SIDE}); "
                                    "<code>aelab generate RUN --grid</code> decodes a grid over the plane")
    sampler = latent.default_sampler(run.model)
    samples = figures.samples_picture(run, train_codes, SAMPLES, seed=config.train.seed, columns=SAMPLES // 4,
                                      sampler=sampler)
    out["samples"] = plots.save_png(samples, figures_dir / "samples.png", scale=scale)
    out["sampler"] = sampler
    if is_variational(run.model):
        posterior = posterior_summary(run.model, test.images, labels=test.labels)
        out["variational"] = {
            "kl": plots.kl_figure(posterior.kl_per_dimension, posterior.mean_variance > ACTIVE,
                                  figures_dir / "kl_per_dimension.png"),
            "traversal": figures.traversal_figure(run, test, figures_dir / "traversal.png"),
            "active_units": posterior.active_units, "latent_dim": len(posterior.kl_per_dimension)}
    out["interpolation"] = out["interpolation_pair"] = None
    if len(test) >= 2:  # (one test image: no line to draw)
        first, second = _interpolation_pair(test)
        line = figures.interpolation_picture(run, test, first, second, INTERPOLATION_STEPS)
        out["interpolation"] = plots.save_png(line, figures_dir / "interpolation.png", scale=min(3, scale + 1))
        out["interpolation_pair"] = (int(test.indices[first]), int(test.indices[second]))
    out["n_test"], out["n_shown"] = len(test), min(len(test), figures.EXAMPLES)
    if config.train.noise_factor > 0:
        clean, noisy, denoised = figures.reconstruction_examples(run.model, test.images[:8], config.train.noise_factor,
                                                                 test.labels[:8])
        out["denoising"] = plots.reconstruction_figure(clean, denoised, figures_dir / "denoising.png",
                                                       title=f"noise factor {config.train.noise_factor:g}", noisy=noisy)
    subset = latent.stratified_subset(embedding.label, figures.map_points(test.image_shape), seed=0)
    shown = embedding.subset(subset)
    perplexity = latent.suggested_perplexity(len(shown))
    methods = ("scatter", "tsne")
    if len(shown) < latent.MIN_NEIGHBOUR_POINTS:
        images = f"{len(shown)} test image{'s' if len(shown) != 1 else ''}"
        stages.start("maps", f"a latent map of {images} (no t-SNE map: it needs {latent.MIN_NEIGHBOUR_POINTS} images "
                             "or more)")
        methods = ("scatter",)
    else:
        stages.start("maps", f"latent maps of {len(shown)} test images (scatter, t-SNE)")
    maps = {method: figures.latent_map(shown, method, "test", perplexity=perplexity) for method in methods}
    out["maps"] = {method: found.figure for method, found in maps.items()}
    out["n_map_points"] = len(shown)
    out["map_images"] = maps["scatter"].hover_images(test, subset)
    stages.start("anomalies", "anomaly scores of the test images")
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
        detector = scores.fit_detector(run.model, train, val, scores.default_method(run.config),
                                       seed=run.config.train.seed)
        scores.save_detector(detector, run.path)
    scored = scores.score_images(run.model, detector, test)
    top = scores.highest(scored, 8)
    figure = scores.anomaly_figure(run.model, test.subset(torch.as_tensor(top)), scored.score[top],
                                   run.path / "figures" / "anomalies.png", labels=scores.label_names(test, top),
                                   score_name=f"{detector.method} score")
    section = {"figure": figure, "n": int(scored.is_anomaly.sum()), "total": len(test), "method": detector.method,
               "threshold": detector.threshold, "contamination": detector.contamination}
    if run.config.data.classes and (test.labels >= 0).all():
        truth = scores.normal_truth(test, run.config.data.class_list())
        if truth.any() and not truth.all():  # (a test split of the training classes alone has no AUROC)
            section.update(scores.metrics(scored.score, scored.is_anomaly, truth), normal=run.config.data.classes)
    return section


def slider_pictures(paths: list[Path], budget: int = SLIDER_BYTES) -> tuple[list[str], list[int]]:
    """The reconstruction pictures of the epochs as data URIs, and their epoch numbers: every epoch
    while they fit ``budget`` bytes, else evenly spaced epochs (the first and the last among them;
    at most ``figures.SLIDER_EPOCHS`` are read)."""
    paths = [paths[i] for i in _evenly(len(paths), figures.SLIDER_EPOCHS)]
    uris = [plots.picture_uri(path, FIGURE_BYTES) for path in paths]
    largest = max((len(uri) for uri in uris), default=1)
    chosen = _evenly(len(paths), max(2, budget * 4 // 3 // largest))
    return [uris[i] for i in chosen], [_epoch_number(paths[i]) for i in chosen]


def _evenly(n: int, most: int) -> list[int]:
    """At most ``most`` of the positions 0 .. n - 1, evenly spaced, the first and the last among them."""
    return sorted(set(np.linspace(0, n - 1, most).round().astype(int))) if most < n else list(range(n))


def _interpolation_pair(test: ImageSet) -> tuple[int, int]:
    """The first test image and the first one after it with another label."""
    labels = test.labels.numpy()
    first = 0
    others = np.flatnonzero(labels != labels[first])
    return first, int(others[0]) if len(others) else min(1, len(labels) - 1)


def write_report(run_dir: str | Path, data_dir: str | None = None, splits: dict[str, ImageSet] | None = None,
                 data: str | None = None, device: str | torch.device = "cpu", progress: bool = False) -> Path:
    """Write RUN/report.html and return its path.

    The images come from the run's source (``data_dir`` may move its folder; ``data`` names another
    source, prepared as the run's images were), or from ``splits`` (``{"train", "val", "test"}``
    ImageSets; without "val" the anomaly section needs a saved RUN/anomaly.json) for a run trained on
    data given in memory. ``device``: where the model runs (``auto``: cuda, then mps, else cpu).
    Each stage is said as it starts (the logger "aelab"), with the time so far and the time left;
    ``progress``: also a progress bar over the stages (``tqdm.auto``).
    """
    for module, package in REPORT_LIBRARIES:  # an incomplete install: say so before any work
        try:
            importlib.import_module(module)
        except ImportError:
            raise AelabError(f"the report needs {package}, which is not installed: pip install {package} "
                             f"(or reinstall aelab), then write the report again (aelab report {run_dir})") from None
    from .devices import resolve_device

    run = load_run(run_dir, device=resolve_device(device) if isinstance(device, str) else device)
    owned = None
    if splits is None:
        owned = splits = load_run_splits(run.config, data_for_run(run.config, data, data_dir))
    try:
        stages = Stages("report", stage_costs(run, splits["test"], splits["train"], splits.get("val")), progress)
        parts = build_figures(run, splits["test"], splits["train"], splits.get("val"), stages)
        stages.start("page", "the page")
        page = render(run, parts)
        if len(page.encode("utf-8")) > PAGE_BYTES:  # the decoder does not fit: fewer epochs on the slider first,
            page = render(run, parts, SLIDER_BYTES // 4)
        if len(page.encode("utf-8")) > PAGE_BYTES:  # then the explorer gets a page of its own
            log.info("the run's decoder does not fit in the report's %d MB; aelab export --format web %s writes "
                     "its explorer", PAGE_BYTES // 1_000_000, run.path)
            page = render(run, {**parts, "explorer": None, "explorer_left_out": (
                f"This run's decoder is too large to carry in the report's {PAGE_BYTES // 1_000_000} MB; <code>aelab "
                "export --format web RUN</code> writes it with its explorer as a page of its own")})
    finally:
        close_sets(owned)
    path = run.path / "report.html"
    atomic_write_text(path, page)
    log.info("report written in %s: %s", duration(stages.done()), path)
    return path


# --- the page ----------------------------------------------------------------------------------

def _uri(source) -> str:
    return plots.picture_uri(source, FIGURE_BYTES)


def _figure(path: Path) -> dict[str, Any]:
    """A figure with text for the page: its data URI, never shrunk (its text would shrink with it: a
    JPEG where PNG is too large), and the pixel size of its smallest text (``plots.TEXT_KEY``)."""
    return {"src": plots.picture_uri(path, FIGURE_BYTES, shrink=False), "text_px": plots.figure_text_px(path) or ""}


def _fmt(value: Any, digits: int = 5) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _variational(parts: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The report's section of a variational model: its ELBO and parts, active units, KL per
    dimension and traversals."""
    found = parts.get("variational")
    if found is None:
        return None
    split = "test" if "test_nelbo" in evaluation else "val"
    numbers = {term: f"{evaluation[f'{split}_{term}']:.2f}" for term in ("nelbo", "recon", "kl", "iw_nelbo")
               if f"{split}_{term}" in evaluation}
    return {"split": split, **numbers, "active_units": found["active_units"], "latent_dim": found["latent_dim"],
            "kl_picture": _figure(found["kl"]), "traversal": _figure(found["traversal"])}


def render(run: Run, parts: dict[str, Any], slider_bytes: int = SLIDER_BYTES) -> str:
    """The page, from the run folder's files and ``parts`` (what ``build_figures`` computed): the
    values are gathered here; the template lays them out."""
    config, metrics = run.config, run.metrics
    evaluation = read_json(run.path / "evaluation.json")
    saved = read_json(run.path / "config.json")
    recon = sorted((run.path / "figures" / "reconstructions").glob("epoch-*.png"), key=_epoch_number)
    slider = slider_pictures(recon, slider_bytes)
    cards = [
        ("test MSE", _fmt(evaluation.get("test_mse", float("nan")))),
        ("test PSNR", f"{evaluation.get('test_psnr', float('nan')):.2f} dB"),
        ("validation MSE", _fmt(evaluation.get("val_mse", float("nan")))),
        ("epochs", str(len(metrics))),
        ("training time", f"{evaluation.get('train_seconds', sum(r['seconds'] for r in metrics)):.1f} s"),
        ("latent size", str(config.model.latent_dim)),
    ]
    verdict = None
    if "test_pca_mse" in evaluation:  # the honest baseline, beside the autoencoder's error, and who wins
        components = evaluation.get("pca_components", config.model.latent_dim)
        cards.insert(1, (f"test MSE of PCA-{components} (the baseline)", _fmt(evaluation["test_pca_mse"])))
        verdict = pca_verdict(evaluation["test_mse"], evaluation["test_pca_mse"], config.model.latent_dim, components)
    if "test_denoising_mse" in evaluation:
        cards.insert(1, ("test denoising MSE", _fmt(evaluation["test_denoising_mse"])))
    others = {f"model.{name}" for name in FAMILY_SETTINGS if name not in family_settings(config.model.kind)}
    rows = [(f"{section}.{key}", "default" if value is None else value) for section in ("data", "model", "train")
            for key, value in saved.get(section, {}).items() if f"{section}.{key}" not in others]  # (its family's)
    given = set(saved["given"]) if isinstance(saved.get("given"), list) else CHOSEN  # (runs saved before: CHOSEN)
    chosen = [(name, value) for name, value in rows if name in given]
    details = [(name, value) for name, value in rows if name not in given]
    details += [(f"version of {name}", value) for name, value in saved.get("versions", {}).items()]
    texts = [plots.figure_text_px(path) for path in recon[-1:]]
    anomalies = None
    if "anomalies" in parts:
        found = parts["anomalies"]
        anomalies = {"method": found["method"], "method_words": _METHOD_WORDS.get(found["method"], ""),
                     "n": found["n"], "total": found["total"], "threshold": f"{found['threshold']:.3f}",
                     "quantile": f"{1 - found['contamination']:.0%}", "picture": _figure(found["figure"])}
        if "auroc" in found:
            anomalies |= {"normal": found["normal"], "auroc": f"{found['auroc']:.4f}",
                          "average_precision": f"{found['average_precision']:.4f}", "f1": f"{found['f1']:.4f}"}
    safe = markupsafe.Markup  # aelab's own code: plotly.js's loader, the maps' script and style, and the maps' data
    # (plots.maps_script writes its figures and sprite through plots.script_json, the template's filter)
    return pages.template().render(
        title=f"aelab run {run.path.name}", dataset=config.data.dataset, latent_dim=config.model.latent_dim,
        recipe=config.train.recipe, loss=config.train.loss + (  # (a variational model minimises its own bound)
            "" if run.model.objective == config.train.loss
            else f" (training minimises the {run.model.objective_label})"),
        noise_factor=format(config.train.noise_factor, "g") if config.train.noise_factor else None,
        cards=cards, verdict=verdict, given_recorded=isinstance(saved.get("given"), list),
        few_test=parts.get("few_test"),
        schedule_changes=[change.get("said", "") for change in saved.get("schedule_changes", [])],
        loss_curves=_figure(run.path / "figures" / "loss_curves.png"),
        metrics=[(r["epoch"], f"{r['train_loss']:.5f}", f"{r['val_loss']:.5f}", f"{r['lr']:.2e}", f"{r['seconds']:.2f}")
                 for r in metrics],
        kept=evaluation.get("kept", config.train.keep), best_epoch=evaluation.get("best_epoch", "?"),
        slider_pictures=slider[0], slider_epochs=slider[1], slider_text_px=(texts[0] if texts else None) or "",
        denoising={"noise_factor": format(config.train.noise_factor, "g"), "picture": _figure(parts["denoising"])}
        if "denoising" in parts else None,
        anomalies=anomalies, run_path=run.path, run_folder=run.path.resolve(),
        n_map_points=parts["n_map_points"], map_methods=list(parts["maps"]),
        min_neighbour_points=latent.MIN_NEIGHBOUR_POINTS, grid_n=GRID_N, grid_plane=parts["grid_plane"].description,
        grid=_figure(parts["grid"]),
        samples=_uri(parts["samples"]), sampler=parts["sampler"],
        interpolation=_uri(parts["interpolation"]) if parts["interpolation"] else None,
        n_test=parts["n_test"], n_shown=parts["n_shown"], sampled=parts["n_map_points"] < parts["n_test"],
        variational=_variational(parts, evaluation), explorer=parts["explorer"],
        explorer_left_out=safe(parts["explorer_left_out"].replace("RUN", str(markupsafe.escape(run.path)))),
        explorer_js=safe(explorer.script()),
        interpolation_pair=parts["interpolation_pair"], chosen_rows=chosen, detail_rows=details,
        map_css=safe(plots.MAP_CSS), map_script=safe(plots.MAP_SCRIPT),
        plotly_loader=safe(plots.PLOTLY_LOADER), plotly_packed=plots.plotly_packed(),
        maps_js=safe(plots.maps_script({f"map-{name}": figure for name, figure in parts["maps"].items()},
                                       parts["map_images"])))
