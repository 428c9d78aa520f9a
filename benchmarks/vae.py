"""Side by side: aelab's VAE against pythae 0.1.2's VAE on the same network, data and epochs.

    .venv/bin/python benchmarks/vae.py --setup      # once: pythae in its own environment (benchmarks/out/pythae-env)
    .venv/bin/python benchmarks/vae.py              # both sides, 30 epochs each, test NLL with K = 200 (about 15 minutes)
    .venv/bin/python benchmarks/vae.py --epochs 5 --test-images 1000   # a quick look
    .venv/bin/python benchmarks/vae.py --sides pythae short --short 22   # pythae's NLL in half its time?
    .venv/bin/python benchmarks/vae.py --part generation   # measures of generated images: ae, vae, beta-VAE, cvae

The network is the tutorial's (aelab's ``Encoder``/``Decoder``) with two heads, latent size 16, as
PyTorch's own layers on pythae's side; the data are aelab's MNIST split (48,000 training images,
12,000 for validation, the 10,000 test images), binarised by x > 0.5 (``--binarize threshold``, the
protocol of the issue's pythae anchor); a Bernoulli decoder, batch 256, 30 epochs. pythae trains with
Adam at 1e-3 (its anchor's recipe), aelab with that recipe too (``--recipe tutorial``: constant 1e-3,
no KL warm-up) and with its own (``fast``: a one-cycle to 1e-2, the KL weight rising over the first
quarter of the epochs, the default), and with ``fast`` on a budget of epochs
(``--short``, default 12) for the time to pythae's final NLL. Each side runs in its own process and
reports seconds per epoch (the whole loop with its evaluation, as each library runs it), the test
negative ELBO, and the test NLL by each library's own estimator with the same K (pythae's
``get_nll``, which wants ``model.eval()`` and ``torch.no_grad()``, returns the mean log-likelihood,
and uses ``batch_size`` samples when ``n_samples`` is smaller: both are given K). Results go to
benchmarks/out/vae-DATE.json.

pythae's environment: a virtual environment that sees .venv's packages (a .pth file) and adds
pythae without its dependencies (``pip install --no-deps pythae==0.1.2``; its old ``dataclasses``
backport is not needed) and the few it lacks (imageio, dill).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = HERE / "out" / "pythae-env"
LATENT = 16


def setup() -> None:
    """pythae 0.1.2 in its own virtual environment, layered on this one's packages."""
    subprocess.run([sys.executable, "-m", "venv", str(ENV)], check=True)
    python = ENV / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # (site.addsitedir also reads that folder's .pth files: aelab's editable install is one)
    Path(site, "aelab-venv.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--no-deps", "pythae==0.1.2"], check=True)
    subprocess.run([*pip, "imageio", "dill"], check=True)
    subprocess.run([str(python), "-c", "import pythae, torch; print('pythae', pythae.__version__ if hasattr(pythae, "
                    "'__version__') else '0.1.2', 'with torch', torch.__version__)"], check=True)


def mnist(test_images: int):
    """aelab's MNIST split, binarised by x > 0.5, as float tensors [N, 1, 28, 28] in {0, 1}."""
    from aelab.config import DataConfig
    from aelab.data.sets import load_splits

    splits = load_splits(DataConfig(binarize="threshold"))
    return {name: split.images.float().div(255)[: test_images if name == "test" else None]
            for name, split in splits.items()}


