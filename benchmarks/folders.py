"""Your own images, side by side: torchvision ImageFolder + DataLoader against aelab's folder cache.

    .venv/bin/python benchmarks/folders.py            # both folders (about 10 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/folders.py --quick    # 1/5 of each folder, to try it (about 2 minutes)

Two folders are made once under benchmarks/out/folders-data/ (from MNIST, fetched as aelab does):
- mnist-png: the 70,000 MNIST images as PNG files, train/ and test/ subfolders, a folder per digit;
- rgb-jpeg: 20,000 colour JPEGs of 64x64: MNIST digits enlarged, coloured, on coloured gradients
  with noise, a folder per digit.

On each folder, with the same model (aelab's ConvAutoencoder sized for the images), batch size 256
and the same machine, every side in its own process (so its peak memory is its own):
- torchvision: ``ImageFolder`` (grey: ``Grayscale()``; ``ToTensor()``) + ``DataLoader`` (shuffle,
  num_workers=2), a plain PyTorch loop (Adam, MSE): the way the tutorial's code grows to a folder.
  Its first epoch is "one torchvision epoch"; its later epochs are as fast as decoding allows.
- aelab, first run: an empty cache, so decoding every image and writing the cache, then training.
- aelab, cached: the same run again (the cache is read), images held in memory.
- aelab, from disk: the cache read batch by batch, with --memory-limit half the decoded set.

Reported: first-run time (aelab: decoding + cache) against one torchvision epoch; seconds per epoch
after that (the median of the later epochs) and training images/s, for aelab both of the whole
epoch (with its validation pass, checkpoint and figure) and of the training pass alone; peak memory (the largest resident set of the process and, for torchvision, of its
workers). Results go to benchmarks/out/folders-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 256


# --- the folders ------------------------------------------------------------------------------

def make_folders(work: Path, data_dir: str | None, fraction: float) -> dict[str, Path]:
    from PIL import Image

    from aelab.data.sources import fetch, read_idx

    raw = fetch("mnist", data_dir)
    splits = {"train": (read_idx(raw / "train-images-idx3-ubyte"), read_idx(raw / "train-labels-idx1-ubyte")),
              "test": (read_idx(raw / "t10k-images-idx3-ubyte"), read_idx(raw / "t10k-labels-idx1-ubyte"))}
    tag = "" if fraction == 1 else f"-{fraction:g}"
    folders = {"mnist-png": work / f"mnist-png{tag}", "rgb-jpeg": work / f"rgb-jpeg{tag}"}
    if not (folders["mnist-png"] / "done").is_file():
        shutil.rmtree(folders["mnist-png"], ignore_errors=True)
        print("folders: writing MNIST as PNG files ...", file=sys.stderr, flush=True)
        for split, (images, labels) in splits.items():
            n = int(len(images) * fraction)
            for digit in range(10):
                (folders["mnist-png"] / split / str(digit)).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(images[i]).save(folders["mnist-png"] / split / str(labels[i]) / f"{i:05d}.png")
        (folders["mnist-png"] / "done").write_text("")
    if not (folders["rgb-jpeg"] / "done").is_file():
        shutil.rmtree(folders["rgb-jpeg"], ignore_errors=True)
        print("folders: writing 64x64 colour JPEGs ...", file=sys.stderr, flush=True)
        images, labels = splits["train"]
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:64, 0:64] / 63.0
        for digit in range(10):
            (folders["rgb-jpeg"] / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in range(int(20_000 * fraction)):
            digit = np.asarray(Image.fromarray(images[i]).resize((64, 64), Image.Resampling.BILINEAR), np.float32) / 255
            a, b, ink = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            t = (xx * rng.uniform(0, 1) + yy * rng.uniform(0, 1))[..., None] / 2
            background = a * (1 - t) + b * t + rng.normal(0, 8, (64, 64, 3))
            picture = background * (1 - digit[..., None]) + ink * digit[..., None]
            Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(
                folders["rgb-jpeg"] / str(labels[i]) / f"{i:05d}.jpg", quality=90)
        (folders["rgb-jpeg"] / "done").write_text("")
    return folders


# --- the sides (each in its own process) ---------------------------------------------------------

def peak_mb(children: bool = False) -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return round(own + (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if children else 0))


def side_torchvision(folder: Path, epochs: int) -> dict:
    import torch
    from torchvision import datasets, transforms

    from aelab.config import ModelConfig
    from aelab.models.ae import ConvAutoencoder

    torch.manual_seed(0)
    root = folder / "train" if (folder / "train").is_dir() else folder
    grey = "mnist" in folder.name
    transform = transforms.Compose(([transforms.Grayscale()] if grey else []) + [transforms.ToTensor()])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2)
    channels, height, width = dataset[0][0].shape
    model = ConvAutoencoder.from_config(ModelConfig(in_channels=channels, image_size=height, image_width=width))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, _labels in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(images), images)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return {"side": "torchvision", "images": len(dataset), "epoch_seconds": [round(s, 2) for s in seconds],
            "peak_mb": peak_mb(children=True)}


def side_aelab(folder: Path, epochs: int, cache: Path, memory_limit: str, fresh: bool) -> dict:
    from aelab import RunConfig, train
    from aelab.config import DataConfig, train_config_for
    from aelab.data.sets import load_splits

    if fresh:
        shutil.rmtree(cache, ignore_errors=True)
    data = DataConfig(dataset=str(folder), data_dir=str(cache), memory_limit=memory_limit)
    start = time.perf_counter()
    splits = load_splits(data)
    load_seconds = time.perf_counter() - start
    from aelab.callbacks import Callback

    passes: list[float] = []

    class Clock(Callback):
        """The training pass of each epoch alone (the epoch's seconds also hold validation, checkpoint, figure)."""

        def on_epoch_start(self, trainer):
            self.start = time.perf_counter()

        def on_step_end(self, trainer):
            if trainer.step == len(trainer.batches):
                passes.append(round(time.perf_counter() - self.start, 3))

    config = RunConfig(data=data, train=train_config_for("fast", epochs=epochs, batch_size=BATCH))
    result = train(config, HERE / "out" / "folders-run", overwrite=True, report=False, data=splits, callbacks=[Clock()],
                   progress=False)
    return {"side": "aelab", "images": len(splits["train"]), "all_images": sum(len(s) for s in splits.values()),
            "load_seconds": round(load_seconds, 2), "on_disk": splits["train"].on_disk,
            "set_mb": round(sum(len(s) for s in splits.values()) * int(np.prod(splits["train"].image_shape)) / 2**20),
            "epoch_seconds": [row["seconds"] for row in result.metrics], "pass_seconds": passes, "peak_mb": peak_mb()}


def run_side(args, name: str, folder: Path, epochs: int, **options) -> dict:
    command = [sys.executable, __file__, "--side", name, "--folder", str(folder), "--epochs", str(epochs)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)] if value is not True else [f"--{key.replace('_', '-')}"]
    print(f"folders: {folder.name}: {name} {options or ''} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"folders: the {name} side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args, folder: Path) -> dict:
    cache = Path(args.work) / "cache"
    vision = run_side(args, "torchvision", folder, 2)
    first = run_side(args, "aelab", folder, 2, cache=cache, memory_limit="auto", fresh=True)
    cached = run_side(args, "aelab", folder, 4, cache=cache, memory_limit="auto")
    half = f"{max(1, cached['set_mb'] // 2)}MB"
    disk = run_side(args, "aelab", folder, 4, cache=cache, memory_limit=half)
    vision_epoch, vision_later = vision["epoch_seconds"][0], vision["epoch_seconds"][-1]
    tv_rate = vision["images"] / vision_later
    cached_epoch = float(np.median(cached["epoch_seconds"][1:]))
    disk_epoch = float(np.median(disk["epoch_seconds"][1:]))
    ae_rate, disk_rate = cached["images"] / cached_epoch, disk["images"] / disk_epoch
    pass_rate = cached["images"] / float(np.median(cached["pass_seconds"][1:]))
    disk_pass_rate = disk["images"] / float(np.median(disk["pass_seconds"][1:]))
    return {
        "folder": folder.name, "files": first["all_images"], "decoded_mb": cached["set_mb"],
        "torchvision": vision, "aelab_first": first, "aelab_cached": cached, "aelab_disk": disk,
        "memory_limit_disk": half,
        "summary": {
            "torchvision_first_epoch_s": vision_epoch, "torchvision_epoch_s": vision_later,
            "aelab_first_run_decode_s": first["load_seconds"], "aelab_cached_start_s": cached["load_seconds"],
            "aelab_epoch_s": round(cached_epoch, 2), "aelab_disk_epoch_s": round(disk_epoch, 2),
            "torchvision_images_per_s": round(tv_rate), "aelab_images_per_s": round(ae_rate),
            "aelab_disk_images_per_s": round(disk_rate),
            "aelab_pass_images_per_s": round(pass_rate), "aelab_disk_pass_images_per_s": round(disk_pass_rate),
            "throughput_ratio": round(ae_rate / tv_rate, 2), "training_pass_ratio": round(pass_rate / tv_rate, 2),
            "first_run_vs_torchvision_epoch": round(first["load_seconds"] / vision_epoch, 2),
            "disk_vs_memory_throughput": round(disk_rate / ae_rate, 2),
            "disk_vs_memory_training_pass": round(disk_pass_rate / pass_rate, 2),
            "peak_mb": {"torchvision": vision["peak_mb"], "aelab": cached["peak_mb"], "aelab_disk": disk["peak_mb"]},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1/5 of each folder")
    parser.add_argument("--only", choices=("mnist-png", "rgb-jpeg"), help="one folder")
    parser.add_argument("--data-dir", help="where MNIST is (default: aelab's data folder)")
    parser.add_argument("--work", default=str(HERE / "out" / "folders-data"), help="where the folders and the cache go")
    parser.add_argument("--side", choices=("torchvision", "aelab"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "torchvision":
        print(json.dumps(side_torchvision(Path(args.folder), args.epochs)))
        return
    if args.side == "aelab":
        print(json.dumps(side_aelab(Path(args.folder), args.epochs, Path(args.cache), args.memory_limit, args.fresh)))
        return
    folders = make_folders(Path(args.work), args.data_dir, 0.2 if args.quick else 1.0)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
               "quick": args.quick, "folders": [compare(args, folder) for name, folder in folders.items()
                                                 if args.only in (None, name)]}
    out = HERE / "out" / f"folders-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=1))
    for entry in results["folders"]:
        print(f"\n{entry['folder']}: {entry['files']} files, {entry['decoded_mb']} MB decoded")
        for key, value in entry["summary"].items():
            print(f"  {key}: {value}")
    print(f"\n{out}")


if __name__ == "__main__":
    main()
