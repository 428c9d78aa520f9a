"""Looking at a trained run: ``aelab evaluate``, ``embed``, ``plot``, ``generate``, ``report``, ``info``."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from ..errors import AelabError
from .common import add_common, add_device, add_run, add_run_folder, command, data_config, dims, opened, \
    options_for, progress_bar, run_and_split, run_from_args, say_few

# which of a command's methods each option applies to; an option given for another is refused
PLOT_OPTIONS = {"dims": ("scatter",), "perplexity": ("tsne",), "seed": ("tsne", "umap")}  # (seed: with --max-points too)
PLOT_DEFAULTS = {"dims": (0, 1), "perplexity": 30.0, "seed": 0}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Reconstruction MSE (mean over every pixel of every image, pixels in [0,1]) and PSNR of a saved
    run on a split, loaded only from the run folder. Each number says which input it measures: clean
    images, or noisy ones (--noise-factor, seeded) against the clean images, the denoising error; a
    denoising run gives both, its own noise factor for the second. Beside them, the honest baseline:
    PCA with as many components as the code, fitted on the training split. A variational run (vae,
    iwae, cvae) also gives its negative ELBO and its parts (nats per image), active units, the KL per
    latent dimension, and with --nll-samples K the importance-sampled negative log-likelihood.
    --generation measures generated images against the split's (see aelab.generation).
    """
    from ..data.sets import load_run_splits
    from ..evaluation import evaluate, pca_mse, pca_sample, pca_verdict
    from ..likelihood import is_variational, measures

    if args.seed is not None and not args.noise_factor:
        raise AelabError("--seed is the seed of --noise-factor's noise: give --noise-factor F too, or leave --seed out")
    run = run_from_args(args)
    both = load_run_splits(run.config, data_config(run.config, args), tuple(dict.fromkeys((args.split, "train"))))
    data, train = (opened(args, part) for part in (both[args.split], both["train"]))  # (the images read once)
    say_few(data, run.config, args.split)
    inception = None
    if args.inception_weights:  # (a bad file, or images FID cannot take: said before anything is computed)
        from ..generation import inception_network

        inception = inception_network(args.inception_weights, run.device, run.config.model.in_channels)
    factors = [args.noise_factor] if args.noise_factor is not None else [0.0]
    if args.noise_factor is None and run.config.train.noise_factor > 0:  # a denoising run: both inputs
        factors.append(run.config.train.noise_factor)
    results = [evaluate(run.model, data, split=args.split, noise_factor=factor, seed=args.seed or 0).to_dict()
               for factor in factors]
    # the honest baseline: PCA with as many components as the code, fitted on the training split
    baseline = pca_mse(train.images, data.images, run.config.model.latent_dim, run.config.train.seed)
    variational = None
    if is_variational(run.model):
        with progress_bar(args, f"NLL, K = {args.nll_samples}") as progress:
            variational = measures(run.model, data.images, args.nll_samples or 0, args.seed or 0, progress, data.labels)
    elif args.nll_samples:
        raise AelabError("--nll-samples needs a variational model (--model vae, iwae or cvae); this run is "
                         f"{run.config.model.kind}")
    generated = _generation(args, run, data, train, inception) if args.generation or inception else None
    if args.json:
        found = results[0] if len(results) == 1 else {**results[0], "denoising": results[1]}
        print(json.dumps({**found, "pca_mse": baseline, **(variational or {}),
                          **({"generation": generated} if generated else {})}))
        return 0
    for result in results:
        if result["noise_factor"]:
            said = (f"noisy inputs (noise factor {result['noise_factor']:g}, seed {args.seed or 0}) against the clean "
                    "images: the denoising error")
        else:
            said = "clean inputs"
        count = f"{result['n_images']} image{'s' if result['n_images'] != 1 else ''}"
        print(f"{args.split}: MSE {result['mse']:.6f}  PSNR {result['psnr']:.2f} dB  ({count}, {said})")
    latent_dim, clean = run.config.model.latent_dim, results[0]["mse"]
    components = pca_sample(len(train), latent_dim, math.prod(train.image_shape))[1]
    size = "the same code size" if components == latent_dim else f"all that {len(train)} training images allow"
    print(f"{args.split}: PCA with {components} components ({size}, fitted on the training split): MSE "
          f"{baseline:.6f}; on clean inputs {pca_verdict(clean, baseline, latent_dim, components).text}")
    if variational is not None:
        _print_variational(variational, args.split)
    if generated is not None:
        print(f"{generated['n_generated']} images generated ({generated['sampler']}) against the {generated['n_test']} "
              f"{args.split} images, in the features of aelab's reference classifier ({generated['classifier_accuracy']:.2%} "
              "test accuracy; not Inception's, so not comparable to published FIDs):")
        print(f"  Fréchet distance {generated['frechet_distance']:.3f}, kernel distance (KID) "
              f"{generated['kernel_distance']:.4f}, precision {generated['precision']:.3f}, recall "
              f"{generated['recall']:.3f} (k = 3)")
        if "fid" in generated:
            print(f"  FID {generated['fid']:.3f} (Inception's pool features, weights from {generated['inception_weights']};"
                  " comparable to published FIDs of the same number of images)")
    return 0


