"""Extending a finished run (``--resume RUN --epochs N``): which learning-rate rule for the added epochs.

    .venv/bin/python benchmarks/extend.py                        # seeds 0 and 1, 30 -> 40 epochs, every rule
    .venv/bin/python benchmarks/extend.py --seeds 0 --peaks 0.1 --no-fresh   # a quicker look

For each seed: the default run (the fast recipe, latent size 4, MNIST) for ``--epochs`` epochs;
then, for each rule, a copy of that run folder (without .lock) resumed to ``--to`` epochs:
- ``peak=P`` for each P in ``--peaks``: the rule in aelab.optim (the schedule planned for the first
  epochs is kept; the added epochs get a one-cycle of their own from the end rate up to P of the
  peak and down again), with ``aelab.optim.EXTENSION_PEAK = P``; P = 1e-4 (the end rate) holds the
  rate where the run ended: no new cycle;
- ``old``: the rule before it, the one-cycle rebuilt for ``--to`` epochs (the rate jumps from 1e-4
  of the peak to where that longer cycle is at the resumed step: a quarter of the peak for 30 -> 40);
and a fresh ``--to``-epoch run for reference.

``train.keep`` is "best": the test MSE is that of the epoch with the lowest validation loss; the
last epoch's validation loss and its test MSE (measured at the end of the last epoch) are reported
too. Results go to benchmarks/out/extend-DATE.json (rewritten after each run) and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

from machine import cpu_name  # (benchmarks/machine.py)

HERE = Path(__file__).resolve().parent


def last_test_callback():
    """A callback that keeps the test MSE of the weights at the end of the last epoch (before
    ``train.keep`` = best puts the best epoch's weights back), and the rate of the first step it
    sees and the highest rate of the steps it sees (a resumed run: the added steps)."""
    from aelab.callbacks import Callback

    class LastTest(Callback):
        def __init__(self):
            self.test_mse = None
            self.first_lr = self.max_lr = None

        def on_step_end(self, trainer):  # (after the scheduler's step: the rate of the next step; the
            # first step after a resume runs at the saved rate, the schedule's from the second on)
            lr = trainer.optimizer.param_groups[0]["lr"]
            lr = float(lr)  # (a tensor when the optimizer is capturable)
            self.first_lr = lr if self.first_lr is None else self.first_lr
            self.max_lr = lr if self.max_lr is None else max(self.max_lr, lr)

        def on_epoch_end(self, trainer, row):
            if trainer.epoch == trainer.config.train.epochs and "test" in trainer.evaluated:
                self.test_mse = trainer.loss("test", "mse")

    return LastTest()


def summary(result, last, seconds: float, first_added: int | None = None) -> dict:
    metrics = result.metrics
    added = metrics[first_added:] if first_added is not None else []
    return {"test_mse": result.evaluation["test_mse"], "val_mse": result.evaluation["val_mse"],
            "best_epoch": result.evaluation["best_epoch"], "epochs": len(metrics),
            "last_val_loss": metrics[-1]["val_loss"], "last_test_mse": last.test_mse,
            "best_val_loss": min(row["val_loss"] for row in metrics),
            "first_step_lr": last.first_lr, "max_step_lr": last.max_lr,
            "added": [{"epoch": row["epoch"], "val_loss": row["val_loss"], "lr": row["lr"]} for row in added],
            "seconds": round(seconds, 1)}


def extend(base: Path, work: Path, rule: str, seed: int, args) -> dict:
    import aelab.optim as optim
    from aelab import RunConfig, train
    from aelab.config import train_config_for

    copy = work / f"seed{seed}-{rule}"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(base, copy, ignore=shutil.ignore_patterns(".lock"))
    saved_peak, saved_resized = optim.EXTENSION_PEAK, optim.Schedule.resized
    try:
        if rule == "old":  # the rule before: the one-cycle rebuilt for the new number of epochs
            optim.Schedule.resized = lambda self, step, total: optim.Schedule.planned("onecycle", total)
        else:
            optim.EXTENSION_PEAK = float(rule.removeprefix("peak="))
        last = last_test_callback()
        start = time.perf_counter()
        result = train(RunConfig(train=train_config_for("fast", epochs=args.to, seed=seed)), out=copy, resume=True,
                       explicit={"train.epochs"}, report=False, callbacks=[last], progress=False)
        seconds = time.perf_counter() - start
    finally:
        optim.EXTENSION_PEAK, optim.Schedule.resized = saved_peak, saved_resized
    row = summary(result, last, seconds, first_added=args.epochs)
    if not args.keep_runs:
        shutil.rmtree(copy, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=30, help="the finished run's epochs")
    parser.add_argument("--to", type=int, default=40, help="the epochs it is extended to")
    parser.add_argument("--peaks", nargs="+", type=float, default=[1e-4, 0.03, 0.1, 0.25],
                        help="values of aelab.optim.EXTENSION_PEAK to try (1e-4: hold the end rate)")
    parser.add_argument("--no-old", action="store_true", help="skip the rule before (the cycle rebuilt)")
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh --to-epoch reference run")
    parser.add_argument("--keep-runs", action="store_true", help="keep the run folders under benchmarks/out/extend-runs")
    args = parser.parse_args()
    import logging

    import torch

    from aelab import RunConfig, train
    from aelab.config import train_config_for

    logging.getLogger("aelab").setLevel(logging.WARNING)
    work = HERE / "out" / "extend-runs"
    work.mkdir(parents=True, exist_ok=True)
    out = HERE / "out" / f"extend-{datetime.datetime.now():%Y%m%d-%H%M}.json"
    rules = [f"peak={peak:g}" for peak in args.peaks] + ([] if args.no_old else ["old"])
    record = {"args": vars(args), "cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "seeds": {}}

    def save() -> None:
        out.write_text(json.dumps(record, indent=1))

    def fresh_run(folder: Path, epochs: int, seed: int) -> dict:
        """A new run of the default recipe for ``epochs`` epochs, summarised."""
        last = last_test_callback()
        start = time.perf_counter()
        result = train(RunConfig(train=train_config_for("fast", epochs=epochs, seed=seed)), out=folder,
                       overwrite=True, report=False, callbacks=[last], progress=False)
        return summary(result, last, time.perf_counter() - start)

    for seed in args.seeds:
        entry = record["seeds"][str(seed)] = {"rules": {}}
        base = work / f"seed{seed}-base"
        entry["base"] = fresh_run(base, args.epochs, seed)
        save()
        print(f"seed {seed}: {args.epochs} epochs: test MSE {entry['base']['test_mse']:.5f} "
              f"(best epoch {entry['base']['best_epoch']}, last val {entry['base']['last_val_loss']:.5f})",
              file=sys.stderr, flush=True)
        for rule in rules:
            row = entry["rules"][rule] = extend(base, work, rule, seed, args)
            save()
            print(f"seed {seed}: {rule} -> {args.to}: test MSE {row['test_mse']:.5f} (best epoch {row['best_epoch']}, "
                  f"last val {row['last_val_loss']:.5f}, last test {row['last_test_mse']:.5f}, "
                  f"rate of the added steps {row['first_step_lr']:.2e} first, {row['max_step_lr']:.2e} at most, "
                  f"{row['seconds']:.0f} s)", file=sys.stderr, flush=True)
        if not args.no_fresh:
            fresh_dir = work / f"seed{seed}-fresh{args.to}"
            entry["fresh"] = fresh_run(fresh_dir, args.to, seed)
            save()
            if not args.keep_runs:
                shutil.rmtree(fresh_dir, ignore_errors=True)
        if not args.keep_runs:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\n{record['cpu']}, {record['cpus']} CPUs, torch {record['torch']}")
    for seed, entry in record["seeds"].items():
        base = entry["base"]
        print(f"\nseed {seed}: {args.epochs} epochs: test MSE {base['test_mse']:.5f}, val MSE {base['val_mse']:.5f}, "
              f"last val loss {base['last_val_loss']:.5f}, best epoch {base['best_epoch']}")
        print(f"| rule | test MSE after {args.epochs} | after {args.to} (best epoch) | val MSE | last val loss "
              f"| last-epoch test MSE | best epoch | first / highest rate of the added steps (x peak) |")
        print("|---|---|---|---|---|---|---|---|")
        lr = train_config_for("fast").lr
        rows = list(entry["rules"].items()) + ([(f"fresh {args.to}", entry["fresh"])] if "fresh" in entry else [])
        for rule, row in rows:
            top = f"{row['first_step_lr'] / lr:.3g} / {row['max_step_lr'] / lr:.3g}" if row["added"] else "-"
            print(f"| {rule} | {base['test_mse']:.5f} | {row['test_mse']:.5f} | {row['val_mse']:.5f} "
                  f"| {row['last_val_loss']:.5f} | {row['last_test_mse']:.5f} | {row['best_epoch']} | {top} |")
    save()
    print(out)


if __name__ == "__main__":
    main()
