"""Side by side: the tutorial's pipeline as written and aelab, same data, same machine, one run.

    .venv/bin/python benchmarks/bench.py            # quick: 3 epochs each (about 1-2 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/bench.py --full     # 30 epochs each + time to quality (about 4-7 minutes)

Each side runs in its own process (so peak memory is its own) and reports: training images/s
(the training passes alone), seconds per epoch (the whole loop: training, the per-epoch
evaluation and picture, and for aelab the checkpoint), evaluation images/s (the 10,000 test
images), peak memory, the test MSE after every epoch, and the time to quality: the wall time of
the loop until the test MSE first reaches 0.0265 (the tutorial's final result at latent size 4).
The tutorial measures its test MSE in its own loop (as written, its per-epoch "validation" is the
test set); aelab's test MSE is measured by the benchmark outside the timed part. With --full,
aelab also trains the quick recipe (the fast recipe on a 9-epoch budget: the run for time to
quality). Ratios are aelab / tutorial; results go to benchmarks/out/bench-DATE.json.

On a GPU (the default device when there is one) aelab replays each training step as one CUDA
graph; --eager adds a run without graphs (AELAB_CUDA_GRAPHS=0) to show what they bring, and
--precision fp32 bf16 measures both precisions in one invocation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_MSE = 0.0265
N_TRAIN = 48_000


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _time_to_quality(history: list[dict]) -> float | None:
    return next((row["wall_seconds"] for row in history if row["test_mse"] <= TARGET_MSE), None)


def run_tutorial(args) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    import tutorial_pipeline

    from aelab.data.sources import fetch

    data_dir = fetch("mnist", args.data_dir).parent.parent
    device = torch.device(args.device)
    history = []
    loss_fn = torch.nn.MSELoss()

    def on_epoch(epoch, encoder, decoder, test_loader):
        history.append({"epoch": epoch})

    encoder, decoder, logs, test_loader = tutorial_pipeline.run(str(data_dir), args.epochs, 4, device.type, on_epoch)
    for row, seconds, wall, mse in zip(history, logs["train_seconds"], logs["wall_seconds"], logs["val_loss"]):
        row.update(train_seconds=seconds, wall_seconds=wall, test_mse=mse)  # as written, its val loss is the test MSE
    start = time.perf_counter()
    final = float(tutorial_pipeline.test_epoch(encoder, decoder, device, test_loader, loss_fn))
    eval_seconds = time.perf_counter() - start
    return _summary("tutorial", history, final, eval_seconds, device)


def run_aelab(args, epochs: int) -> dict:
    if args.eager:
        os.environ["AELAB_CUDA_GRAPHS"] = "0"
    import torch

    from aelab import RunConfig, train
    from aelab.config import DataConfig, train_config_for
    from aelab.data.sets import load_splits
    from aelab.evaluation import reconstruction_loss

    config = RunConfig(data=DataConfig(data_dir=args.data_dir),
                       train=train_config_for(args.recipe, epochs=epochs, device=args.device, precision=args.precision[0]))
    splits = load_splits(config.data)
    device = torch.device(args.device)
    test = splits["test"].images.to(device)
    history, clock = [], {"train": 0.0, "wall": 0.0}
    from aelab.callbacks import Callback

    class Clock(Callback):
        """Times the training passes alone and the whole loop; the test MSE is measured outside both."""

        def on_epoch_start(self, trainer):
            clock["start"] = time.perf_counter()

        def on_step_end(self, trainer):
            if trainer.step == len(trainer.batches):  # the epoch's training pass ends here
                if device.type == "cuda":
                    torch.cuda.synchronize()
                clock["train"] += time.perf_counter() - clock["start"]

        def on_epoch_end(self, trainer, row):  # after validation, checkpoint, metrics and figure
            clock["wall"] += time.perf_counter() - clock["start"]
            history.append({"epoch": row["epoch"], "train_seconds": clock["train"], "wall_seconds": clock["wall"],
                            "test_mse": reconstruction_loss(trainer.model, test, "mse")})

    out = HERE / "out" / f"aelab-run-{epochs}"
    result = train(config, out, overwrite=True, report=False, data=splits, callbacks=[Clock()], progress=False)
    start = time.perf_counter()
    final = reconstruction_loss(result.model, test, "mse")
    if device.type == "cuda":
        torch.cuda.synchronize()
    eval_seconds = time.perf_counter() - start
    graphs = ", eager" if args.eager and device.type == "cuda" else ""
    return _summary(f"aelab ({args.recipe}, {args.precision[0]}{graphs}, {epochs} ep)", history, final, eval_seconds,
                    device)


def _summary(name: str, history: list[dict], final_mse: float, eval_seconds: float, device) -> dict:
    import torch

    train_seconds, wall_seconds = history[-1]["train_seconds"], history[-1]["wall_seconds"]
    time_to_quality = _time_to_quality(history)
    return {
        "name": name, "epochs": len(history), "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "train_images_per_s": round(N_TRAIN * len(history) / train_seconds),
        "seconds_per_epoch": round(wall_seconds / len(history), 3),
        "eval_images_per_s": round(10_000 / eval_seconds),
        "peak_memory_mb": round(_peak_memory_mb(device)),
        "final_test_mse": round(final_mse, 5),
        "time_to_quality_s": round(time_to_quality, 2) if time_to_quality is not None else None,
        "history": [{k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()} for row in history],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }


def _side(args, side: str, epochs: int, precision: str = "fp32", eager: bool = False, recipe: str | None = None) -> dict:
    """Run one side in a fresh process and return its JSON."""
    command = [sys.executable, __file__, "--side", side, "--epochs", str(epochs), "--device", args.device,
               "--recipe", recipe or args.recipe, "--precision", precision] + (["--data-dir", args.data_dir] if args.data_dir else [])
    command += ["--eager"] if eager else []
    print(f"bench: {side}, {epochs} epochs, {precision}{' eager' if eager else ''} ...", file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench: the {side} side failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="30 epochs each, and the time-to-quality run")
    parser.add_argument("--epochs", type=int, help="epochs for each side (default: 3, or 30 with --full)")
    parser.add_argument("--ttq-recipe", default="quick",
                        help="with --full, aelab's recipe for the time-to-quality run, with its own epochs (default: quick)")
    parser.add_argument("--recipe", default="fast", help="aelab's recipe for the main run (default: fast)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "bf16"),
                        help="aelab's training precision; several: one aelab run each (default: fp32)")
    parser.add_argument("--eager", action="store_true", help="on a GPU, add an aelab run without CUDA graphs")
    parser.add_argument("--data-dir", help="data folder (default: aelab's)")
    parser.add_argument("--side", choices=("tutorial", "aelab"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    epochs = args.epochs or (30 if args.full else 3)
    if args.side:  # child process
        result = run_tutorial(args) if args.side == "tutorial" else run_aelab(args, epochs)
        print(json.dumps(result))
        return
    from aelab.data.sources import fetch

    fetch("mnist", args.data_dir)
    first, *others = args.precision
    sides = {"tutorial": _side(args, "tutorial", epochs), "aelab": _side(args, "aelab", epochs, first)}
    for precision in others:
        sides[f"aelab_{precision}"] = _side(args, "aelab", epochs, precision)
    if args.eager and args.device.startswith("cuda"):
        sides["aelab_eager"] = _side(args, "aelab", epochs, first, eager=True)
    if args.full:
        from aelab.config import train_config_for

        short = train_config_for(args.ttq_recipe)
        sides["aelab_short"] = _side(args, "aelab", short.epochs, first, recipe=args.ttq_recipe)
    tutorial, aelab = sides["tutorial"], sides["aelab"]
    ttq_tutorial = tutorial["time_to_quality_s"]
    ttq_aelab = min((s["time_to_quality_s"] for k, s in sides.items() if k != "tutorial" and s["time_to_quality_s"]),
                    default=None)
    ratios = {
        "train_images_per_s": _ratio(aelab["train_images_per_s"], tutorial["train_images_per_s"]),
        "eval_images_per_s": _ratio(aelab["eval_images_per_s"], tutorial["eval_images_per_s"]),
        "peak_memory": _ratio(aelab["peak_memory_mb"], tutorial["peak_memory_mb"]),
        "time_to_quality_speedup": _ratio(ttq_tutorial, ttq_aelab),
        "tutorial_total_over_aelab_time_to_quality": _ratio(tutorial["wall_seconds"], ttq_aelab),
    }
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "target_mse": TARGET_MSE,
              "sides": sides, "ratios_aelab_over_tutorial": ratios}
    out = HERE / "out" / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"device: {aelab['device']}, torch {aelab['torch']}")
    print(f"{'':38s}{'train img/s':>12s}{'s/epoch':>9s}{'total s':>9s}{'eval img/s':>11s}{'peak MB':>8s}"
          f"{'test MSE':>10s} {'to 0.0265':>11s}")
    for side in sides.values():
        ttq = f"{side['time_to_quality_s']:.1f} s" if side["time_to_quality_s"] else "not reached"
        print(f"{side['name']:38s}{side['train_images_per_s']:12,d}{side['seconds_per_epoch']:9.2f}"
              f"{side['wall_seconds']:9.1f}{side['eval_images_per_s']:11,d}{side['peak_memory_mb']:8,d}"
              f"{side['final_test_mse']:10.5f} {ttq:>11s}")
    print("ratios aelab/tutorial: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
