"""``aelab score``: anomaly scores of images under a run, highest first, and the threshold that flags them."""

from __future__ import annotations

import argparse
import json

from .common import SPLIT_CHOICES, add_common, add_data, add_device, add_run_folder, command, data_config, opened, \
    progress_bar, run_from_args, say_few


def cmd_score(args: argparse.Namespace) -> int:
    """Score images under a run: one row per image (index, path for files, label if known, score,
    is_anomaly, then each ingredient as measured, NAME_raw, and for the three the default score joins
    standardised, NAME_standardised: its logarithm in standard deviations of the validation images),
    highest first, as CSV (or Parquet), and a figure of the highest with their reconstructions and
    error maps. The default score joins the reconstruction error in pixels, the same error as the
    encoder's features see it, and how far the image's features lie from the training images'
    (Mahalanobis distances), each standardised, by a smooth maximum: so simple images that
    reconstruct well but were never trained on still score high. The threshold is the
    (1 - contamination) quantile of the validation images' scores (PyOD's convention). The default
    score's detector is kept in RUN/anomaly.json (the report's), any other in RUN/outputs/. A run of
    --recipe novelty scores by the code's density unless told (normal images of several kinds).
    """
    from .. import scores
    from ..data.sets import load_run_split

    run = run_from_args(args)
    data = data_config(run.config, args)
    split = args.split or scores.default_split(data, args.data is not None)
    images = opened(args, load_run_split(run.config, data, split))  # (a bad --data is said before any fitting)
    say_few(images, run.config, split)
    with progress_bar(args, "fitting the score", "image") as progress:
        detector = scores.run_detector(run, args.method, args.contamination, args.data_dir, args.memory_limit,
                                       progress)
    with progress_bar(args, f"scoring the {split} images", "image") as progress:
        written = scores.write_scores(run, detector, images, split, args.out, top=args.top, progress=progress)
    flagged = int(written.scored.is_anomaly.sum())
    result = {"split": split, "n_images": len(images), "n_anomalies": flagged, "threshold": detector.threshold,
              "contamination": detector.contamination, "method": detector.method, "scores": str(written.table),
              "figure": str(written.figure)}
    if args.normal:
        result.update(scores.against_normal(written.scored, images, [c.strip() for c in args.normal.split(",")
                                                                     if c.strip()]))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{len(images)} images ({split}): {flagged} ({flagged / max(1, len(images)):.1%}) score above the threshold "
          f"and are flagged as anomalies.\n{detector.describe()}")
    if args.normal:
        print(f"normal {args.normal}: AUROC {result['auroc']:.4f}  average precision {result['average_precision']:.4f}  "
              f"F1 {result['f1']:.4f}")
    print(f"{written.table}\n{written.figure}")
    return 0


def add_parsers(sub) -> None:
    p = command(sub, "score", "anomaly scores of images, highest first, and the threshold that flags them", cmd_score)
    add_run_folder(p)
    p.add_argument("--split", choices=SPLIT_CHOICES + ("all",),
                   help="which images of the source (default: test for the run's own data or a named dataset; all "
                        "for --data FOLDER or FILE)")
    add_data(p)
    p.add_argument("--out", metavar="FILE", help="FILE.csv or FILE.parquet; the figure goes beside it as FILE.png "
                   "(default: RUN/outputs/scores-SPLIT.csv)")
    p.add_argument("--method", choices=("combined", "mse", "feature_error", "feature_distance", "density", "nelbo"),
                   help="combined: the next three together (the default, but for a run of --recipe novelty: density); "
                        "mse: the reconstruction error alone; feature_error: the reconstruction's error in the "
                        "encoder's features; feature_distance: the image's features' distance from the training "
                        "images'; density: the code's negative log-likelihood under a Gaussian mixture (of up to 64 "
                        "components; for normal images of several kinds); nelbo: a variational run's negative ELBO")
    p.add_argument("--contamination", type=float, default=0.1, metavar="C",
                   help="the expected share of anomalies, in (0, 0.5]: the threshold is the (1 - C) quantile of the "
                        "validation scores (default: 0.1)")
    p.add_argument("--normal", metavar="C[,C...]", help="the normal classes (labels or names): also print AUROC, "
                   "average precision and F1 at the threshold, the other classes being the anomalies")
    p.add_argument("--top", type=int, default=12, metavar="N", help="images in the figure (default: 12)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_common(p)
