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
    header, *rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    seconds = header.index("seconds")
    return [[f"{float(value):.5f}" for column, value in enumerate(row) if column != seconds] for row in rows]


def same_weights(a: Path, b: Path) -> float:
    first, second = read_weights(a / "model.safetensors"), read_weights(b / "model.safetensors")
    assert first.keys() == second.keys()
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in first)


@pytest.mark.parametrize("family", [[], ["--model", "vae", "--loss", "bce", "--binarize", "dynamic", "--kl-warmup", "1"],
                                    ["--model", "cvae", "--loss", "bce"]], ids=["ae", "vae", "cvae"])
def test_two_processes_train_the_run_of_two_shards(shapes, tmp_path, family):
    """The golden rule, for the autoencoder, a VAE (whose codes, and dynamically binarised pixels, are
    drawn for the whole batch: each rank takes its rows of them) and a conditional VAE (each rank
    its rows' labels)."""
    common = ["--data", str(shapes), "--epochs", "2", "--batch-size", "32", *family]
    done = torchrun(*common, "--out", str(tmp_path / "ddp"))
    out, err = done.communicate(timeout=300)
    if "(exitcode: -6)" in err:  # (a rank aborted inside the process group, not in aelab: seen once in ~10 CI runs
        done = torchrun(*common, "--out", str(tmp_path / "ddp"), "--overwrite")  # on 2 cores; a real error repeats)
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
    common = ["--data", str(shapes), "--epochs", "2", "--batch-size", "32", "--out", str(tmp_path / "nodes")]
    for node in two_nodes(*common, cwds=(tmp_path, tmp_path)):
        out, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    assert main(["train", *common[:-1], str(tmp_path / "threads"), "--shards", "2", "--quiet", "--no-report"]) == 0
    assert same_weights(tmp_path / "nodes", tmp_path / "threads") < 1e-5
    assert metrics(tmp_path / "nodes") == metrics(tmp_path / "threads")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(*args: str, cwds: tuple[Path, Path]) -> list[subprocess.Popen]:
    """Two torchrun "nodes" of one process each on this machine, each in a folder of its own."""
    port = free_port()
    return [torchrun(*args, processes=1, cwd=cwds[rank],
                     launcher=("--nnodes=2", f"--node-rank={rank}", "--rdzv-backend=c10d",
                               f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=aelab-{port}")) for rank in (0, 1)]


def test_a_node_that_cannot_see_the_run_folder_resumes_with_the_others(shapes, tmp_path):
    """No shared file system: the run folder (relative, runs/nodes) exists on node 0 only. Rank 0 decides
    to resume and sends node 1 the configuration and the checkpoint; the run is --shards 2's."""
    first, second = tmp_path / "node0", tmp_path / "node1"
    first.mkdir(), second.mkdir()
    common = ["--data", str(shapes), "--batch-size", "32"]
    for args in ((*common, "--epochs", "1", "--out", "runs/nodes"), ("--resume", "runs/nodes", "--epochs", "2")):
        for node in two_nodes(*args, cwds=(first, second)):
            out, err = node.communicate(timeout=300)
            assert node.returncode == 0, err[-3000:]
    assert not (second / "runs").exists()  # node 1 never wrote (or needed) a run folder
    straight = tmp_path / "threads"
    assert main(["train", *common, "--epochs", "1", "--shards", "2", "--out", str(straight), "--quiet",
                 "--no-report"]) == 0
    assert main(["train", "--resume", str(straight), "--epochs", "2", "--quiet", "--no-report"]) == 0
    assert same_weights(first / "runs" / "nodes", straight) < 1e-5
    assert metrics(first / "runs" / "nodes") == metrics(straight)


def test_a_rank_that_cannot_read_the_data_stops_every_rank_with_one_line(shapes, tmp_path):
    """The data (relative, shapes.npz) are on node 0 only: rank 1 cannot read them; both ranks stop
    (none waits for ever in a collective), and rank 0 says rank 1's error in one line."""
    import shutil

    first, second = tmp_path / "node0", tmp_path / "node1"
    first.mkdir(), second.mkdir()
    shutil.copy(shapes, first / "shapes.npz")
    nodes = two_nodes("--data", "shapes.npz", "--epochs", "1", "--batch-size", "32", "--out", "run",
                      cwds=(first, second))
    said = []
    for node in nodes:
        out, err = node.communicate(timeout=300)
        assert node.returncode != 0
        said.append(err)
    lines = [line for err in said for line in err.splitlines() if line.startswith("aelab: error")]  # (rank 0's)
    assert len(lines) == 1 and lines[0].startswith("aelab: error: rank 1 under torchrun: ") and "shapes.npz" in lines[0], said
    assert not (first / "run" / "config.json").exists()  # nothing was trained or written
    # each node has a shapes.npz, of other images: refused before any model is built
    images, labels = synthetic_images(400, seed=2)
    np.savez(second / "shapes.npz", images=images, labels=labels)
    said = []
    for node in two_nodes("--data", "shapes.npz", "--epochs", "1", "--batch-size", "32", "--out", "run",
                          cwds=(first, second)):
        out, err = node.communicate(timeout=300)
        assert node.returncode != 0
        said.append(err)
    lines = [line for err in said for line in err.splitlines() if line.startswith("aelab: error")]  # (rank 0's)
    assert len(lines) == 1 and "read different training images (rank 1's differ from rank 0's" in lines[0], said


def test_one_process_under_torchrun_joins_the_process_group(shapes, tmp_path):
    """torchrun --nproc-per-node 1 trains in a process group of one (on a GPU: the NCCL path), and
    computes what a plain run without shards computes."""
    common = ["--data", str(shapes), "--epochs", "2", "--batch-size", "32"]
    done = torchrun(*common, "--out", str(tmp_path / "one"), processes=1, quiet=False)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-2000:]
    assert "(under torchrun: 1 process, gloo)" in out
    plain = subprocess.run([sys.executable, "-m", "aelab", "train", *common, "--shards", "1", "--out",
                            str(tmp_path / "plain"), "--quiet", "--no-report"], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)  # (one thread, as the rank)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert same_weights(tmp_path / "one", tmp_path / "plain") < 1e-6
    assert metrics(tmp_path / "one") == metrics(tmp_path / "plain")


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


def test_collectives_reduce_on_the_ranks_device(monkeypatch):
    """In a process group of one (as torchrun --nproc-per-node 1 makes): every collective reduces a
    tensor on the rank's device (a CPU tensor in an NCCL group cannot be reduced); on GPUs the group
    has a backend for each kind of tensor."""
    from aelab import distributed

    for name, value in (("TORCHELASTIC_RUN_ID", "test"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port())),
                        ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert distributed.active() and distributed.world() == (0, 1, 0)
    assert distributed.backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert distributed.backend(torch.device("cpu")) == "gloo"
    device = distributed.setup(torch.device("cpu"))
    try:
        assert distributed.device() == device and distributed.backend_name() == "gloo"
        assert distributed.any_rank(True) is True and distributed.any_rank(False) is False
        assert distributed.mean_across(np.array([1.0, 2.0, 6.0])) == 3.0
        assert distributed.from_rank_0({"plan": 1}) == {"plan": 1} and distributed.gathered("a") == ["a"]
        with pytest.raises(ValueError, match="meta tensor in a group on cpu"):
            distributed.all_reduce(torch.zeros(1, device="meta"))
    finally:
        distributed.teardown()
    assert distributed.backend_name() == ""
