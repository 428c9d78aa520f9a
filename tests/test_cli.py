import json
import os
import subprocess
import sys

import pytest

from aelab.cli import main

AELAB = [sys.executable, "-m", "aelab"]


def run_cli(*args, env=None):
    return subprocess.run([*AELAB, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, words", [
    (["train", "--latent-dim", "0"], "--latent-dim must be at least 1"),
    (["train", "--epochs", "-1"], "--epochs must be at least 1"),
    (["train", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["train", "--shards", "-1"], "--shards must be 0 (auto) or more"),
    (["evaluate", "/nonexistent/run"], "run folder /nonexistent/run does not exist"),
])
def test_bad_input_is_one_line_without_traceback(args, words, tmp_path):
    result = run_cli(*args, "--out", str(tmp_path / "r")) if args[0] == "train" else run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epochs", "many"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs" in err[0] and "--help" in err[0]


def test_debug_shows_the_traceback():
    result = run_cli("--debug", "evaluate", "/nonexistent/run")
    assert result.returncode != 0 and "Traceback" in result.stderr


def commands(parser, prefix=()):
    """Every command and subcommand the parser knows, found by walking it (a new one is included)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from commands(sub, (*prefix, name))


def test_every_command_has_help(capsys):
    from aelab.cli import build_parser

    found = list(commands(build_parser()))
    assert {" ".join(c) for c in found} >= {"data", "data fetch", "train", "evaluate", "embed", "plot", "generate",
                                           "report"}
    for command in [(), *found]:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0, command
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {' '.join(('aelab', *command))}") and len(out.splitlines()) > 3, command


def test_library_names_become_this_commands_options():
    from aelab.cli import build_parser, for_the_command_line

    parser = build_parser()
    train = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and "train" in a.choices).choices["train"]
    message = "`train.lr` (now 1000); `model.latent_dim` 4, not 8; `data.val_fraction`; `overwrite`; `out`; `aelab x`"
    assert for_the_command_line(message, train) == \
        "--lr (now 1000); --latent-dim 4, not 8; --val-fraction; --overwrite; --out; `aelab x`"


def test_train_then_evaluate_json(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(out), "--no-report", "--quiet"]) == 0
    assert (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["split"] == "test" and values["n_images"] == 100
    assert values["mse"] == pytest.approx(json.loads((out / "evaluation.json").read_text())["test_mse"], abs=1e-6)
    assert values["psnr"] > 0
    assert main(["evaluate", str(out), "--split", "val", "--noise-factor", "0.3", "--json"]) == 0
    noisy = json.loads(capsys.readouterr().out)
    assert noisy["split"] == "val" and noisy["n_images"] == 60 and noisy["noise_factor"] == 0.3


def test_a_run_folder_missing_its_weights_is_named(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--epochs", "1", "--out", str(out), "--no-report", "--quiet"])
    (out / "model.safetensors").unlink()
    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is missing" in err


def test_a_corrupt_data_file_is_reported(fake_mnist, tmp_path, capsys):
    raw = fake_mnist / "MNIST" / "raw"
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"garbage")
    assert main(["data", "fetch"]) == 2
    err = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte" in err and "place the four" in err
    assert (raw / "t10k-images-idx3-ubyte.corrupt").read_bytes() == b"garbage"  # kept aside, never used


def test_help_is_fast():
    """`aelab --help` must not import torch (heavy imports happen in the commands)."""
    code = "import sys; from aelab.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"


def test_resume_from_the_command_line(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-report", "--quiet"]) == 0
    assert main(["train", "--resume", str(out), "--latent-dim", "8", "--quiet"]) == 2
    assert "trained with --latent-dim 4, not 8" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet", "--no-report"]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert main(["train", "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_may_point_at_the_data_elsewhere(fake_mnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-report", "--quiet"]) == 0
    moved = tmp_path / "moved"
    fake_mnist.rename(moved)
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path / "nowhere"))
    assert main(["train", "--resume", str(out), "--epochs", "2", "--data-dir", str(moved), "--quiet", "--no-report"]) == 0


# --- one way everywhere -----------------------------------------------------------------------------

def test_debug_and_quiet_work_before_or_after_the_command(tmp_path):
    for args in (["--debug", "evaluate", "/nonexistent/run"], ["evaluate", "/nonexistent/run", "--debug"]):
        result = run_cli(*args)
        assert result.returncode != 0 and "Traceback" in result.stderr and "unrecognized" not in result.stderr, args
    for args in (["-q", "evaluate", "/nonexistent/run"], ["evaluate", "/nonexistent/run", "--quiet"]):
        result = run_cli(*args)
        assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


MODEL_COMMANDS = ("evaluate", "embed", "plot", "generate", "report", "score", "reconstruct", "denoise", "encode",
                  "export")


def test_every_command_that_runs_the_model_takes_device_auto():
    from aelab.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices).choices
    for name in MODEL_COMMANDS:
        device = [a for a in subcommands[name]._actions if "--device" in a.option_strings]
        assert len(device) == 1 and device[0].default == "auto", name
    train = [a for a in subcommands["train"]._actions if "--device" in a.option_strings][0]
    assert train.default is None  # (the config's default, auto)


@pytest.mark.parametrize("args, words", [
    (["generate", "RUN", "--samples", "40", "--dims", "0,1"], "--dims applies to --grid only, not to --samples"),
    (["generate", "RUN", "--grid", "--steps", "5"], "--steps applies to --interpolate or --traverse only, not to --grid"),
    (["generate", "RUN", "--interpolate", "0", "1", "--n", "5"], "--n applies to --grid only"),
    (["generate", "RUN", "--grid", "--seed", "3"], "--seed applies to --samples only"),
    (["generate", "RUN", "--grid", "--split", "val"], "--split applies to --interpolate or --traverse only"),
    (["plot", "RUN", "tsne", "--dims", "0,1"], "--dims applies to scatter only, not to tsne"),
    (["plot", "RUN", "scatter", "--perplexity", "5"], "--perplexity applies to tsne only"),
    (["plot", "RUN", "pca", "--seed", "1"], "--seed applies to tsne or umap only"),
    (["evaluate", "RUN", "--seed", "1"], "--seed is the seed of --noise-factor's noise"),
    (["denoise", "RUN", "IN", "--out", "OUT", "--seed", "1"], "--seed is the seed of --add-noise's noise"),
])
def test_an_option_that_does_not_apply_is_refused(args, words, trained_run, capsys):
    args = [str(trained_run) if a == "RUN" else a for a in args]
    assert main([*args, "--quiet"]) == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_info_says_what_a_run_folder_holds(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    for words in ("finished", "latent size 4", "fast: 3 epochs (3 done)", "test      MSE", "none yet", "torch"):
        assert words in text, words
    from aelab.run import load_run
    from aelab.scores import fit_detector, save_detector
    from conftest import make_splits

    splits = make_splits()
    save_detector(fit_detector(load_run(run).model, splits["train"].images, splits["val"].images), run)
    assert main(["info", str(run), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["epochs_done"] == 3 and found["best_epoch"] in (1, 2, 3) and found["status"] == "finished"
    assert found["detector"]["fitted_on_these_weights"] is True and found["evaluation"]["test_mse"] > 0
    assert found["data"]["image_size"] == "28x28" and found["versions"]["aelab"]
    # the run trains on: a detector of its old weights is said to be so
    from aelab import RunConfig, train
    from aelab.config import train_config_for

    train(RunConfig(train=train_config_for("fast", epochs=4, batch_size=32, lr=3e-3)), run, resume=True,
          report=False, data=splits)
    save_detector(fit_detector(load_run(trained_run).model, splits["train"].images, splits["val"].images), run)
    assert main(["info", str(run)]) == 0
    assert "fitted on other weights" in capsys.readouterr().out
    (run / "anomaly.json").write_text('{"method": "mse"}')  # (a detector file from elsewhere, without its numbers)
    assert main(["info", str(run)]) == 0
    assert "detector  mse score, fitted on other weights" in capsys.readouterr().out