def run_pythae(args) -> dict:
    import torch
    from torch import nn

    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    from aelab.exporting import plain_model
    from aelab.models.nets import Decoder, Encoder

    torch.manual_seed(0)

    class TwoHeads(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net, self.log_variance = Encoder(LATENT, 1, 28), nn.Linear(128, LATENT)

        def forward(self, x):
            hidden = self.net.encoder_lin[:2](self.net.flatten(self.net.encoder_cnn(x)))
            return ModelOutput(embedding=self.net.encoder_lin[2](hidden), log_covariance=self.log_variance(hidden))

    class Tutorial(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = plain_model(Decoder(LATENT, 1, 28)).train()  # PyTorch's own transposed convolutions

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    data = mnist(args.test_images)
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=LATENT, reconstruction_loss="bce"),
                encoder=TwoHeads(), decoder=Tutorial())
    with tempfile.TemporaryDirectory() as folder:
        config = BaseTrainerConfig(output_dir=folder, num_epochs=args.epochs, learning_rate=1e-3,
                                   per_device_train_batch_size=256, per_device_eval_batch_size=256,
                                   train_dataloader_num_workers=0, eval_dataloader_num_workers=0, no_cuda=True,
                                   steps_saving=None, seed=0)
        datasets = [BaseDataset(data[name], torch.zeros(len(data[name]))) for name in ("train", "val")]
        trainer = BaseTrainer(model, *datasets, config)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    model = trainer._best_model if getattr(trainer, "_best_model", None) is not None else model
    model.eval()
    with torch.no_grad():
        test = data["test"]
        nelbo = sum(float(model({"data": test[i: i + 1000]}).loss) * len(test[i: i + 1000])
                    for i in range(0, len(test), 1000)) / len(test)
        started = time.perf_counter()
        nll = -float(model.get_nll(test, n_samples=args.nll_samples, batch_size=args.nll_samples))
        nll_seconds = time.perf_counter() - started
    return {"side": "pythae 0.1.2 VAE", "epochs": args.epochs, "seconds": seconds, "seconds_per_epoch": seconds / args.epochs,
            "test_nelbo": nelbo, "test_nll": nll, "nll_samples": args.nll_samples, "nll_seconds": nll_seconds}


def run_aelab(args, recipe: str, epochs: int) -> dict:
    import torch

    from aelab import RunConfig, train
    from aelab.config import DataConfig, ModelConfig, train_config_for
    from aelab.data.sets import load_splits
    from aelab.likelihood import importance_nll

    data = DataConfig(binarize="threshold")
    splits = load_splits(data)
    splits["test"] = splits["test"].subset(torch.arange(min(args.test_images, len(splits["test"]))))
    # pythae's recipe has no KL warm-up: aelab's tutorial side none either; fast has its default (a quarter)
    warmup = 0.0 if recipe == "tutorial" else None
    config = RunConfig(data=data, model=ModelConfig(kind="vae", latent_dim=LATENT, kl_warmup=warmup),
                       train=train_config_for(recipe, epochs=epochs, loss="bce"))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = train(config, Path(folder) / "run", report=False, data=splits, progress=False)
        seconds = time.perf_counter() - started
    started = time.perf_counter()
    nll = float(importance_nll(result.model, splits["test"].images, args.nll_samples, seed=0).mean())
    return {"side": f"aelab VAE ({recipe}, {epochs} epochs)", "epochs": epochs, "seconds": seconds,
            "seconds_per_epoch": sum(row["seconds"] for row in result.metrics) / epochs,
            "test_nelbo": result.evaluation["test_nelbo"], "test_nll": nll, "nll_samples": args.nll_samples,
            "nll_seconds": time.perf_counter() - started}


GENERATORS = {  # the rows of --part generation: (model settings, loss, sampler)
    "ae + mixture": ({"kind": "ae"}, "mse", "gmm"),
    "vae + prior": ({"kind": "vae"}, "bce", "prior"),
    "vae + mixture": ({"kind": "vae"}, "bce", "gmm"),
    "beta-VAE (beta 4) + prior": ({"kind": "vae", "beta": 4.0}, "bce", "prior"),
    "cvae + prior (the classes in turn)": ({"kind": "cvae"}, "bce", "prior"),
    # the conditional recipe: beta 2 makes the code drop what the label already says (goal 3)
    "cvae, beta 2 + prior (the classes in turn)": ({"kind": "cvae", "beta": 2.0}, "bce", "prior"),
}


def run_generation(args, name: str) -> dict:
    """One row of aelab's generation measures: a run on grey MNIST (latent 16, fast, ``--epochs``),
    10,000 images generated, measured against the test split in the reference classifier's features."""
    import torch

    from aelab import RunConfig, generation, latent, train
    from aelab.config import DataConfig, ModelConfig, train_config_for
    from aelab.data.sets import load_splits
    from aelab.run import load_run

    model, loss, sampler = GENERATORS[name]
    splits = load_splits(DataConfig())
    config = RunConfig(model=ModelConfig(latent_dim=LATENT, **model), train=train_config_for("fast", epochs=args.epochs,
                                                                                           loss=loss))
    with tempfile.TemporaryDirectory() as folder:
        train(config, Path(folder) / "run", report=False, data=splits, progress=False)
        run = load_run(Path(folder) / "run")
        if sampler == "prior":
            images = latent.prior_images(run, args.generated, seed=0)
        else:
            codes = latent.encode(run.model, splits["train"].images, labels=splits["train"].labels)
            images = latent.sample_images(run, codes, args.generated, seed=0)
        found = generation.measure(run, splits["test"], images)
        if run.model.conditional:  # the classifier's verdict on 200 samples of each digit
            reference = generation.reference_classifier(DataConfig())
            right = {}
            for digit in range(10):
                drawn = latent.prior_images(run, 200, seed=digit, label=digit)
                with torch.no_grad():
                    right[digit] = float((reference.model(drawn).argmax(1) == digit).float().mean())
            found["recognised"] = right
    return {"side": name, **found}


