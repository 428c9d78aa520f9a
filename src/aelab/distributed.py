"""Training across processes under ``torchrun``: PyTorch's DistributedDataParallel, aelab's batches.

Outside torchrun (no ``WORLD_SIZE`` above 1 in the environment) nothing here is used. Under it,
every process (rank) reads the same data and walks the same (seed, epoch) order of global batches
(``--batch-size`` stays the global batch); rank r trains on its slice of each batch, exactly the
rows the r-th shard of ``--shards N`` would take, and normalises with its own BatchNorm
statistics. The gradients are added across ranks by DDP (each rank's loss weighted by its share of
the batch) and after each step the BatchNorm running statistics are averaged the way ``--shards``
averages them, so N ranks compute what one process with ``--shards N`` computes (a test compares
them). This is not SyncBatchNorm, which would normalise with the whole batch's statistics.

A rank gathers only its slice of each batch (``Batches(part=...)``), with its rows of the batch's
noise, and evaluates only its ``share`` of the validation and test images (whole chunks of
``infer``, whose noise is seeded by their place), the losses averaged across the ranks
(``mean_across``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .config import TrainConfig


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0"))


def restarts() -> int:
    """How many times torchrun has restarted this run's processes (``--max-restarts``); 0 outside it."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) if world()[1] > 1 else 0


def active() -> bool:
    return world()[1] > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPUs) once; the device this rank trains on."""
    import torch.distributed as dist

    rank, size, local = world()
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if restarts() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # after a restart the agent's store still holds the dead processes' addresses under the same
            # keys (pytorch/pytorch#167288: "connection refused"); each attempt takes keys of its own
            from datetime import timedelta

            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=size,
                                  is_master=False, timeout=timedelta(minutes=5))
            dist.init_process_group(backend, store=dist.PrefixStore(f"aelab-attempt-{restarts()}", store),
                                    rank=rank, world_size=size)
        else:
            dist.init_process_group(backend)
    return device


def teardown() -> None:
    """Leave the process group (before the process ends: an orderly exit on every rank). Every rank
    waits for the others first: one that left while rank 0 still wrote the run folder could abort
    in gloo's threads at exit ("terminate called without an active exception", seen 2 times in 16)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_size() -> int:
    """How many of this run's processes share this machine (torchrun's LOCAL_WORLD_SIZE); 1 outside torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if active() else 1


def share(total: int, chunk: int) -> tuple[int, int]:
    """(start, stop): this rank's rows of a set of ``total`` images evaluated in chunks of ``chunk``
    images: whole chunks, one contiguous run of them per rank, every row in one rank's share (all
    rows outside torchrun)."""
    rank, size, _ = world()
    chunks = -(-total // chunk)
    return min(total, chunks * rank // size * chunk), min(total, chunks * (rank + 1) // size * chunk)


def mean_across(values, device: torch.device) -> float:
    """The mean of per-image ``values`` (a float64 array) over the images of every rank's share."""
    import torch.distributed as dist

    sums = torch.tensor([float(values.sum()), float(len(values))], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(sums)
    return float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (every rank gets the same answer): so that a signal seen
    by one rank stops all of them at the same step."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class _Forward(nn.Module):
    """``steps.model_output`` as a module, for DDP to wrap."""

    def __init__(self, model: nn.Module, loss: str):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .steps import model_output

        return model_output(self.model, x, self.loss)


class DistributedStep:
    """One training step of a global batch across the ranks (see the module's docstring)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        self.model, self.optimizer, self.config = model, optimizer, config
        self.size = world()[1]
        import inspect

        # each rank keeps its own BatchNorm statistics during a step (merged after it); they start equal
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
                   else {"broadcast_buffers": False})  # (the older name of the same setting)
        self.ddp = DistributedDataParallel(_Forward(model, config.loss), **no_sync,
                                           device_ids=[device] if device.type == "cuda" else None)
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
        """Forward and backward of this rank's slice (``inputs``, ``targets``) of a batch of ``n``
        images, the gradients added across ranks, one optimizer step, the BatchNorm statistics
        merged; returns the batch's mean loss (the same on every rank)."""
        import torch.distributed as dist

        from .steps import forward_backward

        weight = len(inputs) / n
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages the gradients over the ranks: weighted by size, their sum is the whole batch's
        loss = forward_backward(self.model, inputs, targets, self.config, weight * self.size, forward=self.ddp)
        self.optimizer.step()
        with torch.no_grad():
            shared = torch.cat([b.flatten() for b in self.buffers] + [loss.float().reshape(1)]) * weight
            dist.all_reduce(shared)
            offset = 0
            for buffer in self.buffers:
                buffer.copy_(shared[offset: offset + buffer.numel()].view_as(buffer))
                offset += buffer.numel()
        return shared[-1]
