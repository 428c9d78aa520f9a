"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig
from .steps import cuda_graphs_wanted


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam with the run's rate and weight decay; fused on CPU and CUDA, capturable for CUDA graphs."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type in ("cpu", "cuda") or None,
                            capturable=cuda_graphs_wanted(device, cfg.noise_factor))


def one_cycle(step: int, total_steps: int, warmup: float = 0.25, start_div: float = 25.0,
              final_div: float = 1e4) -> float:
    """Multiplier of the peak rate: cosine up from 1/start_div, then cosine down to 1/final_div."""
    peak_step = max(1, int(total_steps * warmup))
    if step < peak_step:
        low, high, t = 1.0 / start_div, 1.0, step / peak_step
    else:
        low, high, t = 1.0, 1.0 / final_div, (step - peak_step) / max(1, total_steps - peak_step)
    return high + (low - high) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int):
    """``onecycle``: ``one_cycle`` over ``total_steps``; ``constant``: the rate as it is."""
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: one_cycle(step, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
