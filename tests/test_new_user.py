"""What a new user met on the way in (issue 31): a small folder gets its report and every command
works, time is said as it passes, losing to PCA is said with what to try, a shortened schedule is
said and shown, and the messages that misled say what happened."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import make_splits

from aelab import RunConfig, train
from aelab.cli import main
from aelab.config import train_config_for
from aelab.evaluation import pca_verdict


def pictures(folder, n: int, size=(24, 32), grey: int = 0, seed: int = 0) -> None:
    """``n`` PNG files, the last ``grey`` of them grey."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        pixels[:, : 3 + i] = 230
        image = Image.fromarray(pixels)
        (image.convert("L") if i >= n - grey else image).save(folder / f"p{i:02d}.png")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A folder of 14 pictures: 1 test image, 3 validation and 10 training images."""
    root = tmp_path_factory.mktemp("small")
    pictures(root / "photos", 14)
    out = root / "run"
    assert main(["train", "--data", str(root / "photos"), "--data-dir", str(root / "cache"), "--epochs", "2",
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_a_small_folder_gets_its_report_with_a_note_and_no_t_sne(small_run):
    page = (small_run / "report.html").read_text()
    assert "No t-SNE map: 1 test image is too few for one (it needs 11 or more)" in page
    assert 'id="map-tsne"' not in page and 'id="map-scatter"' in page
    assert "The test split holds 1 image: too few to trust its numbers" in page and "--test-fraction" in page


@pytest.mark.parametrize("command", [
    ["evaluate"], ["evaluate", "--split", "val"], ["embed"], ["plot", "scatter"], ["plot", "pca"],
    ["generate", "--grid"], ["generate", "--samples", "4"], ["generate", "--traverse", "0"], ["score"], ["info"],
    ["report"], ["export", "--format", "onnx"], ["export", "--format", "web"],
])
def test_every_command_works_on_a_test_split_of_one_image(small_run, command, capsys):
    args = [command[0], str(small_run), *command[1:]]
    if command[0] != "info" and command[1:] != ["--format", "onnx"]:  # (the images are read from the cache)
        args += ["--data-dir", str(small_run.parent / "cache")]
    assert main(args + ["--quiet"]) == 0, capsys.readouterr().err


def test_t_sne_of_a_few_images_is_refused_with_what_to_use_instead(small_run, capsys):
    assert main(["plot", str(small_run), "tsne", "--data-dir", str(small_run.parent / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a tsne map needs 11 images or more, and there are 1; map them with pca or scatter instead" in err


def test_a_small_test_split_is_said_when_training_starts(tmp_path, capfd):
    pictures(tmp_path / "photos", 14)
    assert main(["train", "--data", str(tmp_path / "photos"), "--data-dir", str(tmp_path / "cache"), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-report"]) == 0
    err = capfd.readouterr().err
    assert "the test split holds 1 image: too few to trust its numbers (aim for 20 or more); a larger " \
           "--test-fraction (data.test_fraction, now 0.1; such as 0.3) holds out more" in err


def test_the_verdict_says_who_wins_by_how_much_and_what_to_try():
    won = pca_verdict(0.025, 0.05, 4)
    assert won.wins and won.text == "the autoencoder beats PCA-4: its error is 50% lower than PCA's 0.05000"
    lost = pca_verdict(0.025, 0.015, 64)
    assert lost.wins is False and lost.text.startswith("PCA-64 beats the autoencoder: PCA's error 0.01500 is 40% lower")
    assert "train longer (--epochs), try a larger code (--latent-dim), or give more images" in lost.text
    assert pca_verdict(0.01, 0.0, 2).wins is None


def test_training_says_time_so_far_and_left_and_the_verdict(fake_mnist, tmp_path, capsys):
    assert main(["train", "--epochs", "3", "--batch-size", "64", "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and all(re.search(r"\(\S+ s so far", line) for line in epochs)
    assert "left)" in epochs[0] and "left" not in epochs[-1]
    assert re.search(r"^(the autoencoder beats PCA-4|PCA-4 beats the autoencoder)", out, re.MULTILINE)
    stages = [line for line in err.splitlines() if line.startswith("aelab: report: ")]
    assert len(stages) == 5
    assert all(re.search(r"\((\d) of 5; \S+ s so far, about \S+ s left\)", line) for line in stages), stages
    assert "memory: about" in err and "at the peak" in err


def test_a_shortened_schedule_is_said_and_shown(tmp_path, capsys):
    from aelab.callbacks import Callback
    from aelab.training import TrainingInterrupted

    class StopAfter2(Callback):
        def on_epoch_end(self, trainer, row):
            if trainer.epoch == 2:
                import os
                import signal

                os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(RunConfig(train=train_config_for("fast", epochs=40, batch_size=64)), run, data=make_splits(),
              callbacks=[StopAfter2()], progress=False)
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("aelab").addHandler(handler)
    logging.getLogger("aelab").setLevel(logging.INFO)
    train(RunConfig(train=train_config_for("fast", epochs=4, batch_size=64)), run, resume=True, data=make_splits(),
          explicit={"train.epochs"}, progress=False)
    said = [record.getMessage() for record in records if "had planned" in record.getMessage()]
    assert said and said[0].startswith("the run had planned 40 epochs and stops at epoch 4 instead: after epoch 2 "
                                       "the rate falls from") and "never reaches the peak of 0.01 planned" in said[0]
    assert main(["info", str(run)]) == 0
    info = capsys.readouterr().out
    assert re.search(r"schedule +the run had planned 40 epochs and stops at epoch 4 instead", info)
    assert "The schedule as it ran: resumed with another length, the run had planned 40 epochs" in \
        (run / "report.html").read_text()
    assert json.loads((run / "config.json").read_text())["schedule_changes"][0]["epochs_before"] == 40


def test_messages_that_misled_now_say_what_happened(tmp_path, fake_mnist, capsys):
    for words, said in ((["train", "--latnet-dim", "8"], "unrecognized arguments: --latnet-dim 8; did you mean "
                                                         "--latent-dim? (see `aelab train --help`)"),
                        (["plot", "RUN", "tsen"], "; did you mean tsne?")):
        with pytest.raises(SystemExit) as usage:  # (argparse's usage errors: exit code 2)
            main(words)
        assert usage.value.code == 2 and said in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-report", "--quiet"]) == 0
    assert main(["score", str(out), "--data", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--data 'nope' is neither a named dataset" in err and "data.dataset" not in err


def test_notes_about_a_folder_are_said_once_and_as_they_are(tmp_path, capfd):
    pictures(tmp_path / "mixed", 30, grey=6)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "mixed"), "--data-dir", str(tmp_path / "cache"), "--epochs", "3",
                 "--out", str(run), "--no-report"]) == 0
    err = capfd.readouterr().err
    assert "6 of 30 images are grey and the others have colour: every image gets 3 channels" in err
    assert "(as asked)" not in err
    chosen = next(line for line in err.splitlines() if "chosen from the data" in line)
    assert "as given: 3 epochs" in chosen and "batch 64" in chosen.split("; as given")[0]
    import shutil

    shutil.copytree(tmp_path / "mixed", tmp_path / "copy")  # (another copy of the data: said to be the same)
    assert main(["evaluate", str(run), "--data", str(tmp_path / "copy"), "--data-dir", str(tmp_path / "cache")]) == 0
    err = capfd.readouterr().err
    assert err.count("holds the images the run was trained on") == 1  # the images read once (not once a split)
    assert err.count("are grey") == 1  # and each note about them said once


def test_a_run_saved_before_given_was_recorded_keeps_its_page_when_resumed(fake_mnist, tmp_path):
    """A run whose config.json records no `given` (saved by an earlier aelab) is resumed: it still
    records none, so its report keeps splitting the settings the old way."""
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-report", "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["given"] == ["train.epochs"]
    del saved["given"]
    (out / "config.json").write_text(json.dumps(saved))
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert "given" not in json.loads((out / "config.json").read_text())
    assert "this run was made before aelab recorded which were given" in (out / "report.html").read_text()
