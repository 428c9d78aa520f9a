"""Time and memory as a new user meets them: the README's commands, and a folder of big pictures.

    .venv/bin/python benchmarks/new_user.py            # about 4 minutes on 2 CPU cores (run it alone)
    .venv/bin/python benchmarks/new_user.py --setup    # also a fresh clone's `bash scripts/setup.sh` (2 more)

Each aelab command runs in a process of its own, in a fresh folder, as the README writes it; for each:
its wall time (start-up, data, training, report), the training's own seconds (metrics.csv: each
epoch's steps and validation), the report's (its last line), the process's peak resident memory and
the peak the run said it would need ("memory: about ... at the peak").

- `aelab train`: the README's main job (MNIST from the cache aelab fetched before; fetched first if
  missing), 30 epochs and the report;
- `aelab train --recipe quick --out runs/quick`: the tour's first line;
- six 4096x4096 wallpapers (JPEG, made here), without `--image-size` (made 128x128 by default) and
  with `--image-size 256`, each for 5 epochs with its report, and with `--image-size 8192`, refused.

Results go to benchmarks/out/new-user-DATE.json; the table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the command line in a process of its own, its own peak resident memory printed last
PEAK = ("import sys\nfrom aelab.cli import main\nfrom aelab.memory import peak_so_far\ncode = main(sys.argv[1:])\n"
        "print(f'peak-bytes {peak_so_far()}', file=sys.stderr)\nsys.exit(code)\n")


def aelab(*args: str, cwd: Path) -> dict:
    """One command, timed; what it said and measured."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    err = done.stderr
    said = re.search(r"memory: about ([\d.]+) (GB|MB) at the peak", err)
    report = re.search(r"report written in (?:(\d+) h )?(?:(\d+) min ?)?(?:([\d.]+) s)?:", err)  # (progress.duration)
    found = {"command": "aelab " + " ".join(args), "exit_code": done.returncode, "wall_seconds": round(wall, 1),
             "peak_bytes": int(re.search(r"peak-bytes (\d+)", err).group(1)),
             "said_peak_bytes": round(float(said.group(1)) * 2 ** (30 if said.group(2) == "GB" else 20))
             if said else None,
             "report_seconds": sum(float(part or 0) * unit for part, unit in zip(report.groups(), (3600, 60, 1)))
             if report else None}
    errors = [line for line in err.splitlines() if line.startswith("aelab: error:")]
    if errors:
        found["error"] = errors[0]
    out = re.search(r"--out (\S+)", found["command"])
    run = cwd / (out.group(1) if out else "runs/mnist-d4")
    if (run / "metrics.csv").is_file():
        rows = (run / "metrics.csv").read_text().splitlines()[1:]
        found["train_seconds"] = round(sum(float(row.split(",")[4]) for row in rows), 1)
    return found


def wallpapers(folder: Path) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:4096, 0:4096]
    for i in range(6):
        pixels = np.stack([(x // 16 + 30 * i) % 256, (y // 16) % 256, ((x + y) // 32) % 256], -1).astype(np.uint8)
        picture = Image.fromarray(pixels)
        ImageDraw.Draw(picture).ellipse((300 + 200 * i, 800, 2500, 3000), fill=(200, 50, 50))
        picture.save(folder / f"wall-{i}.jpg", quality=90)
    return folder


def setup_time(work: Path) -> dict:
    """A fresh clone of this checkout, and the README's set-up in it, timed."""
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    started = time.perf_counter()
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, capture_output=True, text=True,
                          env={**os.environ, "PIP_NO_CACHE_DIR": "1"})
    return {"command": "bash scripts/setup.sh (a fresh clone)", "exit_code": done.returncode,
            "wall_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="also time the set-up of a fresh clone")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aelab-new-user-"))
    results = []
    try:
        if args.setup:
            results.append(setup_time(work))
        results.append(aelab("train", cwd=work))
        results.append(aelab("train", "--recipe", "quick", "--out", "runs/quick", cwd=work))
        photos = wallpapers(work / "wallpapers")
        for extra in ([], ["--image-size", "256"], ["--image-size", "8192"]):
            name = "runs/walls" + (f"-{extra[1]}" if extra else "")
            results.append(aelab("train", "--data", str(photos), "--epochs", "5", "--out", name, *extra, cwd=work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = HERE / "out" / f"new-user-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    sys.path.insert(0, str(HERE))
    from machine import cpu_name

    out.write_text(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"{'command':<72} {'wall s':>7} {'train s':>7} {'report s':>8} {'peak':>8} {'said':>8}")
    for found in results:
        gb = lambda key: f"{found[key] / 2**30:.2f} GB" if found.get(key) else ""  # noqa: E731
        print(f"{found['command'][:72]:<72} {found['wall_seconds']:>7} {found.get('train_seconds', ''):>7} "
              f"{found.get('report_seconds') or '':>8} {gb('peak_bytes'):>8} {gb('said_peak_bytes'):>8}")
        if "error" in found:
            print(f"    {found['error'][:300]}")
    print(out)


if __name__ == "__main__":
    main()
