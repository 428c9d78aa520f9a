"""The figures of a run, computed once for the command-line tools, the training callbacks and the
report: reconstructions, a decoded latent grid, samples, an interpolation, latent maps.

Each returns data (tensors, uint8 pictures, plotly figures); the callers save or embed them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import latent, plots
from .data.batches import to_unit
from .data.sets import ImageSet
from .inference import infer
from .errors import AelabError
from .run import Run, output_path

MAP_POINTS = 3000  # points on a latent map of the report (and t-SNE's default): fewer for big or colour images
MAP_PIXELS = MAP_POINTS * 28 * 28  # the hover thumbnails' pixels (MNIST's 3000 points)
EXAMPLES = 5  # the test images (or validation images) shown above their reconstructions after each epoch
SLIDER_EPOCHS = 200  # epochs whose reconstructions are drawn (evenly spaced, the last among them) for the report
FIGURE_NOISE_SEED = 0  # the noise of every denoising example, during training and in the report
MAP_TITLES = {"scatter": "latent variables {0} and {1}", "pca": "PCA of the latent codes",
              "tsne": "t-SNE of the latent codes", "umap": "UMAP of the latent codes"}


def reconstruction_examples(model: torch.nn.Module, images: torch.Tensor, noise_factor: float = 0.0,
                            labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Clean images, their noisy inputs (None without noise) and the model's outputs, all floats
    [N, C, H, W] in [0, 1] on the CPU, for uint8 ``images`` (with their ``labels`` for a conditional model)."""
    result = infer(model, images, terms=(), reconstructions=True, inputs=noise_factor > 0, noise_factor=noise_factor,
                   seed=FIGURE_NOISE_SEED, labels=labels)
    return to_unit(images.cpu()), result.inputs, result.reconstructions


def grid_figure(run: Run, plane: latent.LatentPlane, n: int, path: Path, label: int | None = None) -> Path:
    """An n x n grid of images decoded over a latent plane (``latent.latent_plane``), with the plane's
    axes, values and name, as a PNG file (a conditional model's of class ``label``, default 0)."""
    return plots.grid_figure(latent.grid_images(run, plane, n, label, plots.PICTURE_SIDE), plane, n, Path(path))


def samples_picture(run: Run, train_codes: np.ndarray | None, count: int, seed: int = 0, columns: int = 10,
                    sampler: str | None = None) -> np.ndarray:
    """``count`` new images in rows: decoded from codes drawn from the prior (``sampler`` prior, a
    variational model's default) or from a mixture fitted to ``train_codes`` (gmm)."""
    if (sampler or latent.default_sampler(run.model)) == "prior":
        images = latent.prior_images(run, count, seed=seed, largest=plots.PICTURE_SIDE)
    else:
        images = latent.sample_images(run, train_codes, count, seed=seed, largest=plots.PICTURE_SIDE)
    return tiled(images, columns)


