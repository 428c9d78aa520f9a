"""The memory estimate's training share against what training takes (``aelab.footprint``).

    .venv/bin/python benchmarks/memory.py      # about 2 minutes on 2 CPU cores

For each size and batch, in a process of its own: ``train()`` for one epoch of two batches of random
colour images (the deep network and the settings your own images get), and the process's peak resident
memory (VmHWM) less what it held just before ``train()`` ("measured extra": the step, the model and
Adam, the checkpoint, the libraries training loads as it goes); beside it, what a step keeps for its
backward pass and the parameters, counted on the meta device (``footprint.step_bytes``), and the
estimate's training share (``footprint.estimate``). Results go to benchmarks/out/memory-DATE.json.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [(64, 64, 1), (128, 64, 1), (256, 64, 1), (256, 16, 2), (512, 16, 1), (512, 4, 1)]  # size, batch, shards

ONE = """
import json, sys, tempfile
import numpy as np
from aelab import RunConfig, train
from aelab.config import DataConfig, TrainConfig
from aelab.data.sets import ImageSet
from aelab.footprint import estimate, step_bytes
from aelab.memory import peak_so_far, resident

size, batch, shards = (int(value) for value in sys.argv[1:4])
rng = np.random.default_rng(0)
def images(n):
    return ImageSet.from_arrays(rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8))
splits = {"train": images(2 * batch), "val": images(16), "test": images(16)}
before = resident()
config = RunConfig(data=DataConfig(dataset="pictures"), train=TrainConfig(epochs=1, batch_size=batch, shards=shards))
result = train(config, tempfile.mkdtemp() + "/run", report=False, data=splits, progress=False,
               explicit={"train.epochs", "train.batch_size", "train.shards"})
peak = peak_so_far()
kept, parameters = step_bytes(result.config)
said = estimate(result.config, 2 * batch, 16).parts["training"]
print(json.dumps({"size": size, "batch": batch, "shards": shards, "stages": result.config.model.stages,
                  "width": result.config.model.width, "kept": kept, "parameters": parameters,
                  "measured_extra": peak - before, "estimated": said}))
"""


def main() -> None:
    rows = []
    for size, batch, shards in CASES:
        done = subprocess.run([sys.executable, "-c", ONE, str(size), str(batch), str(shards)], capture_output=True,
                              text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    mb = 2**20
    print(f"{'images':<14} {'batch':>6} {'stages':>7} {'kept MB':>8} {'params MB':>10} {'measured MB':>12} "
          f"{'estimated MB':>13}")
    for row in rows:
        print(f"3 x {row['size']} x {row['size']:<4} {row['batch']:>4} ({row['shards']}) {row['stages']:>4}, "
              f"{row['width']:<2} {row['kept'] / mb:>8.0f} {row['parameters'] / mb:>10.0f} "
              f"{row['measured_extra'] / mb:>12.0f} {row['estimated'] / mb:>13.0f}")
    out = HERE / "out" / f"memory-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    sys.path.insert(0, str(HERE))
    from machine import cpu_name

    out.write_text(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
