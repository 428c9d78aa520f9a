"""One-class novelty detection, the standard protocol, side by side with PyOD's AutoEncoder.

    .venv/bin/python benchmarks/one_class.py                       # MNIST and Fashion-MNIST, 10 classes, seeds 0-2
    .venv/bin/python benchmarks/one_class.py --datasets mnist --classes 1 8 --seeds 0 --epochs 10   # a quick look

The protocol of Ruff et al. 2018 (Deep SVDD): train on the images of one class of the training
split, score every image of the test split, AUROC with the other classes as the anomalies; every
class in turn, several seeds; the mean over classes is the number papers report. ``--protocol
leave-one-out`` is the other one (as GANomaly, Akcay et al. 2018): train on nine classes, the tenth
is the anomaly. ``--model vae`` trains the variational family (``--loss bce`` for a Bernoulli
decoder) and adds its negative ELBO (``nelbo``) to the methods. ``--recipe novelty`` is the recipe
for normal images of several kinds (``aelab train --recipe novelty``: 10 epochs, latent size 16, the
code's density as the score):

    .venv/bin/python benchmarks/one_class.py --datasets mnist --protocol leave-one-out --recipe novelty --no-pyod

aelab: the one-class recipe, ``aelab train --classes K --latent-dim 16`` (the fast recipe, 30
epochs; --recipe, --epochs and --latent-dim change it), then the scores of ``aelab score`` (every
method: the recipe's default, combined, and the ingredients mse, feature_error, feature_distance,
and density, from the detector of the recipe's default) on the test split.
PyOD: ``pyod.models.auto_encoder.AutoEncoder`` with its defaults on the flattened pixels in [0, 1]
(pip install pyod; it is not a dependency of aelab). Both sides are timed (training + scoring).
Results go to benchmarks/out/one-class-DATE.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PUBLISHED = {  # mean AUROC over the ten classes, as published (for reference; other preprocessing)
    "mnist": {"Deep SVDD (Ruff et al. 2018)": 94.8, "OCGAN (Perera et al. 2019)": 97.5, "GeoTrans (Golan & El-Yaniv 2018)": 98.0},
    "fashion-mnist": {"CAE + OC-SVM (in Golan & El-Yaniv 2018)": 91.7, "GeoTrans (Golan & El-Yaniv 2018)": 93.5},
}


def aelab_side(dataset: str, normal: int, seed: int, args) -> dict:
    from sklearn.metrics import roc_auc_score

    from aelab import RunConfig, train
    from aelab.config import DataConfig, model_config_for, train_config_for
    from aelab.data.sets import load_splits
    from aelab.scores import METHODS, default_method, fit_detector

    trained = [normal] if args.protocol == "one-class" else [k for k in range(10) if k != normal]
    data = DataConfig(dataset=dataset, classes=",".join(map(str, trained)), data_dir=args.data_dir)
    splits = load_splits(data)
    config = RunConfig(data=data, model=model_config_for(args.recipe, kind=args.model, latent_dim=args.latent_dim),
                       train=train_config_for(args.recipe, epochs=args.epochs, seed=seed, loss=args.loss))
    start = time.perf_counter()
    result = train(config, HERE / "out" / "one-class-run", overwrite=True, report=False, data=splits, progress=False)
    truth = ~np.isin(splits["test"].labels.numpy(), trained)
    detector = fit_detector(result.model, splits["train"], splits["val"], default_method(config), seed=seed)
    parts = detector.parts(splits["test"], result.model)  # every ingredient, once; each method joins them
    aurocs = {method: float(roc_auc_score(truth, replace(detector, method=method).combine(parts)))
              for method in METHODS if method == "combined" or method in parts}
    return {"auroc": {"default": aurocs[detector.method], **aurocs}, "score": detector.method,
            "seconds": round(time.perf_counter() - start, 2)}


def pyod_side(dataset: str, normal: int, seed: int, args) -> dict:
    import torch
    from pyod.models.auto_encoder import AutoEncoder
    from sklearn.metrics import roc_auc_score

    from aelab.config import DataConfig
    from aelab.data.sets import load_file_set

    train = load_file_set(DataConfig(dataset=dataset, data_dir=args.data_dir), train=True)
    test = load_file_set(DataConfig(dataset=dataset, data_dir=args.data_dir), train=False)
    trained = [normal] if args.protocol == "one-class" else [k for k in range(10) if k != normal]
    x_train = train.images[torch.isin(train.labels, torch.tensor(trained))].flatten(1).float().div(255).numpy()
    x_test = test.images.flatten(1).float().div(255).numpy()
    torch.manual_seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    detector = AutoEncoder(random_state=seed, verbose=0)  # its defaults otherwise (10 epochs, [64, 32], standardised input)
    detector.fit(x_train)
    scores = detector.decision_function(x_test)
    return {"auroc": float(roc_auc_score(~np.isin(test.labels.numpy(), trained), scores)),
            "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--classes", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="default: the recipe's (fast: 30, novelty: 10)")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--recipe", default="fast", help="fast (the one-class recipe) or novelty (several kinds of "
                        "normal images; its score is the code's density)")
    parser.add_argument("--model", help="the model family: ae or vae (iwae) (default: the recipe's, ae)")
    parser.add_argument("--loss", default="mse")
    parser.add_argument("--protocol", choices=("one-class", "leave-one-out"), default="one-class")
    parser.add_argument("--no-pyod", action="store_true", help="aelab only")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    import logging

    logging.getLogger("aelab").setLevel(logging.WARNING)
    rows = []
    for dataset in args.datasets:
        for normal in args.classes:
            for seed in args.seeds:
                row = {"dataset": dataset, "class": normal, "seed": seed, "aelab": aelab_side(dataset, normal, seed, args)}
                if not args.no_pyod:
                    row["pyod"] = pyod_side(dataset, normal, seed, args)
                rows.append(row)
                pyod = f"  pyod {row['pyod']['auroc']:.3f} ({row['pyod']['seconds']:.0f} s)" if "pyod" in row else ""
                print(f"{dataset} class {normal} seed {seed}: " + " ".join(
                    f"{k} {v:.3f}" for k, v in row["aelab"]["auroc"].items()) + f" ({row['aelab']['seconds']:.0f} s)"
                      + pyod, file=sys.stderr, flush=True)
    summary = {}
    for dataset in args.datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        entry = {method: float(np.mean([r["aelab"]["auroc"][method] for r in mine])) for method in mine[0]["aelab"]["auroc"]}
        per_class = {method: {k: float(np.mean([r["aelab"]["auroc"][method] for r in mine if r["class"] == k]))
                              for k in args.classes} for method in entry}
        summary[dataset] = {"aelab_mean_auroc": entry, "aelab_per_class": per_class,
                            "aelab_seconds": float(np.mean([r["aelab"]["seconds"] for r in mine])),
                            "published_mean_auroc": PUBLISHED.get(dataset, {})}
        if not args.no_pyod:
            summary[dataset]["pyod_mean_auroc"] = float(np.mean([r["pyod"]["auroc"] for r in mine]))
            summary[dataset]["pyod_per_class"] = {k: float(np.mean([r["pyod"]["auroc"] for r in mine if r["class"] == k]))
                                                  for k in args.classes}
            summary[dataset]["pyod_seconds"] = float(np.mean([r["pyod"]["seconds"] for r in mine]))
    out = HERE / "out" / f"one-class-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "rows": rows, "summary": summary}, indent=1))
    print(json.dumps(summary, indent=1))
    print(out)


if __name__ == "__main__":
    main()
