"""Runs that survive: exact resume, signals, hostile files, numerical faults, full disks."""

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from aelab import AelabError, RunConfig, load_run, train
from aelab.callbacks import Callback
from aelab.run import read_metrics
from aelab.cli import main
from aelab.config import train_config_for
from aelab.training import NumericalFault, TrainingInterrupted
from conftest import ROOT, make_splits

MARKER = Path("/tmp/aelab-pwned-marker")


def config(**train_values):
    values = {"epochs": 4, "batch_size": 32, "lr": 3e-3, **train_values}
    return RunConfig(train=train_config_for("fast", **values))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def same_metrics(a: list[dict], b: list[dict]) -> bool:
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    return strip(a) == strip(b)


# --- exact resume -----------------------------------------------------------------------------

@pytest.mark.parametrize("shards", [1, 2])
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, shards):
    data = make_splits()
    straight = train(config(noise_factor=0.2, shards=shards), tmp_path / "straight", report=False, data=data)

    class InterruptAfterEpoch2(Callback):
        def on_epoch_end(self, trainer, row):
            if row["epoch"] == 2:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, caught by the trainer: checkpoint, then stop

    with pytest.raises(TrainingInterrupted, match="after epoch 2") as stopped:
        train(config(noise_factor=0.2, shards=shards), tmp_path / "split", report=False, data=data,
              callbacks=[InterruptAfterEpoch2()])
    assert stopped.value.exit_code == 130
    resumed = train(None, tmp_path / "split", resume=True, report=False, data=data)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert same_metrics(straight.metrics, resumed.metrics)
    assert same_metrics(read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split"))


def test_resume_refuses_another_architecture_or_data(tmp_path):
    data = make_splits()
    train(config(epochs=1), tmp_path / "run", report=False, data=data)
    bigger = RunConfig(model=RunConfig().model.__class__(latent_dim=8), train=config().train)
    with pytest.raises(AelabError, match="`model.latent_dim` 4, not 8"):
        train(bigger, tmp_path / "run", resume=True, explicit={"model.latent_dim"}, data=data)
    with pytest.raises(AelabError, match="training data differ"):
        train(None, tmp_path / "run", resume=True, data=make_splits(seed=3))
    with pytest.raises(AelabError, match="no checkpoint to resume"):
        (tmp_path / "empty").mkdir()
        shutil.copy(tmp_path / "run" / "config.json", tmp_path / "empty" / "config.json")
        train(None, tmp_path / "empty", resume=True, data=data)


def test_a_finished_run_can_be_extended(tmp_path):
    data = make_splits()
    train(config(epochs=2), tmp_path / "run", report=False, data=data)
    result = train(config(epochs=3), tmp_path / "run", resume=True, explicit={"train.epochs"},
                   report=False, data=data)
    assert [row["epoch"] for row in result.metrics] == [1, 2, 3]


# --- signals ----------------------------------------------------------------------------------

TRAINER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import write_mnist_like
    from pathlib import Path
    from aelab.data import sources
    data = Path({data!r})
    raw = data / "MNIST" / "raw"
    if not raw.exists():
        write_mnist_like(raw, n_train=800, n_test=100)
    info = sources.DATASETS["mnist"]
    sources.DATASETS["mnist"] = sources.DatasetInfo(info.name, info.folder,
        {{name: sources.md5_of(raw / name) for name in sources.FILES}}, info.class_names)
    sources._sources = lambda name: []
    from aelab.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def start_training(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER.format(tests=str(ROOT / "tests"), data=str(tmp_path / "data")))
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "AELAB_DATA_DIR": str(tmp_path / "data")})


TRAIN_ARGS = ["train", "--epochs", "6", "--batch-size", "32", "--lr", "3e-3", "--noise-factor", "0.2",
              "--shards", "2", "--no-report", "--quiet"]  # signals arrive while the shard threads work


