"""Your own pictures: the new defaults against the tutorial's network and PCA, on real colour folders.

    .venv/bin/python benchmarks/folders_quality.py                    # clip art at 32, 64, 128; icons at 64 (the check)
    .venv/bin/python benchmarks/folders_quality.py --sizes 64 --folders clipart   # one folder, one size

The folders (Debian's packages, installed with apt-get as root: they are not aelab's dependencies):
- ``clipart``: 800 pictures drawn (seeded) from ``openclipart-png`` (22 categories of clip art, PNG
  with transparency, composited on black), the folder aelab was developed on;
- ``icons``: the 837 icons of ``oxygen-icon-theme``'s 128x128 set, kept aside as the check.

For each folder and size, side by side on the same split (aelab's seeded 10 % test, 20 % of the rest
for validation): ``defaults``: ``aelab train --data FOLDER --image-size S`` as a user runs it, every
setting chosen from the data (the deep network, its latent size, batch, rate and length);
``tutorial``: the tutorial's network (``--arch tutorial``) with the same latent size and the fast
recipe, 30 epochs (what aelab did before); ``pca``: PCA with as many components, fitted on the training
split (reconstructions clipped to [0, 1]). ``--latent-dim 64`` adds the defaults with a latent size of
64 against PCA-64. Reported: test MSE, SSIM, training seconds; a picture of test reconstructions per
folder and size goes to benchmarks/pictures/. Results: benchmarks/out/folders-quality-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLIPART, ICONS = Path("/usr/share/openclipart/png"), Path("/usr/share/icons/oxygen/base/128x128")


def make_folder(name: str, root: Path) -> Path:
    """The folder ``name`` under ``root`` (copied once; its files are only ever read)."""
    folder = root / name
    if folder.is_dir():
        return folder
    source = {"clipart": CLIPART, "icons": ICONS}[name]
    if not source.is_dir():
        package = {"clipart": "openclipart-png", "icons": "oxygen-icon-theme"}[name]
        raise SystemExit(f"{source} is missing: apt-get install {package}")
    files = sorted(source.rglob("*.png"))
    if name == "clipart":
        files = [files[i] for i in np.sort(np.random.default_rng(0).choice(len(files), 800, replace=False))]
    for path in files:
        target = folder / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return folder


def ssim_of(run, test) -> float:
    """Mean SSIM of the run's reconstructions of ``test`` (pytorch-msssim)."""
    import torch
    from pytorch_msssim import ssim

    from aelab.inference import infer

    rebuilt = infer(run.model, test.images, terms=(), reconstructions=True).reconstructions
    return float(ssim(rebuilt, test.images.float().div(255), data_range=1.0))


def pca_side(splits, components: int) -> tuple[float, float, object]:
    """PCA as aelab measures it beside a run (``aelab.evaluation.pca_mse``, seed 0), its SSIM and its
    reconstructions of the test images."""
    import torch
    from pytorch_msssim import ssim

    from aelab.evaluation import pca_fit, pca_mse, pca_rebuilt

    train, test = splits["train"], splits["test"]
    pictures = torch.from_numpy(pca_rebuilt(pca_fit(train.images, components), test.images)
                                .reshape(test.images.shape)).float()
    return (pca_mse(train.images, test.images, components),
            float(ssim(pictures, test.images.float().div(255), data_range=1.0)), pictures)


