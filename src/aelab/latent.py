"""The latent space: codes of a split, 2-D maps (scatter, PCA, t-SNE, UMAP), and decoding
points back into images (a grid over a plane, samples from a fitted mixture, interpolations).

Every function returns data (numpy arrays, tensors); the CLI and the report save them.
scikit-learn and umap-learn are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .run import Run
from .data.sets import ImageSet
from .errors import AelabError
from .fsutil import atomic_save
from .inference import chunk_size, infer

log = logging.getLogger("aelab")

METHODS = ("scatter", "pca", "tsne", "umap")
NEIGHBOUR_MAPS = ("tsne", "umap")  # the maps made from each point's neighbours: they need more than a handful
MIN_NEIGHBOUR_POINTS = 11  # images those maps need at least (t-SNE's perplexity is below the number of points)


@dataclass
class Embedding:
    """Codes of a set of images: ``codes[i]`` is the code of image ``index[i]`` with ``label[i]``."""

    index: np.ndarray  # int64 [N]
    label: np.ndarray  # int64 [N]
    codes: np.ndarray  # float32 [N, d]
    class_names: tuple[str, ...]
    path: np.ndarray | None = None  # str [N]: the image files (a folder source), relative to the folder

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, positions: np.ndarray) -> "Embedding":
        return Embedding(self.index[positions], self.label[positions], self.codes[positions], self.class_names,
                         None if self.path is None else self.path[positions])

    def columns(self) -> dict[str, np.ndarray]:
        """Columns in table order: index, path (images from a folder), label, z0 ... z{d-1}."""
        out = {"index": self.index, **({"path": self.path} if self.path is not None else {}), "label": self.label}
        out.update({f"z{i}": self.codes[:, i] for i in range(self.codes.shape[1])})
        return out


def encode(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 2048,
           labels: torch.Tensor | None = None) -> np.ndarray:
    """Codes [N, d] of uint8 images [N, C, H, W] (model in eval mode; ``labels``: a conditional model's)."""
    return infer(model, images, terms=(), codes=True, batch_size=batch_size, labels=labels).codes


@torch.no_grad()
def decode(model: torch.nn.Module, codes: np.ndarray | torch.Tensor, batch_size: int | None = None,
           labels: torch.Tensor | np.ndarray | int | None = None, largest: int | None = None) -> torch.Tensor:
    """Images [N, C, H, W] in [0, 1] (on the CPU) decoded from codes [N, d], ``batch_size`` at a time
    (default: as many as ``inference.chunk_size`` allows at the model's image size, so that big
    images are decoded a few at a time); a conditional model draws them as the ``labels`` [N] (or one
    label for all; None: the classes in turn) say. ``largest``: each image shrunk (antialiased) to at
    most this on its longer side as it is decoded (pictures of big images: bounded memory)."""
    from .plots import thumbnails

    model.eval()
    device = next(model.parameters()).device
    config = model.config
    shape = (config.in_channels, config.image_size, config.image_width or config.image_size)
    batch_size = batch_size or chunk_size(shape)
    codes = torch.as_tensor(np.asarray(codes, dtype=np.float32))
    labels = conditions(model, len(codes), labels)
    out = []
    for i in range(0, len(codes), batch_size):
        images = model.decode(codes[i: i + batch_size].to(device),
                              None if labels is None else labels[i: i + batch_size].to(device)).float().cpu()
        out.append(images if largest is None else thumbnails(images, largest))  # (shrunk as it comes)
    return torch.cat(out) if out else torch.zeros((0, *shape))


def conditions(model: torch.nn.Module, n: int, labels: torch.Tensor | np.ndarray | int | None) -> torch.Tensor | None:
    """The labels [n] a conditional model decodes with: ``labels`` as given, one label for all, or
    (None) the classes in turn, 0, 1, ..., 0, 1, ...; None for a model that sees no label."""
    if not getattr(model, "conditional", False):
        return None
    if labels is None:
        return torch.arange(n) % model.config.n_classes
    if isinstance(labels, (int, np.integer)):
        if not 0 <= labels < model.config.n_classes:
            raise AelabError(f"`label` {labels} is not a class of the run (0 to {model.config.n_classes - 1}); choose "
                             "one of those")
        return torch.full((n,), int(labels))
    return torch.as_tensor(labels).long()


def embed(run: Run, data: ImageSet) -> Embedding:
    """The codes of every image of ``data`` under the run's model."""
    return Embedding(data.indices.numpy(), data.labels.numpy(), encode(run.model, data.images, labels=data.labels),
                     data.class_names,
                     data.paths)


def write_table(table: dict[str, np.ndarray], path: Path) -> Path:
    """Write columns as CSV, or as Parquet when ``path`` ends in .parquet (needs pyarrow)."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise AelabError("writing .parquet needs pyarrow: pip install 'aelab[parquet]' (or write a .csv)") from None
        atomic_save(path, lambda tmp: pq.write_table(pa.table(table), str(tmp)))
        return path

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(table))
            columns = [col.tolist() for col in table.values()]
            writer.writerows(zip(*columns))

    atomic_save(path, write)
    return path


# --- 2-D maps ----------------------------------------------------------------------------------

def stratified_subset(labels: np.ndarray, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Positions of at most ``max_points`` items, each label kept in proportion (sorted)."""
    if max_points is None or max_points >= len(labels):
        return np.arange(len(labels))
    if max_points < 1:
        raise AelabError(f"`max_points` must be at least 1, got {max_points}; try 3000")
    rng = np.random.default_rng(seed)
    chosen = []
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.floor(counts / counts.sum() * max_points).astype(int)
    for i in np.argsort(-(counts / counts.sum() * max_points - quotas))[: max_points - quotas.sum()]:
        quotas[i] += 1  # hand the remainder to the largest fractions
    for label, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def suggested_perplexity(n_points: int) -> float:
    """t-SNE's usual perplexity, 30, or less for a few points (it must stay below their number)."""
    return max(1.0, min(30.0, (n_points - 1) / 3))


def project(codes: np.ndarray, method: str, dims: tuple[int, int] = (0, 1), perplexity: float = 30.0,
            seed: int = 0, progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D coordinates [N, 2] of ``codes`` and the two axis names. ``progress(done, total)`` is told
    how far t-SNE's iterations are."""
    if method not in METHODS:
        raise AelabError(f"unknown map `method` {method!r}; choose one of {', '.join(METHODS)}")
    if method == "scatter":
        d = codes.shape[1]
        if len(dims) != 2 or not all(0 <= i < d for i in dims):
            raise AelabError(f"`dims` must be two latent variables between 0 and {d - 1}, got {dims}; try 0,1")
        return codes[:, list(dims)], (f"z{dims[0]}", f"z{dims[1]}")
    if method in NEIGHBOUR_MAPS and len(codes) < MIN_NEIGHBOUR_POINTS:
        raise AelabError(f"a {method} map needs {MIN_NEIGHBOUR_POINTS} images or more, and there are {len(codes)}; "
                         "map them with pca or scatter instead, or use a larger split")
    if codes.shape[1] < 2:
        return np.column_stack([codes[:, 0], np.zeros(len(codes))]), ("z0", "")
    if method == "pca":
        from sklearn.decomposition import PCA

        if len(codes) < 2:  # (one image: its place is the mean)
            return np.zeros((len(codes), 2)), ("PC1", "PC2")
        pca = PCA(n_components=2, random_state=seed).fit(codes)
        ratio = pca.explained_variance_ratio_
        return pca.transform(codes), (f"PC1 ({ratio[0]:.0%})", f"PC2 ({ratio[1]:.0%})")
    if method == "tsne":
        from sklearn.manifold import TSNE

        if not (1 <= perplexity < len(codes)):
            raise AelabError(f"`perplexity` must be at least 1 and less than the number of points ({len(codes)}), "
                             f"got {perplexity}; try {suggested_perplexity(len(codes)):g}")
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    verbose=2 if progress is not None else 0)
        iterations = getattr(tsne, "max_iter", None) or getattr(tsne, "n_iter", None) or 1000  # (scikit-learn < 1.5)
        with _iterations_to(progress, iterations):
            xy = tsne.fit_transform(codes.astype(np.float32))
        return xy, ("t-SNE 1", "t-SNE 2")
    try:
        import umap
    except ImportError:
        raise AelabError("the umap map needs umap-learn: pip install 'aelab[umap]'") from None
    log.info("UMAP of %d points ...", len(codes))
    reducer = umap.UMAP(n_components=2, random_state=seed)
    return reducer.fit_transform(codes), ("UMAP 1", "UMAP 2")


@contextlib.contextmanager
def _iterations_to(progress: Callable[[int, int], None] | None, total: int) -> Iterator[None]:
    """Within: what scikit-learn's t-SNE prints with ``verbose=2`` ("[t-SNE] Iteration 50: ...") is
    read instead of shown, and its iteration count told to ``progress(done, total)``."""
    if progress is None:
        yield
        return

    class Reader(io.TextIOBase):
        def write(self, text: str) -> int:
            for found in re.finditer(r"Iteration (\d+)", text):
                progress(min(total, int(found.group(1))), total)
            return len(text)

    with contextlib.redirect_stdout(Reader()):
        yield
    progress(total, total)


# --- decoding points ---------------------------------------------------------------------------

@dataclass
class LatentPlane:
    """A plane in latent space: ``origin + a * axis_a + b * axis_b`` for a in range_a, b in range_b."""

    origin: np.ndarray  # [d]
    axis_a: np.ndarray  # [d]
    axis_b: np.ndarray  # [d]
    range_a: tuple[float, float]
    range_b: tuple[float, float]
    names: tuple[str, str]  # the axes' names: ("PC1", "PC2") or ("z0", "z1")
    description: str = ""  # which plane it is, in words


    def points(self, n: int) -> np.ndarray:
        """n x n codes [n*n, d], row by row: b from high (top) to low, a from low (left) to high."""
        a_values = np.linspace(*self.range_a, n)
        b_values = np.linspace(*self.range_b, n)[::-1]
        a, b = np.meshgrid(a_values, b_values)
        return (self.origin + a.reshape(-1, 1) * self.axis_a + b.reshape(-1, 1) * self.axis_b).astype(np.float32)


def latent_plane(train_codes: np.ndarray, dims: tuple[int, int] | None = None,
                 percentiles: tuple[float, float] = (1.0, 99.0),
                 limits: tuple[float, float] | None = None) -> LatentPlane:
    """The plane to decode: the two latent variables ``dims`` (others at the mean code), or by
    default the plane of the first two principal components of the codes (centred on their mean);
    along each axis from the 1st to the 99th percentile of the codes (``percentiles``), or over
    ``limits`` (low, high) on both axes."""
    d = train_codes.shape[1]
    mean = train_codes.mean(axis=0)
    if d == 1:
        raise AelabError("a grid needs at least 2 latent dimensions; this run has 1: decode samples or an interpolation instead")
    if limits is not None and not (len(limits) == 2 and np.isfinite(limits).all() and limits[0] < limits[1]):
        raise AelabError(f"`range` must be two numbers, low then high, got {limits}; try -3 3")
    if dims is not None or d == 2:
        i, j = dims if dims is not None else (0, 1)
        if not (0 <= i < d and 0 <= j < d and i != j):
            raise AelabError(f"`dims` must be two different latent variables between 0 and {d - 1}, got {i},{j}; try 0,1")
        eye = np.eye(d, dtype=np.float32)
        origin = mean.copy()
        origin[[i, j]] = 0.0
        lo, hi = np.percentile(train_codes[:, [i, j]], percentiles, axis=0)
        words = f"latent variables z{i} and z{j}" + ("" if d == 2 else ", the others at the mean code")
        names = (f"z{i}", f"z{j}")
    else:
        centered = train_codes - mean
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        origin, (axis_i, axis_j) = mean, vt[:2]
        eye = None
        lo, hi = np.percentile(centered @ vt[:2].T, percentiles, axis=0)
        words = "the first two principal components of the codes (PC1, PC2: distances from the mean code)"
        names = ("PC1", "PC2")
    if limits is not None:
        lo, hi = np.array([limits[0]] * 2), np.array([limits[1]] * 2)
    a, b = (eye[i], eye[j]) if eye is not None else (axis_i, axis_j)
    return LatentPlane(origin, a, b, (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1])), names, words)


