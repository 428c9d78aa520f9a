"""A run's memory known before it is spent: an estimate of its peak from its settings, said when
training starts, and a refusal, naming the setting to change, when it would not fit.

The estimate is of the training process's resident memory at its peak: what it holds now (the
interpreter, PyTorch, the images read; ``aelab.memory``), and what training, the PCA baseline and
the report add to it. The training step's share is counted, not guessed: the model is run once on
PyTorch's "meta" device (shapes only, no memory, milliseconds) and the tensors it keeps for the
backward pass are added up; the factors that turn that count into resident memory were measured on
a 2-core CPU (benchmarks/RESULTS.md, "Memory").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import RunConfig
from .errors import AelabError
from .evaluation import pca_sample
from .memory import available, peak_so_far, resident, size_text
from .models.nets import MAX_FEATURES
from .models.registry import build_model
from .scores import FIT_IMAGES

# resident memory per byte the training step keeps for its backward pass (the activations, their gradients,
# oneDNN's buffers), per byte of the model's parameters (weights, gradients, Adam's two moments, the best
# weights, a checkpoint being written) and the libraries training loads as it goes (scikit-learn, matplotlib):
# fitted on measured peaks, with room to spare (benchmarks/memory.py, benchmarks/RESULTS.md)
PER_SAVED_BYTE = 1.3
PER_PARAMETER_BYTE = 10
LIBRARIES = 400 * 2**20
REPORT_PAGES = 150 * 2**20  # the report's pictures, maps and page
REPORT_BYTES_PER_PIXEL = 500  # ... and its figures of a few images at full size (the anomalies': 8 images, 3 rows)
# the per-image work after training (the PCA baseline on the images pca_sample gives, float32, with
# scikit-learn's copies; the report's anomaly features of up to FIT_IMAGES images)
PCA_COPIES = 3


def step_bytes(config: RunConfig, batch: int | None = None) -> tuple[int, int]:
    """(bytes a training step keeps for its backward pass, bytes of the model's parameters) for a
    batch of ``batch`` images (default: the run's batch): counted on the meta device."""
    model_config = config.model
    with torch.device("meta"):
        model = build_model(model_config, config.train.loss)
    shape = (batch or config.train.batch_size, model_config.in_channels, model_config.image_size,
             model_config.image_width or model_config.image_size)
    inputs = torch.rand(shape, device="meta")
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()  # (each storage once: an in-place ReLU saves what it was given)
        return tensor

    draws = torch.randn((shape[0], *model.draw_shape), device="meta") if model.draw_shape is not None else None
    labels = torch.zeros(shape[0], dtype=torch.long, device="meta") if model.conditional else None
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model.training_loss(inputs, inputs, draws, torch.zeros((), device="meta"), labels)
    storages[0] = 2 * inputs.numel() * inputs.element_size()  # (the batch as floats, and its target)
    parameters = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    return sum(storages.values()), parameters


@dataclass
class Estimate:
    """A run's peak memory: what the process holds now and what each part of the run adds."""

    now: int  # resident now
    parts: dict[str, int]  # what training, the PCA baseline and the report add at their peaks
    peak_before: int  # the peak so far (reading and decoding the images may have passed what is held now)
    batch: int  # the images of a training batch (the batch size, or all the training images where fewer)
    images: int = 0  # of ``now``: the images held in memory (read from the cache on disk instead below the limit)
    sizes: tuple[int, int] = (0, 0)  # the training images and those the PCA baseline and the report measure
    device: str = "cpu"  # where training runs: on a GPU the training step's share is the GPU's (``gpu``)
    gpu: int = 0  # what training takes of a GPU's memory (0 on the CPU)

    @property
    def peak(self) -> int:
        """Training's own peak, then the larger of what comes after it (they do not overlap)."""
        after = max((value for name, value in self.parts.items() if name != "training"), default=0)
        return max(self.peak_before, self.now + self.parts.get("training", 0) + after)

    def line(self, limit: int, what_limit: str, gpu_free: int | None = None) -> str:
        parts = ", ".join(f"{name} about {size_text(value)}" for name, value in self.parts.items())
        gpu = f"; the GPU about {size_text(self.gpu)} of its {size_text(gpu_free or 0)} free" if self.gpu else ""
        return (f"memory: about {size_text(self.peak)} at the peak ({size_text(self.now)} now, with PyTorch and the "
                f"images; {parts}); {size_text(limit)} {what_limit}{gpu}")


def estimate(config: RunConfig, n_train: int, test_images: int, *, batch: int | None = None,
             images: int = 0, device: str = "cpu") -> Estimate:
    """The peak memory of training ``config`` (its model sized for the images) on ``n_train``
    images, then writing its PCA baseline and report (``test_images``: the split they measure);
    ``images``: the bytes of images held in memory now; on a CUDA ``device`` the training step's
    share (and the training images) are the GPU's."""
    batch = min(batch or config.train.batch_size, max(1, n_train))  # (fewer images than a batch: every batch is all)
    saved, parameters = step_bytes(config, batch)
    pixels = config.model.image_size * (config.model.image_width or config.model.image_size)
    values = config.model.in_channels * pixels
    count = pca_sample(n_train, config.model.latent_dim, values)[0]  # (the images PCA is fitted on)
    pca = PCA_COPIES * 4 * count * values + 4 * values * min(test_images, max(1, 4_000_000 // values))
    report = (REPORT_PAGES + REPORT_BYTES_PER_PIXEL * pixels + 3 * 8 * min(n_train, FIT_IMAGES) * MAX_FEATURES
              + parameters * 8)
    step = _training_bytes(saved, parameters) - LIBRARIES
    gpu = step + images if str(device).startswith("cuda") else 0  # (the whole sets live on the GPU there)
    return Estimate(resident(), {"training": LIBRARIES + (0 if gpu else step), "the PCA baseline": pca,
                                 "the report": report}, peak_so_far(), batch, images, (n_train, test_images),
                    str(device), gpu)


def limit(processes: int = 1) -> tuple[int, str]:
    """The memory a run may use at its peak, and what it is, in words: what this process holds now
    and the share of what the machine has available that is this process's (under torchrun its
    processes share it)."""
    return resident() + available() // processes, "is available on this machine"


def gpu_free(device: str) -> int | None:
    """The free memory of a CUDA ``device`` (None for another device)."""
    if not str(device).startswith("cuda"):
        return None
    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def check(found: Estimate, allowed: int, what_limit: str, config: RunConfig, replan=None,
          gpu_allowed: int | None = None) -> None:
    """Refuse a run whose ``found`` peak is above ``allowed``, naming what to change: a batch size
    and an image size that fit (``replan(height, width)``: the config the data would choose at that
    size; None: no image size is suggested), and a `data.memory_limit` that leaves the images on disk
    where that is enough (else a machine with more memory). On a GPU, its training share is checked
    against ``gpu_allowed`` too."""
    def fits(tried: Estimate) -> bool:
        return tried.peak <= allowed and (not tried.gpu or gpu_allowed is None or tried.gpu <= gpu_allowed)

    if fits(found):
        return
    model = config.model
    height, width = model.image_size, model.image_width or model.image_size
    fixes = []
    batch = found.batch
    while batch > 1:
        batch //= 2
        tried = estimate(config, *found.sizes, batch=batch, images=found.images, device=found.device)
        if fits(tried):
            fixes.append(f"`train.batch_size` {batch} (about {size_text(tried.peak)})")
            break
    if replan is not None:
        side = max(height, width)
        while side > 16:
            side //= 2
            scale = side / max(height, width)
            smaller = replan(max(16, round(height * scale)), max(16, round(width * scale)))
            tried = estimate(smaller, *found.sizes, batch=found.batch, images=found.images, device=found.device)
            if fits(tried):
                wide = smaller.model.image_width
                size = str(smaller.model.image_size) + (f"x{wide}" if wide else "")
                fixes.append(f"`data.image_size` {size} (about {size_text(tried.peak)})")
                break
    if found.images and found.peak - found.images <= allowed:  # (the images read from disk instead: `memory_limit`)
        fixes.append(f"a `data.memory_limit` below the images' {size_text(found.images)}, so that they are read from "
                     "the cache on disk batch by batch")
    else:
        fixes.append("a machine with more memory")
    if found.peak <= allowed:  # (the GPU's memory is what is short)
        raise AelabError(f"this run would need about {size_text(found.gpu)} of the GPU's memory (training a batch of "
                         f"{found.batch} images of {model.in_channels} x {height} x {width}), and it has "
                         f"{size_text(gpu_allowed or 0)} free; choose " + "; or ".join(fixes[:-1] or ["a larger GPU"]))
    raise AelabError(f"this run would need about {size_text(found.peak)} of memory at its peak (training a batch of "
                     f"{found.batch} images of {model.in_channels} x {height} x {width} alone about "
                     f"{size_text(found.parts['training'])}), and {size_text(allowed)} {what_limit}; choose "
                     + "; or ".join(fixes))


def _training_bytes(saved: int, parameters: int) -> int:
    """What training adds at its peak, from what a step keeps for its backward pass and the parameters."""
    return LIBRARIES + int(PER_SAVED_BYTE * saved) + PER_PARAMETER_BYTE * parameters
