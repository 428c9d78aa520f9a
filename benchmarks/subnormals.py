"""The default run (``aelab train``: MNIST, the fast recipe, 30 epochs) with and without
``aelab.optim.keep_subnormals_out``, in one invocation: seconds per epoch, test MSE, and how many
subnormal values the weights hold at the end.

    .venv/bin/python benchmarks/subnormals.py [--epochs 30] [--order off,on]

Weight decay shrinks the weights of units that no longer get a gradient into subnormal floats;
Intel CPUs compute on those through slow microcode assists (on a Xeon: epochs from 2.7 s to 4.0 s
after epoch 10). ``off`` trains with the flush replaced by nothing;
``on`` is aelab as it is (the flush after every optimizer step). Results go to benchmarks/out/subnormals-DATE.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from machine import cpu_name  # (benchmarks/machine.py)

HERE = Path(__file__).resolve().parent


def subnormal_share(tensors) -> tuple[int, int]:
    """(subnormal values, all values) over the floating tensors."""
    sub = total = 0
    for t in tensors:
        if t.is_floating_point():
            sub += int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())
            total += t.numel()
    return sub, total


def one_run(flush: bool, epochs: int, data_dir: str) -> dict:
    import aelab.optim
    from aelab import RunConfig, train
    from aelab.callbacks import Callback
    from aelab.config import DataConfig, train_config_for

    class Clock(Callback):
        def __init__(self):
            self.seconds: list[float] = []
            self.started = 0.0

        def on_epoch_start(self, trainer):
            self.started = time.perf_counter()

        def on_epoch_end(self, trainer, metrics):
            self.seconds.append(time.perf_counter() - self.started)  # (the epoch's steps and its validation)

    original = aelab.optim.keep_subnormals_out
    if not flush:
        aelab.optim.keep_subnormals_out = lambda model, optimizer: None
    clock = Clock()
    try:
        with tempfile.TemporaryDirectory() as out:
            config = RunConfig(data=DataConfig(data_dir=data_dir), train=train_config_for("fast", epochs=epochs))
            result = train(config, Path(out) / "run", report=False, callbacks=[clock], progress=False)
            model = result.model
            weights = {name: subnormal_share([p]) for name, p in model.named_parameters()}
    finally:
        aelab.optim.keep_subnormals_out = original
    worst = sorted(((s / n, name) for name, (s, n) in weights.items() if s), reverse=True)[:3]
    return {"flush": flush, "epoch_seconds": clock.seconds, "test_mse": result.evaluation["test_mse"],
            "subnormal_weights": sum(s for s, _ in weights.values()),
            "most_subnormal": [{"name": name, "share": round(share, 4)} for share, name in worst]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--order", default="off,on", help="which runs, in this order (off: without the flush)")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = HERE / "out" / f"subnormals-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    record = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "capability": torch.backends.cpu.get_cpu_capability(), "runs": []}
    for name in args.order.split(","):
        record["runs"].append(one_run(name == "on", args.epochs, args.data_dir))
        out.write_text(json.dumps(record, indent=2))
    print(f"{record['cpu']} ({record['capability']}), {record['threads']} threads, torch {record['torch']}")
    print("flush | epochs 1-10 (median s) | epochs 11-end (median s) | total s | test MSE | subnormal weights")
    for run in record["runs"]:
        s = run["epoch_seconds"]
        print(f"{'on' if run['flush'] else 'off':5} | {statistics.median(s[:10]):.2f} | {statistics.median(s[10:] or s):.2f}"
              f" | {sum(s):.1f} | {run['test_mse']:.6f} | {run['subnormal_weights']} {run['most_subnormal']}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