def wait_for_epochs(run_dir: Path, count: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.csv").exists() and len(read_metrics(run_dir)) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("training did not progress")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    process = start_training(tmp, *TRAIN_ARGS, "--out", str(tmp / "run"))
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return tmp / "run"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_resume_finishes_identically(tmp_path, straight_run, signum, code):
    run_dir = tmp_path / "run"
    process = start_training(tmp_path, *TRAIN_ARGS, "--out", str(run_dir))
    wait_for_epochs(run_dir, 2, process)
    time.sleep(0.05)  # somewhere inside an epoch
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert f"Resume with: aelab train --resume {run_dir}" in err and "Traceback" not in err
    how = "with Ctrl-C (SIGINT)" if signum == signal.SIGINT else "by SIGTERM"
    assert re.search(f"aelab: stopped {re.escape(how)} (at|after) epoch", err) and "error" not in err  # (not an error)
    assert len(read_metrics(run_dir)) < 6
    process = start_training(tmp_path, "train", "--resume", str(run_dir), "--quiet", "--no-report")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    a, b = weights(straight_run), weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert same_metrics(read_metrics(straight_run), read_metrics(run_dir))


def test_after_sigkill_resume_starts_from_the_last_complete_checkpoint(tmp_path, straight_run):
    run_dir = tmp_path / "run"
    process = start_training(tmp_path, *TRAIN_ARGS, "--out", str(run_dir))
    wait_for_epochs(run_dir, 3, process)
    process.kill()
    process.communicate(timeout=60)
    pointer = json.loads((run_dir / "state" / "last.json").read_text())["checkpoint"]
    assert (run_dir / "state" / pointer / "weights.safetensors").exists()
    process = start_training(tmp_path, "train", "--resume", str(run_dir), "--quiet", "--no-report")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    a, b = weights(straight_run), weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- untrusted files --------------------------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def write_malicious_pickle(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Payload()}, path) if path.suffix == ".pt" else path.write_bytes(pickle.dumps(Payload()))