def tiled(images: torch.Tensor, columns: int = 10) -> np.ndarray:
    """Images [N, C, H, W] in rows of ``columns``, as one picture."""
    columns = max(1, min(len(images), columns))
    return plots.tile(images, -(-len(images) // columns), columns)


def traversals(run: Run, data: ImageSet, index: int = 0, train_codes: np.ndarray | None = None,
               steps: int = 9) -> tuple[torch.Tensor, str]:
    """Latent traversals (``latent.traverse_images``) around the code of image ``index`` of ``data``:
    images [dims * steps, C, H, W], a row per latent dimension, from -3 to +3 standard deviations (the
    prior's for a variational model, else those of ``train_codes``), and what those are, in words."""
    from .likelihood import is_variational

    if not 0 <= index < len(data):
        raise AelabError(f"image {index} does not exist: the split has images 0 to {len(data) - 1}; choose one of those")
    code = latent.encode(run.model, data.images[index: index + 1], labels=data.labels[index: index + 1])[0]
    if is_variational(run.model) or train_codes is None:
        scales, unit = np.ones(len(code), np.float32), "prior's sd" if is_variational(run.model) else "units"
    else:
        scales, unit = train_codes.std(0), "codes' sd"
    label = int(data.labels[index]) if getattr(run.model, "conditional", False) else None
    return latent.traverse_images(run, code, scales, steps, label=label, largest=plots.PICTURE_SIDE), unit


def traversal_picture(run: Run, data: ImageSet, index: int = 0, train_codes: np.ndarray | None = None,
                      steps: int = 9) -> np.ndarray:
    """``traversals`` as one picture, a row per latent dimension."""
    images, _ = traversals(run, data, index, train_codes, steps)
    return plots.tile(images, len(images) // steps, steps)


def traversal_figure(run: Run, data: ImageSet, path: Path, index: int = 0, train_codes: np.ndarray | None = None,
                     steps: int = 9) -> Path:
    """``traversals`` as a PNG figure: each row named by its latent variable (z0, z1, ...), each column
    by how far it moves it (-3 to +3 standard deviations)."""
    images, unit = traversals(run, data, index, train_codes, steps)
    rows = [(f"z{dim}", images[dim * steps: (dim + 1) * steps]) for dim in range(len(images) // steps)]
    offsets = np.linspace(-3, 3, steps)
    return plots.rows_figure(rows, Path(path), title=f"traversals around image {index}, each latent variable moved",
                             captions=[f"{value:+.2g}" if value else "0" for value in offsets],
                             caption_name=unit)


def write_images(images: torch.Tensor, out: Path) -> Path:
    """Images [N, C, H, W] in [0, 1] themselves: ``out`` ending in .npy, a uint8 array [N, C, H, W]
    (what ``--data FILE.npy`` reads back); otherwise a folder of PNG files 00000.png, ..."""
    from .fsutil import atomic_save

    pixels = images.clamp(0, 1).mul(255).round().to(torch.uint8)
    out = Path(out)
    if out.suffix == ".npy":
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, pixels.numpy())

        atomic_save(out, save)
        return out
    if out.suffix:
        raise AelabError(f"`out` {out} must end in .npy (an array) or name a folder (PNG files), not {out.suffix}")
    from PIL import Image

    array = plots.to_pixels(images)
    for i, picture in enumerate(array):
        image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
        atomic_save(out / f"{i:05d}.png", lambda tmp, image=image: image.save(tmp, format="PNG"))
    return out


def interpolation_picture(run: Run, data: ImageSet, first: int, second: int, steps: int) -> np.ndarray:
    """One row: the images decoded along the line between the codes of images ``first`` and ``second``."""
    return plots.tile(latent.interpolate_images(run, data, first, second, steps, plots.PICTURE_SIDE), 1, steps)


@dataclass
class LatentMap:
    """A 2-D map of the codes of some images: coordinates, axis names, title, a plotly figure (the
    interactive map) and the points' labels (for ``draw``, the same map on matplotlib axes)."""

    xy: np.ndarray  # [N, 2]
    axis_names: tuple[str, str]
    title: str
    figure: object  # plotly Figure
    labels: np.ndarray | None = None  # int [N], -1: unlabelled
    class_names: tuple[str, ...] = ()

    def draw(self, axes) -> None:
        """The map on matplotlib ``axes`` (a static picture: in a notebook it shows wherever it is
        saved or exported, where the interactive figure needs JavaScript)."""
        plots.draw_map(axes, self.xy, self.labels, self.class_names, self.axis_names, self.title)

    def hover_images(self, data: ImageSet, positions: np.ndarray) -> torch.Tensor:
        """The images of the map's points (``positions`` in ``data``), as thumbnails for the hover previews."""
        return plots.thumbnails(to_unit(data.images[torch.as_tensor(positions)]))


def map_points(image_shape: tuple[int, int, int]) -> int:
    """Points on a latent map of the report, and on ``aelab plot``'s t-SNE and UMAP maps unless told:
    3000, fewer where the hover thumbnails are big or in colour."""
    channels, height, width = image_shape
    thumbnail = plots.thumbnails(torch.zeros(1, channels, height, width)).shape
    return max(100, min(MAP_POINTS, MAP_PIXELS // (channels * thumbnail[-2] * thumbnail[-1])))


def latent_map(shown: latent.Embedding, method: str, split: str, dims: tuple[int, int] = (0, 1),
               perplexity: float = 30.0, seed: int = 0, progress=None) -> LatentMap:
    """Project the codes of ``shown`` to 2-D with ``method`` and draw them coloured by label
    (``progress``: see ``latent.project``)."""
    xy, axis_names = latent.project(shown.codes, method, dims=dims, perplexity=perplexity, seed=seed,
                                    progress=progress)
    title = MAP_TITLES[method].format(*axis_names) + f" ({len(shown)} {split} images)"
    figure = plots.map_plotly(xy, shown.label, shown.index, shown.class_names, axis_names, title)
    return LatentMap(xy, axis_names, title, figure, shown.label, shown.class_names)


def save_picture(run: Run, picture: np.ndarray, name: str, out: str | Path | None = None, scale: int = 2) -> Path:
    """Save a picture (``samples_picture``, ``interpolation_picture``) as a PNG enlarged ``scale`` times:
    to ``out``, else to ``outputs/NAME`` in the run folder (``run.output_path``)."""
    path = output_path(run.path, name, out)
    plots.save_png(picture, path, scale=scale)
    return path


def write_latent_map(run: Run, data: ImageSet, method: str, split: str, out: str | Path | None = None, *,
                     dims: tuple[int, int] = (0, 1), perplexity: float = 30.0, max_points: int | None = None,
                     seed: int = 0, progress=None) -> list[Path]:
    """A latent map of ``data`` (``split`` names it) as an interactive HTML page with the images on
    hover, a PNG of the same map and a CSV of its coordinates (index, path, label, x, y): ``out``
    (an .html file; the others beside it), else ``outputs/METHOD-SPLIT.html`` in the run folder.
    ``max_points``: at most so many images, sampled stratified by label (seeded); ``progress``: see
    ``latent.project``."""
    path = output_path(run.path, f"{method}-{split}.html", out)
    if path.suffix != ".html":
        raise AelabError(f"`out` must end in .html (the PNG and CSV are written beside it), got {path}")
    embedding = latent.embed(run, data)
    positions = latent.stratified_subset(embedding.label, max_points, seed=seed)
    shown = embedding.subset(positions)
    found = latent_map(shown, method, split, dims=dims, perplexity=perplexity, seed=seed, progress=progress)
    plots.write_map_html(found.figure, found.hover_images(data, positions), path, found.title)
    plots.map_png(found.xy, shown.label, shown.class_names, found.axis_names, found.title, path.with_suffix(".png"))
    table = {name: values for name, values in shown.columns().items() if not name.startswith("z")}
    latent.write_table({**table, "x": found.xy[:, 0], "y": found.xy[:, 1]}, path.with_suffix(".csv"))
    return [path, path.with_suffix(".png"), path.with_suffix(".csv")]
