"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig
from .steps import cuda_graphs_wanted


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                   redrawn: bool = False) -> torch.optim.Adam:
    """Adam with the run's rate and weight decay; fused on CPU and CUDA, capturable for CUDA graphs
    (``redrawn``: pixels drawn anew every epoch, which the graph does not capture).
    On a CPU its steps also keep subnormal numbers out of the model (``keep_subnormals_out``)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=device.type in ("cpu", "cuda") or None,
                                 capturable=cuda_graphs_wanted(device, cfg.noise_factor, redrawn))
    if device.type == "cpu":  # (GPUs compute on subnormals at full speed; a CUDA graph captures the step)
        keep_subnormals_out(model, optimizer)
    return optimizer


ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def keep_subnormals_out(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """After each step of ``optimizer``, set to 0 every subnormal value (magnitude below
    ``torch.finfo(dtype).tiny``, not 0) in ``model``'s parameters and floating buffers and in
    Adam's moments; every other value, NaN included, stays as it is (a zero's sign may not).

    Weight decay shrinks the weights of units that no longer receive a gradient, and their Adam
    moments with them, down into subnormal floats (after the default run's 30 epochs, 35 % of
    ``decoder_lin.2.weight`` and 17 % of ``encoder_lin.0.weight``). Intel CPUs compute on those
    through slow microcode assists (on a Xeon one step took 20.4 ms with them, 14.6 ms with them
    zeroed), unless flush-to-zero is on; that setting is per thread and belongs to the user's
    process, so the library zeroes the numbers instead. Once 0, such a weight stays 0 (its
    gradient is exactly 0). Done after every step (0.4 ms for the tutorial's model on a 2-core
    EPYC), so every step kind (eager, sharded, torchrun) and any resumed run hold no subnormal
    after a step (benchmarks/RESULTS.md, "Subnormal weights")."""
    flushed: list[tuple[torch.Tensor, float]] = []  # each tensor with its largest subnormal
    states = -1  # how many parameters had an optimizer state when `flushed` was made (-1: make it again)

    def flush(*_) -> None:
        nonlocal flushed, states
        if states != len(optimizer.state):  # Adam makes a parameter's moments at its first step
            tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
            tensors += [state[key] for state in optimizer.state.values() for key in ADAM_MOMENTS if key in state]
            flushed = [(t, torch.finfo(t.dtype).tiny * (1 - torch.finfo(t.dtype).eps)) for t in tensors]
            states = len(optimizer.state)
        with torch.no_grad():
            for tensor, largest_subnormal in flushed:  # hardshrink: 0 where |x| <= the bound, in one kernel
                torch.hardshrink(tensor, largest_subnormal, out=tensor)

    def forget(*_) -> None:  # a loaded state brings tensors of its own
        nonlocal states
        states = -1

    optimizer.register_step_post_hook(flush)
    optimizer.register_load_state_dict_post_hook(forget)


WARMUP = 0.25  # share of a cycle's steps spent rising to its peak
START_DIV, FINAL_DIV = 25.0, 1e4  # a cycle starts at 1/25 of the peak and ends at 1e-4 of it
EXTENSION_PEAK = 0.25  # an extension's cycle rises to this share of the first peak (benchmarks/RESULTS.md:
# of 1e-4, 0.03, 0.1 and 0.25, the best test MSE after MNIST 30 -> 40 epochs, and better than the rule before)


def cosine(step: int, start: int, end: int, first: float, last: float) -> float:
    """From ``first`` at ``start`` to ``last`` at ``end`` along half a cosine (``last`` beyond)."""
    t = (step - start) / max(1, end - start)
    return last + (first - last) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


class Schedule:
    """The learning rate as a multiplier of ``train.lr`` at each optimizer step: pieces of half a
    cosine, ``[start, end, first, last]``; at each step the last piece that has started (its
    ``last`` value beyond its end; no pieces: the rate as it is, the constant schedule).

    A run's schedule is planned once and saved with its checkpoints, so resuming never changes
    the steps already planned. Extending a run past its plan (``--resume RUN --epochs N``) appends
    a cycle of its own: up from where the rate ended to ``EXTENSION_PEAK`` of the peak, and down
    to the same end, so the added epochs start where the run stopped, with no jump of the rate.
    Shortening a run (fewer epochs than planned, more than trained) ends the current cycle early,
    down from the rate of the current step to the cycle's end.
    """

    def __init__(self, pieces: list[list[float]] | None = None, total: int = 0):
        self.pieces = [list(piece) for piece in pieces or []]
        self.total = total  # the optimizer steps it is planned for

    def state(self) -> dict:
        """What a checkpoint keeps of it (numbers and lists only)."""
        return {"pieces": [list(piece) for piece in self.pieces], "total": self.total}

    @classmethod
    def from_state(cls, state: dict) -> "Schedule":
        return cls(state["pieces"], int(state["total"]))

    @classmethod
    def one_cycle(cls, total_steps: int, warmup: float = WARMUP, start_div: float = START_DIV,
                  final_div: float = FINAL_DIV, peak: float = 1.0, start: int = 0,
                  first: float | None = None) -> "Schedule":
        """One cycle over ``total_steps`` steps from ``start``: up from ``first`` (default
        ``peak / start_div``) to ``peak``, then down to 1/``final_div``."""
        top = start + max(1, int(total_steps * warmup))
        first = peak / start_div if first is None else first
        end = top + max(1, start + total_steps - top)  # (a cycle of fewer than 4 steps still ends low)
        return cls([[start, top, first, peak], [top, end, peak, 1.0 / final_div]], start + total_steps)

    @classmethod
    def planned(cls, schedule: str, total_steps: int) -> "Schedule":
        """A new run's schedule: ``onecycle`` over ``total_steps``, or ``constant``."""
        return cls.one_cycle(total_steps) if schedule == "onecycle" else cls(total=total_steps)

    def __call__(self, step: int) -> float:
        current = None
        for piece in self.pieces:  # the last piece that has started
            if piece[0] > step:
                break
            current = piece
        return 1.0 if current is None else cosine(step, *current)

    def resized(self, step: int, total_steps: int) -> "Schedule":
        """This schedule for a run that is at ``step`` and now ends at ``total_steps``."""
        if not self.pieces or total_steps == self.total:
            return Schedule(self.pieces, total_steps)
        last = self.pieces[-1][3]
        if total_steps > self.total:  # extended: a smaller cycle of its own after the planned ones, from the
            # step after the planned end (the planned end's rate, `last`, is exactly what it was)
            added = Schedule.one_cycle(total_steps - self.total - 1, peak=EXTENSION_PEAK, start=self.total + 1,
                                       first=last, final_div=1.0 / last)
            return Schedule(self.pieces + added.pieces, total_steps)
        kept = [piece for piece in self.pieces if piece[0] <= step]  # shortened: down from the next step to the end
        if step < total_steps:
            kept.append([step + 1, total_steps, self(step + 1), last])
        return Schedule(kept, total_steps)


    def highest(self, start: int = 0) -> float:
        """The highest multiplier from step ``start`` to the end (each piece is monotone: its ends
        and the start decide)."""
        steps = {start, self.total} | {step for piece in self.pieces for step in piece[:2]
                                       if start <= step <= self.total}
        return max(self(step) for step in steps)


