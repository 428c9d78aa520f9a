"""Processes under ``torchrun``: the process group, its collectives, and each rank's share.

Outside torchrun nothing here is used. Under it (with one process too, so that a single GPU runs
the code many run, NCCL included) every process joins one group: on GPUs NCCL for CUDA tensors
and gloo for CPU ones, on CPUs gloo; every collective reduces its tensors on the rank's device.
Every rank reads the same data and walks the same (seed, epoch) order of global batches
(``--batch-size`` stays the global batch); rank r trains on its slice of each batch, exactly the
rows the r-th shard of ``--shards N`` would take (``aelab.steps.DistributedStep``), and evaluates
only its ``share`` of the validation and test images (whole chunks of ``infer``, whose noise is
seeded by their place), the losses averaged across the ranks (``mean_across``).

Rank 0 alone reads and writes the run folder: it decides whether the run is new or resumed and
sends the other ranks the configuration and the checkpoint (``from_rank_0``), so a rank on a
machine that cannot see the run folder trains the same run.

This module is the lower layer: it knows nothing of models, steps or runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (torch is imported where it is used: the command line reads torchrun's environment here)
    import torch

_device: "torch.device | None" = None  # this rank's device, once it has joined the process group
_joined = False  # whether setup() made the process group (teardown() leaves a group the caller made)


def under_torchrun() -> bool:
    """Whether torchrun started this process (with any number of processes, one included)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    if not under_torchrun():
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def restarts() -> int:
    """How many times torchrun has restarted this run's processes (``--max-restarts``); 0 outside it."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) if under_torchrun() else 0


def active() -> bool:
    """Whether this process trains in a process group: under torchrun, even as its only process (so
    that one GPU runs the same code, NCCL included, as many)."""
    return under_torchrun()


def backend(device: torch.device) -> str:
    """The process group's backends: on GPUs NCCL for CUDA tensors and gloo for CPU ones (a CPU
    tensor given to an NCCL-only group fails), on CPUs gloo."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device) -> torch.device:
    """Join the process group once; the device this rank trains on (on GPUs, its local one), on
    which every collective of this module reduces its tensors."""
    import torch
    import torch.distributed as dist

    global _device, _joined
    rank, size, local = world()
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if restarts() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # after a restart the agent's store still holds the dead processes' addresses under the same
            # keys (pytorch/pytorch#167288: "connection refused"); each attempt takes keys of its own
            from datetime import timedelta

            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=size,
                                  is_master=False, timeout=timedelta(minutes=5))
            dist.init_process_group(backend(device), store=dist.PrefixStore(f"aelab-attempt-{restarts()}", store),
                                    rank=rank, world_size=size)
        else:
            dist.init_process_group(backend(device))
        _joined = True
    _device = device
    return device


def device() -> torch.device:
    """This rank's device (the CPU outside a process group)."""
    import torch

    return _device if _device is not None else torch.device("cpu")


def backend_name() -> str:
    """The process group's backend, as PyTorch names it ("gloo", "nccl", ...); "" outside one."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_initialized() else ""


def teardown() -> None:
    """Leave the process group that ``setup()`` made (before the process ends: an orderly exit on
    every rank; a group the caller made stays theirs). Every rank
    waits for the others first: one that left while rank 0 still wrote the run folder could abort
    in gloo's threads at exit ("terminate called without an active exception", seen 2 times in 16)."""
    import torch.distributed as dist

    global _device, _joined
    if dist.is_initialized() and _joined:
        barrier()
        dist.destroy_process_group()
    _device, _joined = None, False


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


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``values`` reduced over the ranks (sum or max), in place, on this rank's device; unchanged
    outside a process group. Every collective of aelab on tensors goes through here."""
    import torch.distributed as dist

    if dist.is_initialized():
        if values.device != device():
            raise ValueError(f"a collective of a {values.device} tensor in a group on {device()}")
        dist.all_reduce(values, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return values


def mean_across(values) -> float:
    """The mean of per-image ``values`` (a float64 array) over the images of every rank's share."""
    import torch

    sums = all_reduce(torch.tensor([float(values.sum()), float(len(values))], dtype=torch.float64, device=device()))
    return float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier(device_ids=[device().index] if device().type == "cuda" else None)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (every rank gets the same answer): so that a signal seen
    by one rank stops all of them at the same step."""
    import torch

    value = torch.tensor([1.0 if flag else 0.0], device=device())
    return bool(all_reduce(value, "max").item())


def from_rank_0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object; rank 0's own elsewhere ignored):
    what rank 0 alone decides from the run folder, so that the other ranks need not see it."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value if world()[0] == 0 else None]
    dist.broadcast_object_list(box, src=0, device=device() if device().type == "cuda" else None)
    return box[0]


def raise_together(error: Exception | None) -> None:
    """Stop every rank when any met an error (``error``: this rank's, None where it met none), so
    that no rank waits for ever in a collective for one that stopped: a rank raises its own error,
    or an AelabError with the first other rank's message and that rank's number. Outside torchrun:
    ``error`` raised, if any."""
    from .errors import AelabError

    found = gathered(None if error is None else str(error))
    if error is not None:
        raise error
    failed = next((rank for rank, message in enumerate(found) if message is not None), None)
    if failed is not None:
        raise AelabError(f"rank {failed} under torchrun: {found[failed]}")


def gathered(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * world()[1]
    dist.all_gather_object(out, value)
    return out
