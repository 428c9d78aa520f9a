"""Events and callbacks: what a user's callback sees, a library that never prints, trackers."""

import csv
import re
import sys

import pytest

from aelab import AelabError, RunConfig, train
from aelab.callbacks import Callback, Console, MLflow, ProgressBar, TensorBoard
from aelab.cli import main
from aelab.config import train_config_for
from aelab.report import write_report
from conftest import make_splits


def tiny_config(**train_values):
    values = {"epochs": 2, "batch_size": 64, "lr": 3e-3, **train_values}
    return RunConfig(train=train_config_for("fast", **values))


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append(("train_start", trainer.epoch))

    def on_epoch_start(self, trainer):
        self.events.append(("epoch_start", trainer.epoch))

    def on_step_end(self, trainer):
        self.events.append(("step", trainer.step))

    def on_epoch_end(self, trainer, row):
        self.events.append(("epoch_end", row["epoch"]))

    def on_train_end(self, trainer, result):
        self.events.append(("train_end", result.evaluation["test_mse"] > 0))

    def on_close(self, trainer):
        self.events.append(("close", None))


def test_a_users_callback_sees_every_event_in_order(tmp_path):
    recorder = Recorder()
    train(tiny_config(), tmp_path / "run", report=False, data=make_splits(), callbacks=[recorder])
    steps = [("step", k) for k in range(1, 5)]  # 256 images in batches of 64
    assert recorder.events == [("train_start", 0), ("epoch_start", 0), *steps, ("epoch_end", 1),
                               ("epoch_start", 1), *steps, ("epoch_end", 2), ("train_end", True), ("close", None)]


def test_on_close_is_called_when_training_fails(tmp_path):
    class Failing(Callback):
        def on_epoch_end(self, trainer, row):
            raise RuntimeError("planted")

    recorder = Recorder()
    with pytest.raises(RuntimeError, match="planted"):
        train(tiny_config(), tmp_path / "run", report=False, data=make_splits(), callbacks=[Failing(), recorder])
    assert recorder.events[-1] == ("close", None) and ("train_end", True) not in recorder.events


def test_callbacks_must_be_callbacks(tmp_path):
    with pytest.raises(AelabError, match="Callback"):
        train(tiny_config(), tmp_path / "run", report=False, data=make_splits(), callbacks=[print])


def test_the_library_never_prints(tmp_path, capfd):
    """Training (progress=False), the report (t-SNE included) and every file they write: nothing on
    stdout or stderr."""
    run_dir = tmp_path / "run"
    splits = make_splits()
    train(tiny_config(noise_factor=0.2), run_dir, report=False, data=splits, progress=False)
    write_report(run_dir, splits=splits)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert (run_dir / "report.html").exists()


def test_train_shows_progress_bars_and_prints_nothing_else(tmp_path, capfd):
    """From Python, train() shows a bar over the training (the epoch, the time so far and the time
    left) and one over the report's stages, on stderr (tqdm.auto: a widget in a notebook); nothing
    else, and nothing on stdout."""
    train(tiny_config(), tmp_path / "run", data=make_splits(n_test=5))  # (a small test split: warned, not printed)
    out, err = capfd.readouterr()
    assert out == ""
    assert "epoch 2/2: 100%" in err and "8/8 [" in err and "step/s" in err  # 2 epochs of 4 steps, elapsed<left
    assert "report: page: 100%" in err  # the report's bar
    shown = [part.strip() for line in err.splitlines() for part in line.split("\r") if part.strip()]
    assert all(re.match(r"(epoch \d+/2|report(: \w+)?):", part) for part in shown), shown  # bars, and nothing else


def test_console_and_progress_are_callbacks(tmp_path, capsys):
    train(tiny_config(), tmp_path / "run", report=False, data=make_splits(),
          callbacks=[ProgressBar(file=sys.stderr), Console()])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("aelab: training on cpu: 256 train / 64 val images")
    assert lines[1].startswith("epoch   1/2  train loss") and lines[2].startswith("epoch   2/2")
    assert lines[3].startswith("test MSE") and lines[-1] == f"run folder: {tmp_path / 'run'}"
    assert "epoch 1/2" in err  # the bar


def test_quiet_is_a_command_line_matter(fake_mnist, tmp_path, capfd):
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "loud"), "--no-report"]) == 0
    out, err = capfd.readouterr()
    assert "epoch   1/1" in out and "run folder:" in out


# --- trackers -----------------------------------------------------------------------------------

def metrics_csv(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_tensorboard_logs_what_metrics_csv_holds(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train(tiny_config(epochs=3), run_dir, report=False, data=make_splits(), callbacks=[TensorBoard()])
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    rows = metrics_csv(run_dir)
    for key in ("train_loss", "val_loss", "lr", "seconds"):
        logged = events.Scalars(key)
        assert [event.step for event in logged] == [1, 2, 3]
        assert [event.value for event in logged] == pytest.approx([float(row[key]) for row in rows], rel=1e-6)
    assert events.Scalars("final/test_mse")[0].value > 0


def test_mlflow_logs_params_metrics_and_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow puts a new experiment's artifacts in ./mlruns
    run_dir = tmp_path / "run"
    data = make_splits()
    train(tiny_config(epochs=2), run_dir, report=False, data=data, callbacks=[MLflow()])
    saved = __import__("json").loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["model.latent_dim"] == "4" and run.data.params["train.epochs"] == "2"
    rows = metrics_csv(run_dir)
    for key in ("train_loss", "val_loss", "lr"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([float(row[key]) for row in rows], rel=1e-9)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "model.safetensors", "metrics.csv", "evaluation.json", "figures"} <= artifacts
    assert "state" not in artifacts
    # a resumed (extended) run goes on logging into the same MLflow run
    train(tiny_config(epochs=3), run_dir, resume=True, explicit={"train.epochs"}, report=False, data=data,
          callbacks=[MLflow()])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.parametrize("tracker, module, extra", [("tensorboard", "tensorboard", "aelab[tensorboard]"),
                                                     ("mlflow", "mlflow", "aelab[mlflow]")])
def test_a_missing_tracker_is_one_line_naming_the_install(tracker, module, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    if module == "tensorboard":
        monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    assert main(["train", "--track", tracker, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install '{extra}'" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was made