def describe_change(before: Schedule, after: Schedule, step: int, steps_per_epoch: int, lr: float) -> str:
    """How resizing ``before`` (at ``step``) into ``after`` changes the rate, in a sentence: the
    added epochs' cycle, or the end brought forward (and the planned peak never reached)."""
    done, into = divmod(step, steps_per_epoch)
    where = f"after epoch {done}" if not into else f"at epoch {done + 1}, step {into}"
    planned, now = before.total // steps_per_epoch, after.total // steps_per_epoch
    if not before.pieces:
        return f"the run had planned {planned} epochs and now trains {now} (at the constant rate {lr:g})"
    if after.total > before.total:
        start, top = lr * after(before.total + 1), lr * after.highest(before.total + 1)
        if top <= start * (1 + 1e-9):  # (a cycle of a step or two has no room to rise)
            return f"the run had planned {planned} epochs; the {now - planned} added go on at the rate {start:.2g}"
        return (f"the run had planned {planned} epochs; the {now - planned} added get a cycle of their own: the rate "
                f"rises from {start:.2g} to {top:.2g} and falls back to {lr * after(after.total):.2g}")
    said = (f"the run had planned {planned} epochs and stops at epoch {now} instead: {where} the rate falls from "
            f"{lr * after(step):.2g} to {lr * after(after.total):.2g}")
    peak = before.highest(step)
    if peak > after.highest(step) * (1 + 1e-9):
        said += f" and never reaches the peak of {lr * peak:.2g} planned (its highest: {lr * after.highest():.2g})"
    return said


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimizer's rate at each step: ``train.lr`` times ``schedule(step)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))