def test_a_malicious_pickle_is_never_unpickled(fake_mnist, tmp_path, capsys):
    MARKER.unlink(missing_ok=True)
    run_dir = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run_dir), "--no-report", "--quiet"]) == 0
    evil = tmp_path / "evil.pt"
    write_malicious_pickle(evil)
    # handed in directly as a run
    for command in (["evaluate", str(evil)], ["embed", str(evil), "--out", str(tmp_path / "x.csv")],
                    ["plot", str(evil), "pca"], ["generate", str(evil), "--grid"], ["report", str(evil)],
                    ["train", "--resume", str(evil)]):
        assert main(command) == 2, command
        assert "is a file, not a run folder" in capsys.readouterr().err
    # planted inside a run folder: as the weights, and as the training state
    checkpoint = json.loads((run_dir / "state" / "last.json").read_text())["checkpoint"]
    write_malicious_pickle(run_dir / "state" / checkpoint / "trainer.pt")
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet", "--no-report"]) == 2
    assert "trainer.pt was refused" in capsys.readouterr().err
    write_malicious_pickle(run_dir / "model.safetensors")
    for command in (["evaluate", str(run_dir)], ["embed", str(run_dir), "--out", str(tmp_path / "x.csv")],
                    ["plot", str(run_dir), "pca"], ["generate", str(run_dir), "--grid"], ["report", str(run_dir)]):
        assert main(command) == 2, command
        assert "model.safetensors is not a valid safetensors file" in capsys.readouterr().err
    # as a data file, and as the offline mirror's pickle
    raw = fake_mnist / "MNIST" / "raw"
    write_malicious_pickle(raw / "train-images-idx3-ubyte")
    assert main(["data", "fetch"]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    from aelab.data.sources import load_numpy_pickle

    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(pickle.dumps(Payload(), protocol=2))
    assert not MARKER.exists()


def test_damaged_run_folders_are_named(tmp_path, trained_run):
    from safetensors.torch import load_file, save_file

    def copy() -> Path:
        target = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        shutil.copytree(trained_run, target)
        return target

    broken = copy()
    tensors = load_file(str(broken / "model.safetensors"))
    tensors.pop("decoder.decoder_conv.6.bias")
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(AelabError, match="missing \\['decoder.decoder_conv.6.bias'\\]"):
        load_run(broken)
    broken = copy()
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["encoder.encoder_lin.2.weight"] = torch.zeros(9, 128)
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(AelabError, match="shape \\(9, 128\\)"):
        load_run(broken)
    broken = copy()
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["encoder.encoder_lin.2.weight"][0, 0] = float("nan")
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(AelabError, match="NaN or infinite"):
        load_run(broken)
    broken = copy()
    values = json.loads((broken / "config.json").read_text())
    values["format_version"] = 99
    (broken / "config.json").write_text(json.dumps(values))
    with pytest.raises(AelabError, match="format 99 is not supported.*upgrade aelab"):
        load_run(broken)
    broken = copy()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(AelabError, match="not valid JSON"):
        load_run(broken)
    broken = copy()
    (broken / "config.json").unlink()
    with pytest.raises(AelabError, match="config.json does not exist"):
        load_run(broken)


# --- numerical faults -------------------------------------------------------------------------

def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import aelab.optim

    data = make_splits()  # 256 training images: 8 steps of 32 an epoch
    run_dir = tmp_path / "run"
    real_schedule = aelab.optim.Schedule.__call__
    # from the second epoch on, a rate of 1e30: the weights explode and the loss becomes NaN for real
    monkeypatch.setattr(aelab.optim.Schedule, "__call__", lambda self, step: 1e30 if step >= 8 else real_schedule(self, step))

    class Remember(Callback):
        def on_epoch_end(self, trainer, row):
            self.saved = (run_dir / "model.safetensors").read_bytes(), (run_dir / "state" / "last.json").read_text()

    remember = Remember()

    with pytest.raises(NumericalFault, match=r"at epoch 2, step \d+.*last good checkpoint \(epoch 1\).*lower `train.lr`"):
        train(config(epochs=3), run_dir, report=False, data=data, callbacks=[remember])
    assert (run_dir / "model.safetensors").read_bytes() == remember.saved[0]
    assert (run_dir / "state" / "last.json").read_text() == remember.saved[1]
    assert len(read_metrics(run_dir)) == 1
    load_run(run_dir)  # still loadable


# --- files and folders ------------------------------------------------------------------------

def test_an_unwritable_output_folder_is_a_clear_message(capsys):
    assert main(["train", "--out", "/proc/aelab/run", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the run folder /proc/aelab/run" in err and "--out" in err


def test_a_full_disk_during_a_save_loses_nothing(tmp_path, monkeypatch):
    """Simulated: the second checkpoint's weights are half written when the disk is full (ENOSPC)."""
    import aelab.fsutil

    data = make_splits()
    run_dir = tmp_path / "run"
    train(config(epochs=1), run_dir, report=False, data=data)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    real_write = aelab.fsutil._write_all

    def full_disk(path, payload):
        if path.parent.name.startswith("ckpt-0002"):
            real_write(path, payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, payload)

    monkeypatch.setattr(aelab.fsutil, "_write_all", full_disk)
    with pytest.raises(AelabError, match="disk is full while writing .*previous copy is kept"):
        train(config(epochs=2), run_dir, resume=True, explicit={"train.epochs"}, report=False, data=data)
    monkeypatch.setattr(aelab.fsutil, "_write_all", real_write)
    for name in ("model.safetensors", "state/last.json", "metrics.csv"):
        assert (run_dir / name).read_bytes() == before[Path(name)], name
    assert not [p for p in run_dir.rglob("*.tmp")]
    load_run(run_dir)
    result = train(config(epochs=2), run_dir, resume=True, explicit={"train.epochs"}, report=False, data=data)
    assert len(result.metrics) == 2


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def test_a_real_small_disk_fills_during_training(small_disk):
    data = make_splits()
    run_dir = small_disk / "run"
    with pytest.raises(AelabError, match="disk is full"):
        train(config(epochs=30), run_dir, report=False, data=data)
    done = len(read_metrics(run_dir))
    assert done >= 1
    run = load_run(run_dir)  # what was saved before is complete and loadable
    assert run.config.train.epochs == 30
    pointer = json.loads((run_dir / "state" / "last.json").read_text())["checkpoint"]
    assert (run_dir / "state" / pointer / "trainer.pt").exists()


def test_infinite_weights_stop_training_like_a_nan_loss(tmp_path, monkeypatch):
    """A rate of 1e3 from the second epoch on: the losses stay finite but a BatchNorm running variance
    becomes infinite; training stops there and the last good checkpoint stays the one in use."""
    import aelab.optim

    data = make_splits()  # 8 steps an epoch
    run_dir = tmp_path / "run"
    real_schedule = aelab.optim.Schedule.__call__
    monkeypatch.setattr(aelab.optim.Schedule, "__call__",
                        lambda self, step: 1e3 / 3e-3 if step >= 8 else real_schedule(self, step))
    train(config(epochs=1), run_dir, report=False, data=data)
    saved = (run_dir / "model.safetensors").read_bytes(), (run_dir / "state" / "last.json").read_text()
    with pytest.raises(NumericalFault, match=r"weights became NaN or infinite \(.*running_var\) at epoch 2.*"
                                             r"last good checkpoint \(epoch 1\).*lower `train.lr`"):
        train(config(epochs=3), run_dir, resume=True, explicit={"train.epochs"}, report=False, data=data)
    assert (run_dir / "model.safetensors").read_bytes() == saved[0]
    assert (run_dir / "state" / "last.json").read_text() == saved[1]
    assert len(read_metrics(run_dir)) == 1
    load_run(run_dir)


def test_a_rate_of_1e3_is_named_on_the_command_line(fake_mnist, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--batch-size", "32", "--lr", "1e3", "--out", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite" in err[0] and "lower --lr (now 1000" in err[0]
    assert "--overwrite replaces this run" in err[0] and not (run_dir / "model.safetensors").exists()
    assert main(["train", "--epochs", "1", "--out", str(run_dir), "--overwrite", "--quiet", "--no-report"]) == 0


# --- one process per run folder -----------------------------------------------------------------

def test_a_run_folder_in_use_is_refused_with_the_holders_pid(tmp_path):
    from aelab.run import RunLock

    data = make_splits()
    run_dir = tmp_path / "run"
    train(config(epochs=1), run_dir, report=False, data=data)
    before = (run_dir / "model.safetensors").read_bytes()
    with RunLock(run_dir):  # as another process would hold it (flock is per open file)
        for kwargs in ({"overwrite": True}, {"resume": True, "explicit": {"train.epochs"}}):
            with pytest.raises(AelabError, match=f"in use: process {os.getpid()} is training it"):
                train(config(epochs=2), run_dir, report=False, data=data, **kwargs)
        load_run(run_dir)  # reading is not blocked
    assert (run_dir / "model.safetensors").read_bytes() == before
    train(config(epochs=2), run_dir, resume=True, explicit={"train.epochs"}, report=False, data=data)  # released


def test_two_processes_on_one_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(tmp_path, *TRAIN_ARGS, "--epochs", "1000", "--out", str(run_dir))  # stopped below
    wait_for_epochs(run_dir, 1, first)
    for args in (["--out", str(run_dir), "--overwrite"], ["--resume", str(run_dir)]):
        second = start_training(tmp_path, "train", *args, "--quiet", "--no-report")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert err.strip() == f"aelab: error: {run_dir} is in use: process {first.pid} is training it; wait for it " \
                              "to finish (or stop it), or choose another folder"
    assert first.poll() is None  # still training, its folder untouched
    reader = start_training(tmp_path, "evaluate", str(run_dir), "--json")  # readers are not blocked
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0 and json.loads(out)["n_images"] == 100, err
    first.kill()  # a crash: the OS releases the lock
    first.communicate(timeout=60)
    done = len(read_metrics(run_dir))
    resumed = start_training(tmp_path, "train", "--resume", str(run_dir), "--epochs", str(done + 1), "--quiet",
                             "--no-report")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert len(read_metrics(run_dir)) == done + 1


# --- extending, and what a resumed run keeps ------------------------------------------------------

def test_extending_a_finished_run_continues_its_rate_without_a_jump(tmp_path):
    """The schedule planned for the first epochs is kept; the added epochs get a cycle of their own
    that starts at the rate where the run ended (today's rate: no jump to a quarter of the peak)."""
    data = make_splits()  # 8 steps an epoch
    first = train(config(epochs=3), tmp_path / "run", report=False, data=data)
    extended = train(config(epochs=5), tmp_path / "run", resume=True, explicit={"train.epochs"}, report=False,
                     data=data)
    straight = train(config(epochs=3), tmp_path / "straight", report=False, data=data)
    peak = config().train.lr
    rates = [row["lr"] for row in extended.metrics]  # the rate after each epoch's last step
    assert rates[:3] == [row["lr"] for row in straight.metrics] == [row["lr"] for row in first.metrics]
    assert rates[2] == pytest.approx(peak * 1e-4)  # where the first cycle ended
    from aelab.optim import EXTENSION_PEAK, Schedule

    assert peak * 1e-4 < rates[3] <= peak * EXTENSION_PEAK and rates[4] == pytest.approx(peak * 1e-4)
    # step by step: no step of the extension is above the extension's own peak, and the first ones
    # rise smoothly from the end of the first cycle

    schedule = Schedule.planned("onecycle", 30 * 188).resized(30 * 188, 40 * 188)  # MNIST: 30 -> 40 epochs
    steps = [schedule(step) for step in range(30 * 188 - 100, 40 * 188)]
    assert max(steps[100:]) == pytest.approx(EXTENSION_PEAK) and steps[100] == pytest.approx(1e-4)
    assert max(abs(b - a) for a, b in zip(steps, steps[1:])) < 1e-3  # (the old rule jumped by 0.25)


def test_an_interrupted_run_resumed_with_more_epochs_keeps_the_rates_it_planned(tmp_path):
    data = make_splits()

    class InterruptAfterEpoch1(Callback):
        def on_epoch_end(self, trainer, row):
            if row["epoch"] == 1:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(config(epochs=3), tmp_path / "run", report=False, data=data, callbacks=[InterruptAfterEpoch1()])
    resumed = train(config(epochs=4), tmp_path / "run", resume=True, explicit={"train.epochs"}, report=False,
                    data=data)
    straight = train(config(epochs=3), tmp_path / "straight", report=False, data=data)
    assert same_metrics(resumed.metrics[:3], straight.metrics)  # the first 3 epochs as planned, bit for bit


def test_resume_from_python_refuses_settings_it_would_ignore(tmp_path):
    data = make_splits()
    train(config(epochs=2), tmp_path / "run", report=False, data=data)
    asked = RunConfig(model=replace_model(latent_dim=2), train=train_config_for("fast", epochs=3, batch_size=32,
                                                                                  lr=1e-3))
    with pytest.raises(AelabError, match=r"`model.latent_dim` 4, not 2.*`train.lr` 0.003, not 0.001"):
        train(asked, tmp_path / "run", resume=True, report=False, data=data)
    # epochs (and the settings that only say where and how to read the data) are taken, not ignored
    result = train(config(epochs=3, device="cpu"), tmp_path / "run", resume=True, report=False, data=data)
    assert len(result.metrics) == 3 and result.config.train.device == "cpu"


def replace_model(**values):
    from aelab.config import ModelConfig

    return ModelConfig(**values)


# --- an error on close never hides the error that stopped training --------------------------------

class FailsOnClose(Callback):
    def on_epoch_end(self, trainer, row):
        os.kill(os.getpid(), signal.SIGTERM)

    def on_close(self, trainer):
        raise RuntimeError("the tracker's server went away")


def test_an_error_on_close_does_not_hide_the_interrupt(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="aelab")
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config(), tmp_path / "run", report=False, data=make_splits(), callbacks=[FailsOnClose()])
    assert stopped.value.exit_code == 143
    assert "the tracker's server went away" in caplog.text
    assert (tmp_path / "run" / "state" / "last.json").is_file()


def test_an_error_on_close_after_a_clean_run_is_raised(tmp_path):
    class Fails(Callback):
        def on_close(self, trainer):
            raise RuntimeError("cannot close")

    with pytest.raises(RuntimeError, match="cannot close"):
        train(config(epochs=1), tmp_path / "run", report=False, data=make_splits(), callbacks=[Fails()])
