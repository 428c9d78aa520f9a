"""Memory known before it is spent: big pictures get a default size a laptop trains, every run says
its estimated peak before training, the estimate holds, and a run that would not fit is refused in
one line that names what to change, before anything is written."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from aelab.config import LARGEST_DEFAULT_SIDE, default_image_size

# runs the command line in a child process and prints the child's own peak memory, last (its resident set's
# high-water mark; getrusage's ru_maxrss would also keep the peak of this test process, which the child is forked from)
PEAK = textwrap.dedent("""
    import sys
    from aelab.cli import main
    from aelab.memory import peak_so_far
    code = main(sys.argv[1:])
    print(f"peak-bytes {peak_so_far()}", file=sys.stderr)
    sys.exit(code)
""")


def aelab(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PEAK, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wallpapers(tmp_path_factory):
    """Six 4096x4096 pictures (JPEG, as photographs come), as Debian's wallpapers are (benchmarks/new_user.py's)."""
    from new_user import wallpapers as make

    return make(tmp_path_factory.mktemp("big") / "photos")


def said_peak(err: str) -> float:
    found = re.search(r"memory: about ([\d.]+) (GB|MB) at the peak", err)
    assert found, err
    return float(found.group(1)) * 2 ** (30 if found.group(2) == "GB" else 20)


def measured_peak(err: str) -> int:
    return int(re.search(r"peak-bytes (\d+)", err).group(1))


def test_the_default_size_of_big_pictures_keeps_their_shape_within_the_cap():
    assert default_image_size((28, 28)) == (28, 28) and default_image_size((128, 96)) == (128, 96)
    assert default_image_size((4096, 4096)) == (LARGEST_DEFAULT_SIDE, LARGEST_DEFAULT_SIDE)
    assert default_image_size((3000, 4000)) == (96, 128) and default_image_size((100, 5000)) == (16, 128)


@pytest.mark.parametrize("size", [None, "256"])
def test_a_folder_of_4096_pictures_trains_within_its_estimate(wallpapers, tmp_path, size):
    """Without --image-size the pictures are made 128x128 (said, with how to change it); with it, at
    that size. Either way the run says its peak before training and never passes it (the child's own
    peak resident memory, decoding, training and the report included)."""
    args = ["train", "--data", str(wallpapers), "--data-dir", str(tmp_path / "cache"), "--epochs", "1",
            "--out", str(tmp_path / "run")] + (["--image-size", size] if size else [])
    done = aelab(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    if size is None:
        assert "they are made 128x128 (set --image-size" in done.stderr
    said, measured = said_peak(done.stderr), measured_peak(done.stderr)
    assert measured <= said < 2 * measured, done.stderr[-3000:]  # never passed, and not wildly above
    assert (tmp_path / "run" / "report.html").is_file()


def test_a_run_that_would_not_fit_is_refused_before_anything_is_written(wallpapers, tmp_path):
    """The pictures asked for at 8192x8192: a training batch alone passes what the machine has, and
    the run is refused in one line that names an image size that fits, from the pictures' headers:
    before any is decoded, and before anything is written."""
    from aelab.memory import available

    if available() > 80 * 2**30:  # (the run needs about 92 GB: a machine that has it would train it)
        pytest.skip("this machine has the memory to train 8192x8192 pictures")
    args = ["train", "--data", str(wallpapers), "--data-dir", str(tmp_path / "cache"), "--epochs", "1",
            "--out", str(tmp_path / "run"), "--image-size", "8192"]
    done = aelab(*args, cwd=tmp_path)
    assert done.returncode == 2
    error = [line for line in done.stderr.splitlines() if line.startswith("aelab: error:")]
    assert len(error) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "would need about" in error[0] and "is available on this machine" in error[0]
    assert re.search(r"choose .*--image-size \d+ \(about [\d.]+ GB\)", error[0]), error[0]
    assert measured_peak(done.stderr) < 2 * 2**30  # refused before anything was decoded (or trained)
    assert not list((tmp_path / "cache").rglob("images-*.npy")), "the pictures were decoded before the refusal"
    assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "state").exists()
