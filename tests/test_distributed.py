"""Training under torchrun (2 processes, gloo, on the CPU): the run that --shards 2 computes, rank 0
writes, a signal stops every rank at one step, resume under torchrun, another world size refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab.cli import main
from aelab.run import read_weights

from conftest import synthetic_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    images, labels = synthetic_images(400, seed=1)
    np.savez(folder / "shapes.npz", images=images, labels=labels)
    return folder / "shapes.npz"


def torchrun(*args: str, processes: int = 2, launcher: tuple[str, ...] = ("--standalone",), env=None,
             quiet: bool = True, **options) -> subprocess.Popen:
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc-per-node={processes}",
               "-m", "aelab", "train", *args, *(["--quiet"] if quiet else []), "--no-report"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def metrics(run: Path) -> list[list[str]]:
    """metrics.csv without its seconds column, numbers to 5 decimals."""
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    return [[f"{float(value):.5f}" for value in row[:-1]] for row in rows]


def same_weights(a: Path, b: Path) -> float:
    first, second = read_weights(a / "model.safetensors"), read_weights(b / "model.safetensors")
    assert first.keys() == second.keys()
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in first)


def test_two_processes_train_the_run_of_two_shards(shapes, tmp_path):
    common = ["--data", str(shapes), "--epochs", "2", "--batch-size", "32"]
    done = torchrun(*common, "--out", str(tmp_path / "ddp"))
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-2000:]
    assert main(["train", *common, "--shards", "2", "--out", str(tmp_path / "threads"), "--quiet", "--no-report"]) == 0
    assert same_weights(tmp_path / "ddp", tmp_path / "threads") < 1e-5
    assert metrics(tmp_path / "ddp") == metrics(tmp_path / "threads")
    config = (tmp_path / "ddp" / "config.json").read_text()
    assert '"shards": 2' in config  # the run records what it computes: two shards
    assert "aelab: error" not in err and "Traceback" not in err


def test_ranks_read_their_slices_of_a_large_folder_from_disk(tmp_path):
    """A folder larger than each process's share of --memory-limit: each rank reads only its slice of
    every batch from the cache on disk and evaluates its share of val and test; the run, denoising
    included, is the one --shards 2 trains from memory."""
    from test_folders import write_folder

    root = tmp_path / "images"
    write_folder(root, n=60)  # 120 images of 20x20: 48 KB decoded
    common = ["--data", str(root), "--data-dir", str(tmp_path / "cache"), "--epochs", "2", "--batch-size", "16",
              "--noise-factor", "0.3", "--no-report"]
    done = torchrun(*common, "--memory-limit", "64KB", "--out", str(tmp_path / "ddp"), quiet=False)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-2000:]
    assert "read from the cache on disk" in err and "for each of the 2 processes on this machine" in err
    assert main(["train", *common, "--shards", "2", "--out", str(tmp_path / "threads"), "--quiet"]) == 0
    assert same_weights(tmp_path / "ddp", tmp_path / "threads") < 1e-5
    assert metrics(tmp_path / "ddp") == metrics(tmp_path / "threads")
    ends = [json.loads((tmp_path / run / "evaluation.json").read_text()) for run in ("ddp", "threads")]
    for key in ("test_mse", "val_mse", "test_denoising_mse"):
        assert ends[0][key] == pytest.approx(ends[1][key], rel=1e-5)


def test_a_signal_stops_every_rank_at_one_step_and_the_run_resumes(shapes, tmp_path):
    common = ["--data", str(shapes), "--epochs", "40", "--batch-size", "32"]
    run = tmp_path / "ddp"
    started = torchrun(*common, "--out", str(run), start_new_session=True)
    deadline = time.time() + 120
    while not (run / "state" / "last.json").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(started.pid, signal.SIGTERM)  # as a scheduler stops a job: every process of the group
    out, err = started.communicate(timeout=120)
    assert started.returncode != 0
    assert err.count("stopped by SIGTERM") == 1 and "Resume with: torchrun" in err  # said once, by rank 0
    assert "hang" not in err
    resumed = torchrun("--resume", str(run))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert main(["train", *common, "--shards", "2", "--out", str(tmp_path / "straight"), "--quiet", "--no-report"]) == 0
    assert same_weights(run, tmp_path / "straight") < 1e-5
    assert metrics(run) == metrics(tmp_path / "straight")


def test_resuming_with_another_number_of_processes_is_refused(shapes, tmp_path, capsys):
    run = tmp_path / "three"
    assert main(["train", "--data", str(shapes), "--epochs", "1", "--batch-size", "32", "--shards", "3",
                 "--out", str(run), "--quiet", "--no-report"]) == 0
    done = torchrun("--resume", str(run), "--epochs", "2")
    out, err = done.communicate(timeout=300)
    assert done.returncode != 0 and "shards" in err and "2 processes" in err


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_a_killed_rank_comes_back_under_max_restarts_and_ends_as_a_straight_run(shapes, tmp_path):
    common = ["--data", str(shapes), "--epochs", "40", "--batch-size", "32"]
    run = tmp_path / "elastic"
    started = torchrun(*common, "--out", str(run), "--overwrite",
                       launcher=("--standalone", "--max-restarts=2", "--monitor-interval=0.2"))
    deadline = time.time() + 120
    while not (run / "state" / "last.json").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.7)  # in the middle of an epoch
    workers = children(started.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    out, err = started.communicate(timeout=300)
    assert started.returncode == 0, err[-3000:]
    assert main(["train", *common, "--shards", "2", "--out", str(tmp_path / "straight"), "--quiet", "--no-report"]) == 0
    assert same_weights(run, tmp_path / "straight") < 1e-5
    assert metrics(run) == metrics(tmp_path / "straight")


def test_two_nodes_on_one_machine_train_one_run(shapes, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = ["--data", str(shapes), "--epochs", "2", "--batch-size", "32", "--out", str(tmp_path / "nodes")]
    nodes = [torchrun(*common, processes=1, launcher=("--nnodes=2", f"--node-rank={rank}", "--rdzv-backend=c10d",
                                                       f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=aelab-test"))
             for rank in (0, 1)]
    for node in nodes:
        out, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    assert main(["train", *common[:-1], str(tmp_path / "threads"), "--shards", "2", "--quiet", "--no-report"]) == 0
    assert same_weights(tmp_path / "nodes", tmp_path / "threads") < 1e-5
    assert metrics(tmp_path / "nodes") == metrics(tmp_path / "threads")


def test_a_nan_on_one_rank_only_stops_every_rank_at_one_step(shapes, tmp_path):
    """Rank 1 alone sees a NaN input at its 12th batch (patched in its process only, by a
    sitecustomize on its path): both ranks stop at the same check, with the last good checkpoint kept."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import aelab.data.batches as batches\n"
        "    real, calls = batches.Batches.gather, [0]\n"
        "    def gather(self, index):\n"
        "        out = real(self, index)\n"
        "        calls[0] += 1\n"
        "        return out * float('nan') if calls[0] == 12 else out\n"
        "    batches.Batches.gather = gather\n")
    run = tmp_path / "nan"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'hook'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = torchrun("--data", str(shapes), "--epochs", "5", "--batch-size", "32", "--out", str(run), env=env)
    out, err = started.communicate(timeout=300)
    assert started.returncode != 0
    assert err.count("the loss became nan at epoch 2, step 3") == 1, err[-3000:]  # said once, by rank 0
    assert (run / "state" / "last.json").read_text().strip().endswith('"ckpt-0001-00000"}')
