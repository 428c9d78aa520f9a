"""One training step, however it runs: eager, sharded over CPU threads, or as one CUDA graph.

``TrainStep`` is the one call the training loop makes (``step(index, noise)``: gather the batch,
add noise for a denoising run, forward, backward, optimizer step) and the one place that decides
how the step runs:

- a CUDA device, no input noise, a full batch: the whole step replayed as one captured CUDA graph
  (``CudaGraphStep``; ``AELAB_CUDA_GRAPHS=0`` turns it off);
- a CPU with ``shards`` > 1: the batch split over threads of their own (``ShardedStep``);
- under torchrun: this rank's slice of the batch, the gradients added across the ranks
  (``DistributedStep``);
- otherwise the eager step.

All of them compute the same model: the gradient of the batch's mean loss, one optimizer step.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from typing import Any, Callable, Iterator

import torch

from . import distributed
from .config import TrainConfig
from .data.batches import Batches, add_noise, augment_draw, binarize_draw, latent_draws

log = logging.getLogger("aelab")


# --- the loss: the model's own (``training_loss``) ---------------------------------------------

def forward_backward(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
                     weight: float = 1.0, forward: Callable[..., torch.Tensor] | None = None,
                     draws: torch.Tensor | None = None, progress: torch.Tensor | None = None,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
    """The model's ``training_loss`` on a batch (bf16 autocast if asked) and its gradient, times
    ``weight``, added to the parameters' ``.grad``; returns the (unweighted) loss, detached.
    ``forward``: what computes that loss (default: the model; under torchrun its DDP wrapper);
    ``draws``: the batch's rows of the model's random draws; ``progress``: epochs done (a 0-d tensor);
    ``labels``: the batch's labels (a conditional model's; else None)."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        loss = (forward if forward is not None else model.training_loss)(inputs, targets, draws, progress, labels)
    (loss * weight if weight != 1.0 else loss).backward()
    return loss.detach()


# --- choosing how the step runs -----------------------------------------------------------------

def resolve_shards(requested: int, device: torch.device, batch_size: int) -> int:
    """How many shards a batch is split into: ``requested``, or for 0 (auto) 2 on a CPU with 2 or
    more threads and batches of 128 or more, else 1. Always 1 off the CPU."""
    if device.type != "cpu":
        return 1
    if requested == 0:
        return 2 if torch.get_num_threads() >= 2 and batch_size >= 128 else 1
    return requested


def cuda_graphs_wanted(device: torch.device, noise_factor: float, redrawn: bool = False) -> bool:
    """CUDA graphs are used on CUDA devices for runs without input noise and without pixels drawn
    anew every epoch (``redrawn``: dynamic binarisation), unless AELAB_CUDA_GRAPHS=0."""
    return (device.type == "cuda" and noise_factor <= 0 and not redrawn
            and os.environ.get("AELAB_CUDA_GRAPHS", "1") != "0")