def grid_images(run: Run, plane: LatentPlane, n: int = 12, label: int | None = None,
                largest: int | None = None) -> torch.Tensor:
    """An n x n grid of decoded images [n*n, C, H, W] over ``plane``, row by row (``LatentPlane.points``;
    ``largest``: see ``decode``)."""
    if n < 2:
        raise AelabError(f"`n` must be at least 2, got {n}; try 12")
    return decode(run.model, plane.points(n), labels=label if label is not None else 0, largest=largest)


SAMPLERS = ("prior", "gmm")


def default_sampler(model: torch.nn.Module) -> str:
    """How new images are drawn unless told: from the prior N(0, I) for a variational model (it was
    trained to match it), else (an autoencoder has no prior) from a mixture fitted to its codes."""
    from .likelihood import is_variational

    return "prior" if is_variational(model) else "gmm"


def prior_images(run: Run, n_samples: int, seed: int = 0, label: int | None = None,
                 largest: int | None = None) -> torch.Tensor:
    """``n_samples`` images decoded from codes drawn from the prior N(0, I) (seeded); a conditional
    model's of class ``label`` (None: the classes in turn); ``largest``: see ``decode``."""
    if n_samples < 1:
        raise AelabError(f"`n_samples` must be at least 1, got {n_samples}; try 32")
    codes = torch.randn((n_samples, run.model.config.latent_dim), generator=torch.Generator().manual_seed(seed))
    return decode(run.model, codes, labels=label, largest=largest)