def _generation(args: argparse.Namespace, run, data, train, inception=None) -> dict:
    """The measure of generated images (``generation.measure``) of ``args.generated`` new images
    (``train``: the training split, whose codes a mixture sampler is fitted to)."""
    from .. import generation, latent
    from ..data.sets import load_run_split

    sampler = latent.default_sampler(run.model)
    if sampler == "prior":
        images = latent.prior_images(run, args.generated, seed=args.seed or 0)
    else:
        codes = latent.encode(run.model, train.images, labels=train.labels)
        images = latent.sample_images(run, codes, args.generated, seed=args.seed or 0)
    if run.config.data.binarize:  # (the generated images are pixel means: compared with grey test images)
        from dataclasses import replace

        data = opened(args, load_run_split(run.config, replace(data_config(run.config, args), binarize=None), args.split))
    found = generation.measure(run, data, images, device=run.device, seed=args.seed or 0, inception=inception)
    return {**found, "sampler": sampler, **({"inception_weights": args.inception_weights} if inception else {})}


def _print_variational(found: dict, split: str) -> None:
    """A variational model's measures (``likelihood.measures``), a line each."""
    bound = f", importance-weighted bound {found['iw_nelbo']:.2f}" if "iw_nelbo" in found else ""
    print(f"{split}: negative ELBO {found['nelbo']:.2f} nats per image = reconstruction {found['recon']:.2f} + KL "
          f"{found['kl']:.2f}{bound} (one code drawn per image, seeded)")
    if "nll" in found:
        bits = f", {found['bits_per_dim']:.4f} bits per dimension" if "bits_per_dim" in found else ""
        print(f"{split}: negative log-likelihood {found['nll']:.2f} nats per image{bits} (importance sampling, K = "
              f"{found['nll_samples']})")
    print(f"active units: {found['active_units']} of {found['latent_dim']} (variance of the posterior mean over the "
          "images > 0.01)")
    print("KL per dimension (nats): " + " ".join(f"{value:.2f}" for value in found["kl_per_dimension"]))


def cmd_embed(args: argparse.Namespace) -> int:
    """Write one row per image: index (in its source), path (images from a folder), label (-1:
    unlabelled), z0 ... z{d-1}. A name ending in .parquet writes Parquet (pip install
    'aelab[parquet]').
    """
    from .. import latent

    from ..run import output_path

    run, data = run_and_split(args)
    embedding = latent.embed(run, data)
    path = latent.write_table(embedding.columns(), output_path(run.path, f"codes-{args.split}.csv", args.out))
    columns = ", ".join(name for name in embedding.columns() if not name.startswith("z"))
    print(f"{path}: {len(embedding)} rows ({columns}, z0..z{embedding.codes.shape[1] - 1}) from the {args.split} split")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Write an interactive HTML map (plotly, JavaScript inside: opens offline), a PNG of the same map
    and a CSV of the 2-D coordinates (index, label, x, y). t-SNE and UMAP map a sample of the images
    stratified by label, as many as the report's maps (3,000 for MNIST), unless --max-points says
    otherwise (--max-points all: every image; t-SNE then takes minutes for 10,000).
    """
    from ..figures import map_points, write_latent_map

    applies = PLOT_OPTIONS if args.max_points is None else {**PLOT_OPTIONS, "seed": ("scatter", "pca", "tsne", "umap")}
    options_for(args, args.method, applies, PLOT_DEFAULTS)
    run, data = run_and_split(args)
    most = args.max_points
    if most is None and args.method in ("tsne", "umap"):
        most = map_points(data.image_shape)
        if len(data) > most:
            logging.getLogger("aelab").info("%s map of %d of the %d %s images (a sample stratified by label, as in the "
                                            "report); --max-points all maps every image (slower)", args.method,
                                            most, len(data), args.split)
    with progress_bar(args, f"{args.method} map") as progress:
        paths = write_latent_map(run, data, args.method, args.split, args.out, dims=args.dims,
                                 perplexity=args.perplexity, max_points=None if most == "all" else most,
                                 seed=args.seed, progress=progress)
    print("\n".join(map(str, paths)))
    return 0


def max_points(text: str) -> int | str:
    """N (a number of points) or all."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of points or all, got {text!r}") from None