def side(args) -> None:
    if args.side == "pythae":
        found = run_pythae(args)
    elif args.side in GENERATORS:
        found = run_generation(args, args.side)
    else:
        recipe, epochs = args.side.split(":")
        found = run_aelab(args, recipe, int(epochs))
    print("RESULT " + json.dumps(found), flush=True)


def generation_part(args) -> None:
    """--part generation: aelab's measures of generated images for each kind of model."""
    results = []
    for name in GENERATORS:
        print(f"vae bench: {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--side", name, "--epochs", str(args.epochs),
                               "--generated", str(args.generated)], capture_output=True, text=True)
        line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(line[7:]))
    print(f"{'':38} {'Fréchet':>8} {'KID':>8} {'precision':>9} {'recall':>7}  (reference classifier "
          f"{results[0]['classifier_accuracy']:.2%})")
    for found in results:
        print(f"{found['side']:38} {found['frechet_distance']:8.2f} {found['kernel_distance']:8.3f} "
              f"{found['precision']:9.3f} {found['recall']:7.3f}")
        if "recognised" in found:
            print("  the digit asked for, recognised in 200 samples each: "
                  + " ".join(f"{digit}: {share:.0%}" for digit, share in found["recognised"].items()))
    out = HERE / "out" / f"vae-generation-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"results: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="make pythae's environment and stop")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--short", type=int, default=12, help="aelab's fast recipe on this budget of epochs too")
    parser.add_argument("--nll-samples", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--part", choices=("pythae", "generation"), default="pythae",
                        help="pythae: the side-by-side run (default); generation: aelab's measures of generated images "
                             "for ae + mixture, vae + prior, vae + mixture, beta-VAE and cvae (and its samples' digits)")
    parser.add_argument("--generated", type=int, default=10_000)
    parser.add_argument("--sides", nargs="+", choices=("pythae", "tutorial", "fast", "short"),
                        default=["pythae", "tutorial", "fast", "short"],
                        help="which sides run (pythae first, the others compared with it; default: all)")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        return setup()
    if args.side:
        return side(args)
    if args.part == "generation":
        return generation_part(args)
    if not (ENV / "bin" / "python").exists():
        raise SystemExit(f"pythae's environment is missing: run {sys.argv[0]} --setup first")
    common = ["--epochs", str(args.epochs), "--nll-samples", str(args.nll_samples), "--test-images", str(args.test_images)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}
    runs = [(python, name) for python, name, key in (
        (str(ENV / "bin" / "python"), "pythae", "pythae"), (sys.executable, f"tutorial:{args.epochs}", "tutorial"),
        (sys.executable, f"fast:{args.epochs}", "fast"), (sys.executable, f"fast:{args.short}", "short"))
        if key in args.sides]
    if "pythae" not in args.sides:
        raise SystemExit("--sides: every side is compared with pythae's; name pythae too")
    results = []
    for python, name in runs:
        print(f"vae bench: {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run([python, __file__, "--side", name, *common], capture_output=True, text=True, env=env)
        line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(line[7:]))
    print(f"{'':34} {'s/epoch':>8} {'total s':>8} {'test NELBO':>11} {'test NLL':>9} (K = {args.nll_samples})")
    for found in results:
        print(f"{found['side']:34} {found['seconds_per_epoch']:8.2f} {found['seconds']:8.1f} {found['test_nelbo']:11.2f} "
              f"{found['test_nll']:9.2f}")
    pythae = results[0]
    for found in results[1:]:
        print(f"{found['side']}: {pythae['seconds_per_epoch'] / found['seconds_per_epoch']:.2f}x pythae's epoch speed, "
              f"NLL {pythae['test_nll'] - found['test_nll']:+.2f} nats better, in "
              f"{found['seconds'] / pythae['seconds']:.0%} of pythae's training time")
    out = HERE / "out" / f"vae-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
