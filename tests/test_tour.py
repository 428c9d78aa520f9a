"""The tour runs in order: the README's first command, its tour and its Python block, then the first
block of each guide that a new user follows (aelab from Python, using a run, variational
autoencoders), as written, one after the other, in a fresh folder. MNIST is a small fake of it (ten
classes) so that the whole walk takes minutes, and your own images need fewer steps than a real run."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, fake_mnist_in
from test_api import blocks, command_lines

from aelab.cli import main


def commands(text: str) -> list[list[str]]:
    """The aelab commands of a bash block, as the words after `aelab`."""
    return [shlex.split(line)[1:] for line in command_lines(text)]


def pictures(folder: Path, n: int, size: tuple[int, int], seed: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = np.zeros((*size, 3), np.uint8)
        pixels[:, : 4 + i % (size[1] - 4)] = rng.integers(60, 255, 3)
        pixels += rng.integers(0, 30, pixels.shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"picture-{i:02d}.png")


@pytest.mark.slow
def test_the_readme_and_the_guides_run_in_order_as_written(tmp_path, monkeypatch, capsys):
    from aelab import defaults

    fake_mnist_in(tmp_path / "data", monkeypatch, n_classes=10)
    monkeypatch.setattr(defaults, "MIN_STEPS", 40)  # (your own images: the walk is about order, not quality)
    monkeypatch.chdir(tmp_path)
    for name, n, size in (("my_photos", 40, (48, 40)), ("new_scans", 6, (28, 28)), ("scans", 3, (30, 20)),
                          ("noisy", 3, (28, 28)), ("photos", 4, (28, 28))):
        pictures(tmp_path / name, n, size, seed=n)

    readme, guides = [ROOT / "README.md"], [ROOT / "docs" / "using.md", ROOT / "docs" / "variational.md"]
    first, tour = (commands(text) for _, text in blocks("bash", readme))  # the main job; the tour
    walk = [("README: the main job", first[0])] + [("README: the tour", words) for words in tour]
    after = [(where, words) for where, text in [blocks("bash", [guide])[0] for guide in guides]
             for words in commands(text)]
    python = [blocks("python", readme)[0], blocks("python", [ROOT / "docs" / "python.md"])[0]]

    def run(where: str, words: list[str]) -> None:
        code = main(words)
        said = capsys.readouterr()
        assert code == 0, f"{where}: aelab {' '.join(words)} failed: {said.err[-2000:]}"

    for where, words in walk:  # the README's commands
        run(where, words)
    assert (tmp_path / "runs" / "mnist-d4" / "report.html").is_file()
    assert (tmp_path / "runs" / "mnist-d2" / "config.json").is_file()  # the default folders name what differs
    assert (tmp_path / "runs" / "mnist-vae-bce-dynamic-d4" / "config.json").is_file()
    assert (tmp_path / "runs" / "my_photos" / "report.html").is_file()
    for where, code in python:  # the Python blocks, after the README's commands
        exec(compile(code, where, "exec"), {})
    for where, words in after:  # then the guides' first blocks
        run(where, words)


def test_a_folder_that_holds_a_run_offers_resume_only_for_the_same_settings(fake_mnist, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--epochs", "1", "--out", out, "--no-report", "--quiet"]) == 0
    assert main(["train", "--epochs", "1", "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "continue it with --resume, replace it with --overwrite, or choose another --out folder" in err
    assert main(["train", "--model", "vae", "--loss", "bce", "--epochs", "1", "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume" not in err and "--model 'ae' (not 'vae')" in err and "--loss 'mse' (not 'bce')" in err
    assert "replace it with --overwrite, or choose another --out folder" in err
    assert main(["train", "--epochs", "3", "--out", out, "--quiet"]) == 2  # (more epochs: a resume extends it)
    assert "it was trained with --epochs 1 (not 3): continue it with --resume and those" in capsys.readouterr().err


def test_default_run_folders_name_what_sets_a_run_apart():
    from aelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, model_config_for, train_config_for

    assert RunConfig().default_run_dir() == "runs/mnist-d4"
    assert RunConfig(model=ModelConfig(latent_dim=2)).default_run_dir() == "runs/mnist-d2"
    assert RunConfig(model=ModelConfig(kind="vae"), train=TrainConfig(loss="bce"),
                     data=DataConfig(binarize="dynamic")).default_run_dir() == "runs/mnist-vae-bce-dynamic-d4"
    assert RunConfig(train=TrainConfig(noise_factor=0.3)).default_run_dir() == "runs/mnist-denoise0.3-d4"
    assert RunConfig(model=model_config_for("novelty"), train=train_config_for("novelty"),
                     data=DataConfig(classes="0,2")).default_run_dir() == "runs/mnist-novelty-classes0+2-d16"
    # your own images: the latent size is chosen from them, so it is not in the name unless given
    assert RunConfig(data=DataConfig(dataset="./my_photos")).default_run_dir() == "runs/my_photos"
    assert RunConfig(data=DataConfig(dataset="shots.npz"), model=ModelConfig(latent_dim=8)).default_run_dir() == \
        "runs/shots-d8"