class TrainStep:
    """The training step of one run: ``step(index, noise)`` runs one optimizer step on the training
    images at ``index`` and returns the batch's mean loss (on the device, not synchronised).

    Use it as a context manager (the shard threads and the fp32 settings live inside it); a step
    called outside one starts the threads itself, and ``close()`` ends them.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                 config: TrainConfig, shards: int = 1, redrawn: bool = False, augment: list[str] | None = None):
        self.model, self.optimizer, self.batches, self.config = model, optimizer, batches, config
        self.augment = augment or []  # (the training images' changes: data.augment)
        device = batches.device
        self.progress = torch.zeros((), dtype=torch.float32, device=device)  # epochs done, for the model's objective
        # under torchrun the batch's shards are the ranks, not threads
        self.distributed = DistributedStep(model, optimizer, config, device) if distributed.active() else None
        wanted = cuda_graphs_wanted(device, config.noise_factor, redrawn) and batches.resident  # (it gathers on the GPU)
        self.graph = CudaGraphStep(model, optimizer, batches, config, self.progress) \
            if wanted and not self.distributed else None
        self.sharded = ShardedStep(model, optimizer, config, shards) if shards > 1 and not self.distributed else None
        self._fp32: contextlib.ExitStack | None = None

    def __enter__(self) -> "TrainStep":
        from .devices import plain_fp32

        self._fp32 = contextlib.ExitStack()
        self._fp32.enter_context(plain_fp32())
        if self.sharded is not None:
            self.sharded.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.sharded is not None:
            self.sharded.stop()
        if self._fp32 is not None:
            self._fp32.close()
            self._fp32 = None

    def all_threads(self) -> contextlib.AbstractContextManager:
        """Within: every intra-op thread for the calling thread again (for the validation pass)."""
        return self.sharded.all_threads() if self.sharded is not None else contextlib.nullcontext()

    def __call__(self, index: torch.Tensor, noise: torch.Generator | None = None,
                 draws: torch.Generator | None = None, progress: float = 0.0,
                 pixels: torch.Generator | None = None, changes: torch.Generator | None = None) -> torch.Tensor:
        """One step on the images at ``index``: ``noise`` draws a denoising run's input noise,
        ``draws`` the model's own random draws (``model.draw_shape``), ``pixels`` the binarised
        images of dynamic binarisation, ``changes`` the augmentation (``augment``: its names);
        ``progress`` is the epochs done so far (fractional: what a KL warm-up follows)."""
        self.progress.fill_(progress)
        rows = self.batches.rows(len(index))  # (under torchrun: this rank's slice of the batch)
        latent = latent_draws(getattr(self.model, "draw_shape", None), len(index), draws, self.batches.device)
        if self.graph is not None and len(index) == self.graph.batch_size:
            try:
                return self.graph(index, latent)
            except RuntimeError as error:  # capture failed: the step is put back, go on without graphs
                if self.graph.graph is not None:
                    raise
                log.warning("CUDA graph capture failed (%s); training without CUDA graphs", error)
                self.graph = None
        clean = self.batches.gather(index).contiguous(memory_format=torch.channels_last)  # [B, C, H, W]; free for C=1
        # (under torchrun: this rank's rows of the whole batch's pixel draws, noise and draws)
        if pixels is not None:
            clean = binarize_draw(clean, pixels, (rows[0], len(index)))
        if changes is not None:
            clean = augment_draw(clean, changes, self.augment, (rows[0], len(index))).contiguous(
                memory_format=torch.channels_last)
        inputs = add_noise(clean, self.config.noise_factor, noise, (rows[0], len(index))) if noise is not None else clean
        latent = latent[rows[0]: rows[1]] if latent is not None else None
        labels = self.batches.gather_labels(index)  # (a conditional model's; else None)
        if self.distributed is not None:
            return self.distributed(inputs, clean, len(index), latent, self.progress, labels)
        if self.sharded is not None:
            return self.sharded(inputs, clean, latent, self.progress, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(self.model, inputs, clean, self.config, draws=latent, progress=self.progress,
                                labels=labels)
        self.optimizer.step()
        return loss


# --- the whole step as one CUDA graph --------------------------------------------------------------

class CudaGraphStep:
    """A whole training step (batch gather, forward, loss, backward, Adam) captured as one CUDA graph.

    A model this small is limited on a GPU by launching its hundred-odd small kernels one by one
    from Python; replaying the captured graph launches them all at once. Only the batch's indices
    and the learning rate change between replays (both are copied into the graph's own tensors).
    Capture needs a few warm-up steps first; they run at learning rate 0 on a side stream, and the
    weights, BatchNorm statistics and optimizer state are then put back as they were, so the run
    computes what the eager loop computes.
    """

    WARMUP_STEPS = 3

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, config: TrainConfig,
                 progress: torch.Tensor):
        self.model, self.optimizer, self.batches, self.config = model, optimizer, batches, config
        self.batch_size = config.batch_size
        device = batches.device
        self.index = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        self.progress = progress  # (TrainStep fills it before each step)
        shape = getattr(model, "draw_shape", None)
        self.draws = torch.zeros((self.batch_size, *shape), device=device) if shape is not None else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None

    def _step(self) -> torch.Tensor:
        clean = self.batches.gather(self.index).contiguous(memory_format=torch.channels_last)
        loss = forward_backward(self.model, clean, clean, self.config, draws=self.draws, progress=self.progress,
                                labels=self.batches.gather_labels(self.index))
        self.optimizer.step()
        return loss

    def capture(self) -> None:
        model, optimizer, device = self.model, self.optimizer, self.batches.device
        saved_model = {name: value.clone() for name, value in model.state_dict().items()}
        saved_state = {param: {key: value.clone() for key, value in state.items() if torch.is_tensor(value)}
                       for param, state in optimizer.state.items()}
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = self.lr  # the captured Adam reads its rate from this tensor
        self.lr.zero_()
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    self._step()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)  # backward then writes the gradients into the graph's memory
            with torch.cuda.graph(graph):
                self.loss = self._step()
            self.graph = graph
        finally:
            for group, rate in zip(optimizer.param_groups, rates):
                group["lr"] = rate
            with torch.no_grad():
                model.load_state_dict(saved_model)  # copies in place: the graph keeps its tensors
                for param, state in optimizer.state.items():
                    for key, value in state.items():
                        if torch.is_tensor(value):
                            value.copy_(saved_state[param][key]) if param in saved_state else value.zero_()

    def __call__(self, index: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        """One step on the images at ``index`` (a full batch) with the model's ``draws`` for them;
        returns the loss (on the device)."""
        if self.graph is None:
            self.capture()  # (its warm-up steps run at rate 0 on whatever batch self.index holds)
        self.index.copy_(index)
        if draws is not None:
            self.draws.copy_(draws)
        self.lr.fill_(self.optimizer.param_groups[0]["lr"])
        self.graph.replay()
        return self.loss.clone()


# --- CPU data parallelism: shards of each batch on threads of their own -----------------------------

class ShardedStep:
    """One training step with the batch split into shards, one thread each, on the CPU.

    The model's small layers leave PyTorch's intra-op threads mostly waiting on each other; whole
    shards on threads of their own keep every core busy (1.08x on 2 cores, benchmarks/RESULTS.md).
    The replicas share the model's parameters, so their gradients add up in the parameters'
    ``.grad`` (each shard's loss is weighted by its share of the batch: the sum is the gradient of
    the batch's mean loss) and one optimizer step follows. Each replica has its own BatchNorm
    buffers and normalises with its shard's statistics, as multi-GPU data parallelism does; after
    each step the running statistics are averaged (weighted by shard size; for the running means
    this is exactly the whole-batch update) and copied back to every replica.

    ``start()`` / ``stop()`` (or ``with``) run the worker threads; a step before ``start()`` starts them.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, shards: int):
        self.optimizer, self.config, self.shards = optimizer, config, shards
        self.replicas = [model] + [self._share_parameters(copy.deepcopy(model), model) for _ in range(shards - 1)]
        self.buffers = [[b for b in replica.buffers() if b.is_floating_point()] for replica in self.replicas]
        self.threads_each = max(1, torch.get_num_threads() // shards)
        self.saved_threads = torch.get_num_threads()  # restored by stop()
        self.jobs: list[Any] = [None] * shards
        self.progress: torch.Tensor | None = None
        self.losses: list[torch.Tensor | None] = [None] * shards
        self.errors: list[BaseException] = []
        self.go = [threading.Semaphore(0) for _ in range(shards)]
        self.done = threading.Semaphore(0)
        self.workers: list[threading.Thread] = []

    @staticmethod
    def _share_parameters(replica: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
        for name, parameter in model.named_parameters():
            owner, _, attr = name.rpartition(".")
            replica.get_submodule(owner)._parameters[attr] = parameter
        return replica

    def start(self) -> None:
        """Start the worker threads (one per shard after the first) and set one intra-op thread each.

        The replicas take the model's BatchNorm statistics as they are now (a resumed run has loaded
        its checkpoint since the replicas were made)."""
        if self.workers:
            return
        with torch.no_grad():
            for k in range(1, self.shards):
                if self.buffers[0]:  # (a model without BatchNorm has none)
                    torch._foreach_copy_(self.buffers[k], self.buffers[0])
        self.saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads_each)
        self.workers = [threading.Thread(target=self._work, args=(k,), name=f"aelab-shard-{k}", daemon=True)
                        for k in range(1, self.shards)]
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        if not self.workers:
            return
        for k in range(1, self.shards):
            self.jobs[k] = None  # tells the worker to end
            self.go[k].release()
        for worker in self.workers:
            worker.join()
        self.workers = []
        torch.set_num_threads(self.saved_threads)

    def __enter__(self) -> "ShardedStep":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextlib.contextmanager
    def all_threads(self) -> Iterator[None]:
        """Within: the calling thread uses every intra-op thread again (for the validation pass)."""
        torch.set_num_threads(self.saved_threads)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads_each if self.workers else self.saved_threads)

    def _work(self, k: int) -> None:
        torch.set_num_threads(self.threads_each)
        while True:
            self.go[k].acquire()
            if self.jobs[k] is None:
                return
            try:
                self._shard(k)
            except BaseException as error:  # handed to the main thread
                self.errors.append(error)
            self.done.release()

    def _shard(self, k: int) -> None:
        inputs, targets, draws, labels, weight = self.jobs[k]
        self.losses[k] = forward_backward(self.replicas[k], inputs, targets, self.config, weight, draws=draws,
                                          progress=self.progress, labels=labels) * weight

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor | None = None,
                 progress: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Forward and backward of every shard (each with its rows of the model's ``draws``), then
        one optimizer step; returns the batch's mean loss."""
        self.start()
        self.progress = progress
        n = min(self.shards, len(inputs))
        bounds = [len(inputs) * k // n for k in range(n + 1)]
        for k in range(n):
            a, b = bounds[k], bounds[k + 1]
            self.jobs[k] = (inputs[a:b], targets[a:b], None if draws is None else draws[a:b],
                            None if labels is None else labels[a:b], (b - a) / len(inputs))
        self.optimizer.zero_grad(set_to_none=True)
        for k in range(1, n):
            self.go[k].release()
        try:
            self._shard(0)
        finally:
            for _ in range(1, n):
                self.done.acquire()
        if self.errors:
            error, self.errors[:] = self.errors[0], []
            raise error
        self.optimizer.step()
        self._merge_statistics(n, [self.jobs[k][4] for k in range(n)])
        return torch.stack([self.losses[k] for k in range(n)]).sum()

    @torch.no_grad()
    def _merge_statistics(self, n: int, weights: list[float]) -> None:
        merged = self.buffers[0]
        if not merged:  # a model without BatchNorm
            return
        if n > 1:
            torch._foreach_mul_(merged, weights[0])
            for k in range(1, n):
                torch._foreach_add_(merged, self.buffers[k], alpha=weights[k])
        for k in range(1, self.shards):
            torch._foreach_copy_(self.buffers[k], merged)


# --- torchrun: each rank one shard of the batch ------------------------------------------------------

class _Forward(torch.nn.Module):
    """The model's ``training_loss`` as a module's forward, for DDP to wrap."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor | None = None,
                progress: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.training_loss(inputs, targets, draws, progress, labels)


class DistributedStep:
    """One training step of a global batch across the ranks, with PyTorch's DistributedDataParallel.

    Rank r trains on its slice of the batch and normalises with its own BatchNorm statistics; DDP
    adds the gradients across the ranks (each rank's loss weighted by its share of the batch), and
    after the step the BatchNorm running statistics are averaged the way ``ShardedStep`` averages
    its shards': N ranks compute what one process with ``--shards N`` computes (a test compares
    them). This is not SyncBatchNorm, which would normalise with the whole batch's statistics.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 device: torch.device):
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        self.model, self.optimizer, self.config = model, optimizer, config
        self.size = distributed.world()[1]
        # each rank keeps its own BatchNorm statistics during a step (merged after it); they start equal
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
                   else {"broadcast_buffers": False})  # (the older name of the same setting)
        self.ddp = DistributedDataParallel(_Forward(model), **no_sync,
                                           device_ids=[device] if device.type == "cuda" else None)
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, n: int, draws: torch.Tensor | None = None,
                 progress: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Forward and backward of this rank's slice (``inputs``, ``targets``, the model's ``draws``)
        of a batch of ``n`` images, the gradients added across ranks, one optimizer step, the
        BatchNorm statistics merged; returns the batch's mean loss (the same on every rank)."""
        weight = len(inputs) / n
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages the gradients over the ranks: weighted by size, their sum is the whole batch's
        loss = forward_backward(self.model, inputs, targets, self.config, weight * self.size, forward=self.ddp,
                                draws=draws, progress=progress, labels=labels)
        self.optimizer.step()
        with torch.no_grad():
            shared = distributed.all_reduce(
                torch.cat([b.flatten() for b in self.buffers] + [loss.float().reshape(1)]) * weight)
            offset = 0
            for buffer in self.buffers:
                buffer.copy_(shared[offset: offset + buffer.numel()].view_as(buffer))
                offset += buffer.numel()
        return shared[-1]