def traverse_images(run: Run, code: np.ndarray, scales: np.ndarray, steps: int = 9, span: float = 3.0,
                    dims: int = 16, label: int | None = None, largest: int | None = None) -> torch.Tensor:
    """Latent traversals around ``code`` [d]: for each of the first ``dims`` dimensions, ``steps``
    images decoded with that dimension moved from -span to +span times its ``scales`` [d] (the
    prior's standard deviation, 1, for a variational model; the training codes' otherwise), the
    others kept: [min(d, dims) * steps, C, H, W], a row per dimension (``largest``: see ``decode``)."""
    if steps < 2:
        raise AelabError(f"`steps` must be at least 2, got {steps}; try 9")
    shown = min(len(code), dims)
    offsets = np.linspace(-span, span, steps, dtype=np.float32)
    codes = np.repeat(np.asarray(code, np.float32)[None], shown * steps, 0)
    for dim in range(shown):
        codes[dim * steps: (dim + 1) * steps, dim] += offsets * float(scales[dim])
    return decode(run.model, codes, labels=label if label is not None else 0, largest=largest)


def sample_images(run: Run, train_codes: np.ndarray, n_samples: int, components: int = 10, seed: int = 0,
                  label: int | None = None, largest: int | None = None) -> torch.Tensor:
    """``n_samples`` new images decoded from codes drawn from a Gaussian mixture fitted to the codes
    (``largest``: see ``decode``)."""
    from sklearn.mixture import GaussianMixture

    if n_samples < 1:
        raise AelabError(f"`n_samples` must be at least 1, got {n_samples}; try 32")
    # reg_covar relative to the codes' scale keeps every covariance positive definite
    reg = 1e-4 * float(np.var(train_codes, axis=0).mean() or 1.0)
    mixture = GaussianMixture(n_components=min(components, len(train_codes)), covariance_type="full",
                              reg_covar=reg, random_state=seed).fit(train_codes)
    with warnings.catch_warnings():  # numpy's PSD check trips on rounding in a fitted covariance
        warnings.filterwarnings("ignore", message="covariance is not symmetric positive-semidefinite")
        codes, _ = mixture.sample(n_samples)
    order = np.random.default_rng(seed).permutation(n_samples)  # sample() groups by component
    return decode(run.model, codes[order], labels=label, largest=largest)


def interpolate_images(run: Run, data: ImageSet, first: int, second: int, steps: int = 10,
                       largest: int | None = None) -> torch.Tensor:
    """Images [steps, C, H, W] decoded along the straight line between the codes of two images
    (``largest``: see ``decode``)."""
    for position in (first, second):
        if not 0 <= position < len(data):
            raise AelabError(f"image {position} does not exist: the split has images 0 to {len(data) - 1}; choose one of those")
    if steps < 2:
        raise AelabError(f"`steps` must be at least 2, got {steps}; try 10")
    codes = encode(run.model, data.images[[first, second]], labels=data.labels[[first, second]])
    t = np.linspace(0, 1, steps, dtype=np.float32)[:, None]
    return decode(run.model, (1 - t) * codes[0] + t * codes[1], labels=int(data.labels[first]), largest=largest)
