"""Honest time: durations for a person, and the stages of a long job with the time so far and the
time left.

``Stages`` is what the report (and any job of a few known parts) uses: each stage has an expected
cost (seconds on a 2-core CPU, from the sizes of what it computes); when a stage starts, a line
says which it is, the time so far and the time left, the expected costs of the stages left scaled
by how the stages done compared with theirs. Lines go to the logger "aelab" (the command-line tool
shows them; the library never prints).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("aelab")


def duration(seconds: float) -> str:
    """``seconds`` for a person: "0.4 s", "12 s", "4 min 10 s", "1 h 5 min"."""
    seconds = max(0.0, float(seconds))
    if seconds < 9.5:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class Stages:
    """The stages of a job, in order, with their expected costs (``{name: seconds}``): ``start(name,
    words)`` says "JOB: WORDS (stage i of n; T so far, about L left)" and ``done()`` the whole time."""

    def __init__(self, job: str, costs: dict[str, float], bar: bool = False):
        self.job, self.costs = job, {name: max(1e-3, float(cost)) for name, cost in costs.items()}
        self.started = time.perf_counter()
        self.finished: list[str] = []  # the stages done
        self.current: str | None = None
        self.bar = None
        if bar:  # (a bar over the expected costs: tqdm says the time so far and the time left)
            from tqdm.auto import tqdm

            self.bar = tqdm(total=round(sum(self.costs.values()), 1), desc=job, unit="s of work",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        """The expected time of the stages not done (the current one included), scaled by how long the
        stages done took against their expected costs."""
        done = sum(self.costs[name] for name in self.finished)
        scale = self.elapsed() / done if done > 0 else 1.0
        return scale * sum(cost for name, cost in self.costs.items() if name not in self.finished)

    def revise(self, costs: dict[str, float]) -> None:
        """New expected costs of the stages not yet done (a better measure of what they take)."""
        self.costs.update({name: max(1e-3, float(cost)) for name, cost in costs.items()
                           if name in self.costs and name not in self.finished and name != self.current})
        if self.bar is not None:
            self.bar.total = round(sum(self.costs.values()), 1)
            self.bar.refresh()

    def start(self, name: str, words: str) -> None:
        """Stage ``name`` begins (the one before it is done): one line says what and when."""
        if self.current is not None:
            self.finished.append(self.current)
            if self.bar is not None:
                self.bar.update(self.costs[self.current])
        self.current = name
        number = list(self.costs).index(name) + 1
        if self.bar is not None:
            self.bar.set_description_str(f"{self.job}: {name}")
        log.info("%s: %s (%d of %d; %s so far, about %s left)", self.job, words, number, len(self.costs),
                 duration(self.elapsed()), duration(self.left()))

    def done(self) -> float:
        """The job is done: its whole time in seconds."""
        if self.current is not None:
            self.finished.append(self.current)
            self.current = None
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)  # (the whole job: 100%)
            self.bar.close()
            self.bar = None
        return self.elapsed()
