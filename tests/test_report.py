import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from aelab.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def cli_run(fake_mnist, tmp_path):
    """A run trained through the CLI on fake MNIST, with its report."""
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--batch-size", "64", "--noise-factor", "0.2", "--out", str(out), "--quiet"]) == 0
    return out


def test_train_writes_a_self_contained_report(cli_run):
    page = (cli_run / "report.html").read_text()
    assert "<script src=" not in page and "https://" not in re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    for words in ("test MSE", "Reconstructions across epochs", "The latent space", "Generated images", "Denoising",
                  "Configuration", 'id="map-tsne"'):
        assert words in page
    for name in ("latent_grid.png", "samples.png", "interpolation.png", "denoising.png"):
        assert (cli_run / "figures" / name).exists()


def test_embed_plot_generate_commands(cli_run, tmp_path, capsys):
    assert main(["embed", str(cli_run), "--out", str(tmp_path / "codes.csv")]) == 0
    lines = (tmp_path / "codes.csv").read_text().splitlines()
    assert lines[0] == "index,label,z0,z1,z2,z3" and len(lines) == 101
    assert main(["embed", str(cli_run), "--split", "val", "--out", str(tmp_path / "val.csv")]) == 0
    assert len((tmp_path / "val.csv").read_text().splitlines()) == 61
    for method in ("scatter", "pca", "tsne"):
        out = tmp_path / f"{method}.html"
        args = ["plot", str(cli_run), method, "--out", str(out), "--quiet", "--perplexity", "10"]
        assert main(args + (["--max-points", "50"] if method == "tsne" else [])) == 0
        assert out.stat().st_size > 1_000_000  # plotly's JavaScript is inside
        assert out.with_suffix(".png").exists()
        header, *rows = out.with_suffix(".csv").read_text().splitlines()
        assert header == "index,label,x,y" and len(rows) == (50 if method == "tsne" else 100)
    assert main(["generate", str(cli_run), "--grid", "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["generate", str(cli_run), "--grid", "--dims", "1,2", "--out", str(tmp_path / "g2.png")]) == 0
    assert main(["generate", str(cli_run), "--samples", "5", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["generate", str(cli_run), "--interpolate", "0", "3", "--steps", "5", "--out", str(tmp_path / "i.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (2 * (4 * 30 + 2),) * 2
    assert main(["generate", str(cli_run), "--grid", "--dims", "0,9"]) == 2
    assert "--dims" in capsys.readouterr().err


def test_umap_without_umap_learn_says_how_to_install(cli_run, capsys):
    try:
        import umap  # noqa: F401
        pytest.skip("umap-learn is installed")
    except ImportError:
        pass
    assert main(["plot", str(cli_run), "umap", "--quiet"]) == 2
    assert "aelab[umap]" in capsys.readouterr().err


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="aelab-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def need_chromium() -> None:
    if CHROMIUM is None:
        if os.environ.get("AELAB_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (AELAB_REQUIRE_BROWSER) but not installed: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")


@pytest.mark.browser
def test_plot_page_renders_in_headless_chromium(cli_run, tmp_path):
    need_chromium()
    out = tmp_path / "scatter.html"
    assert main(["plot", str(cli_run), "scatter", "--out", str(out), "--quiet"]) == 0
    dom = chromium("--virtual-time-budget=30000", "--dump-dom", out.resolve().as_uri()).stdout
    assert 'data-rendered="ok"' in re.search(r"<body[^>]*>", dom).group(0)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(cli_run):
    need_chromium()
    url = (cli_run / "report.html").resolve().as_uri()
    dom = chromium("--virtual-time-budget=30000", "--dump-dom", url).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-rendered="ok"' in body, body
    assert 'data-errors="[]"' in body, body
    assert 'data-maps="2"' in body and 'data-broken-images="0"' in body
    shot = Path(os.environ.get("AELAB_SCREENSHOT_DIR", cli_run)) / "report-screenshot.png"
    result = chromium("--virtual-time-budget=30000", "--window-size=1280,3600", f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 50_000, result.stderr[-500:]
    pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(shot).convert("L"))
    assert pixels.std() > 20  # not a blank page


def test_a_missing_plotting_library_is_a_clear_message_and_the_run_is_kept(trained_run, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "plotly", None)  # as if plotly were not installed
    before = (trained_run / "model.safetensors").read_bytes()
    assert main(["report", str(trained_run)]) == 2
    err = capsys.readouterr().err
    assert "needs plotly" in err and "pip install plotly" in err and f"aelab report {trained_run}" in err
    assert "Traceback" not in err and (trained_run / "model.safetensors").read_bytes() == before


def test_pictures_of_big_images_are_kept_within_the_page_budget(tmp_path):
    """The report of any image size stays light: each picture shrinks (or becomes JPEG) beyond its
    budget, the epochs' slider keeps fewer epochs, and colour or big images get fewer map points."""
    import numpy as np

    from aelab import plots, report

    noise = np.random.default_rng(0).integers(0, 256, (900, 1400, 3), dtype=np.uint8)
    uri = plots.picture_uri(noise, 250_000)
    assert len(uri) < 250_000 * 4 / 3 + 100 and uri.startswith("data:image/")
    small = np.zeros((20, 30), np.uint8)
    assert plots.picture_uri(small, 250_000).startswith("data:image/png")  # small pictures stay PNG as they are
    paths = []
    for epoch in range(1, 31):
        path = tmp_path / f"epoch-{epoch:03d}.png"
        from PIL import Image

        Image.fromarray(np.roll(noise[:400, :900], epoch, axis=1)).save(path)
        paths.append(path)
    uris, epochs = report.slider_pictures(paths)
    assert sum(map(len, uris)) <= report.SLIDER_BYTES * 4 / 3 + 1000
    assert epochs[0] == 1 and epochs[-1] == 30 and len(epochs) < 30
    assert report.map_points((1, 28, 28)) == report.MAP_POINTS
    assert report.map_points((3, 64, 64)) < report.map_points((1, 64, 64)) < report.MAP_POINTS