def cmd_report(args: argparse.Namespace) -> int:
    """Write RUN/report.html: configuration, metrics, loss curves, reconstructions per epoch, latent
    maps (interactive), generated images; it opens without a network.
    """
    from ..report import write_report

    print(write_report(args.run, data_dir=args.data_dir, data=args.data, device=args.device))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a run folder from its files (nothing is computed): its data source, model, recipe,
    epochs done, best epoch, test (or validation) metrics, anomaly detector, and the versions of
    aelab and torch that made it.
    """
    from ..run import summary, summary_lines

    found = summary(args.run)
    if args.json:
        print(json.dumps(found))
        return 0
    for key, value in summary_lines(found):
        print(f"{key:<9} {value}")
    return 0


def add_parsers(sub) -> None:
    p = command(sub, "evaluate", "reconstruction MSE and PSNR of a run", cmd_evaluate, writes=False)
    add_run(p)
    p.add_argument("--noise-factor", type=float, metavar="F",
                   help="measure denoising: noisy input (seeded), clean target; 0: clean inputs only (default: clean "
                        "inputs, and for a denoising run also its own noise factor)")
    p.add_argument("--seed", type=int, help="with --noise-factor: the seed of the noise (default: 0)")
    p.add_argument("--nll-samples", type=int, metavar="K", help="a variational run: also the negative log-likelihood "
                   "by importance sampling with K codes per image (nats and bits per dimension; K = 5000 as Burda et "
                   "al. 2016 takes minutes for 10,000 images on 2 cores)")
    p.add_argument("--generation", action="store_true", help="also measure generated images against the split: "
                   "Fréchet distance, kernel distance (KID), precision and recall in the features of a classifier that "
                   "aelab trains once per labelled dataset (cached; no download)")
    p.add_argument("--generated", type=int, default=10_000, metavar="N", help="--generation: the images generated "
                   "(from the prior for a variational run, else a mixture fitted to the codes; default: 10000)")
    p.add_argument("--inception-weights", metavar="FILE", help="--generation: also the usual FID, in the features of "
                   "the Inception network with its weights from FILE (pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                   "or torch-fidelity's copy; never downloaded; needs pip install 'aelab[fid]'; 0.13 s an image on 2 CPU cores: "
                   "about 45 minutes for 10,000 generated and 10,000 test images; use a GPU or fewer --generated)")
    p.add_argument("--json", action="store_true", help="print one JSON object (mse, psnr, split, n_images, "
                   "noise_factor, input; a denoising run's own noise under `denoising`; a variational run's nelbo, "
                   "recon, kl, active_units, kl_per_dimension, nll)")
    add_common(p)

    p = command(sub, "embed", "the latent codes of a split as a table (CSV or Parquet)", cmd_embed)
    add_run(p)
    p.add_argument("--out", metavar="FILE", help="FILE.csv or FILE.parquet (default: RUN/outputs/codes-SPLIT.csv)")
    add_common(p)

    p = command(sub, "plot", "an interactive map of the latent space (scatter, pca, tsne, umap)", cmd_plot)
    add_run(p)
    p.add_argument("method", choices=("scatter", "pca", "tsne", "umap"),
                   help="scatter: two latent variables (--dims); pca: first two principal components; "
                        "tsne: scikit-learn t-SNE; umap: umap-learn (pip install 'aelab[umap]')")
    p.add_argument("--out", metavar="FILE.html", help="default: RUN/outputs/METHOD-SPLIT.html")
    p.add_argument("--dims", type=dims, metavar="I,J", help="scatter: the two latent variables (default: 0,1)")
    p.add_argument("--perplexity", type=float, help="tsne: the t-SNE perplexity (default: 30)")
    p.add_argument("--max-points", type=max_points, metavar="N",
                   help="at most N points, sampled stratified by label, or all (default: all for scatter and pca; "
                        "for tsne and umap as many as the report's maps, 3,000 for MNIST)")
    p.add_argument("--seed", type=int, help="tsne, umap (or with --max-points): the seed of t-SNE/UMAP and of the "
                   "subsample (default: 0)")
    add_common(p)

    p = command(sub, "info", "what a run folder holds: data, model, recipe, progress, test metrics, detector", cmd_info,
                writes=False)
    add_run_folder(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_common(p, data_dir=False)

    p = command(sub, "report", "write RUN/report.html, one self-contained page", cmd_report, writes=False)
    add_run_folder(p)
    p.add_argument("--data", metavar="SOURCE", help="the images to show instead of the run's own source (another "
                   "copy of the same data, or new images), prepared as the run's training images were")
    add_device(p)
    add_common(p)