def aelab_side(folder: Path, size: int, args, how: str, latent: int | None = None) -> dict:
    """One aelab run: ``how`` is defaults (as a user runs it) or tutorial (the tutorial's network)."""
    from aelab import RunConfig, train
    from aelab.config import DataConfig, ModelConfig, train_config_for
    from aelab.data.sets import load_splits
    from aelab.run import load_run

    data = DataConfig(dataset=str(folder), image_size=str(size), data_dir=str(args.work / "cache"))
    splits = load_splits(data, training=True)
    if how == "defaults":
        config = RunConfig(data=data, model=ModelConfig(**({"latent_dim": latent} if latent else {})))
        explicit = {"data.dataset", "data.image_size"} | ({"model.latent_dim"} if latent else set())
    else:
        config = RunConfig(data=data, model=ModelConfig(arch="tutorial", latent_dim=latent),
                           train=train_config_for("fast", epochs=30))
        explicit = {"data.dataset", "data.image_size", "model.arch", "model.latent_dim"}
    out = args.work / "runs" / f"{folder.name}-{size}-{how}-{latent}"
    started = time.perf_counter()
    result = train(config, out, overwrite=True, report=False, data=splits, explicit=explicit, progress=False)
    seconds = time.perf_counter() - started
    run = load_run(out)
    return {"how": how, "latent_dim": run.config.model.latent_dim, "test_mse": result.evaluation["test_mse"],
            "pca_mse": result.evaluation.get("test_pca_mse"), "ssim": ssim_of(run, splits["test"]),
            "seconds": round(seconds, 1), "epochs": len(result.metrics), "arch": run.config.model.arch,
            "run": str(out)}


def picture(folder: str, size: int, rows: list[tuple[str, object]], path: Path) -> None:
    from aelab.plots import rows_figure

    rows_figure(rows, path, title=f"{folder}, {size}x{size}: test images and their reconstructions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", nargs="+", default=["clipart", "icons"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--check-size", type=int, default=64, help="the size of the check folder (icons)")
    parser.add_argument("--no-64", action="store_true", help="leave out the latent size 64 row")
    parser.add_argument("--work", type=Path, default=HERE / "out" / "folders-quality")
    args = parser.parse_args()
    import logging

    import torch

    from aelab.config import DataConfig
    from aelab.data.sets import load_splits
    from aelab.inference import infer
    from aelab.run import load_run

    logging.getLogger("aelab").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.folders:
        folder = make_folder(name, args.work / "folders")
        for size in (args.sizes if name == "clipart" else [args.check_size]):
            print(f"folders: {name} at {size} ...", file=sys.stderr, flush=True)
            found = [aelab_side(folder, size, args, "defaults")]
            latent = found[0]["latent_dim"]
            found.append(aelab_side(folder, size, args, "tutorial", latent))
            if not args.no_64 and latent != 64:
                found.append(aelab_side(folder, size, args, "defaults", 64))
            splits = load_splits(DataConfig(dataset=str(folder), image_size=str(size), data_dir=str(args.work / "cache")))
            test = splits["test"]
            for components in sorted({row["latent_dim"] for row in found}):
                mse, ssim, pictures = pca_side(splits, components)
                found.append({"how": "pca", "latent_dim": components, "test_mse": mse, "ssim": ssim, "seconds": None})
                if components == latent:
                    pca_pictures = pictures
            shown = torch.arange(min(10, len(test)))
            rows = [("image", test.images[shown].float().div(255))]
            for row in found:
                if row["how"] != "pca" and row["latent_dim"] == latent:
                    rebuilt = infer(load_run(row["run"]).model, test.images[shown], terms=(), reconstructions=True)
                    rows.append((f"{row['how']}", rebuilt.reconstructions))
            rows.append((f"PCA-{latent}", pca_pictures[shown]))
            picture(name, size, rows, HERE / "pictures" / f"folders-{name}-{size}.png")
            for row in found:
                row.update(folder=name, size=size)
                print(f"  {row['how']:9} latent {row['latent_dim']:3}: test MSE {row['test_mse']:.5f}  SSIM "
                      f"{row['ssim']:.3f}" + (f"  {row['seconds']:.0f} s, {row['epochs']} epochs"
                                              if row["seconds"] is not None else ""), file=sys.stderr, flush=True)
            results += found
    out = HERE / "out" / f"folders-quality-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    print(f"{'folder':8} {'size':>4} {'method':10} {'latent':>6} {'test MSE':>9} {'SSIM':>6} {'seconds':>8}")
    for row in results:
        print(f"{row['folder']:8} {row['size']:4} {row['how']:10} {row['latent_dim']:6} {row['test_mse']:9.5f} "
              f"{row['ssim']:6.3f} {row['seconds'] if row['seconds'] is not None else '':>8}")
    print(out)


if __name__ == "__main__":
    main()
