import json
import os
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import chromium, need_chromium, synthetic_images

from aelab.cli import main



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
                  "Configuration", 'id="map-tsne"', "test MSE of PCA-4 (the baseline)"):
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
        args = ["plot", str(cli_run), method, "--out", str(out), "--quiet"]
        assert main(args + (["--max-points", "50", "--perplexity", "10"] if method == "tsne" else [])) == 0
        assert out.stat().st_size > 1_000_000  # plotly's JavaScript is inside
        assert out.with_suffix(".png").exists()
        header, *rows = out.with_suffix(".csv").read_text().splitlines()
        assert header == "index,label,x,y" and len(rows) == (50 if method == "tsne" else 100)
    assert main(["generate", str(cli_run), "--grid", "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["generate", str(cli_run), "--grid", "--dims", "1,2", "--out", str(tmp_path / "g2.png")]) == 0
    assert main(["generate", str(cli_run), "--samples", "5", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["generate", str(cli_run), "--interpolate", "0", "3", "--steps", "5", "--out", str(tmp_path / "i.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size[0] > 400  # the grid with its axes, values and title
    assert main(["generate", str(cli_run), "--grid", "--range", "-2", "2", "--quiet"]) == 0
    assert (cli_run / "outputs" / "grid.png").is_file()
    assert main(["generate", str(cli_run), "--samples", "4", "--range", "-2", "2"]) == 2
    assert "--range applies to --grid only" in capsys.readouterr().err
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
    dom = chromium("--virtual-time-budget=30000", "--window-size=1280,3600", "--dump-dom", url).stdout  # maps side by side
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-rendered="ok"' in body, body
    assert 'data-errors="[]"' in body, body
    assert 'data-maps="2"' in body and 'data-broken-images="0"' in body
    assert 'data-titles="2"' in body and 'data-covered-titles="0"' in body, body  # plotly's toolbar clears the titles
    legible(body)
    assert dom.count('class="tick x"') == 5 and dom.count('class="tick y"') == 5  # the pad's axes
    assert '<span class="axis x">PC1</span>' in dom and dom.count('class="entry"') == 4  # a legend of its 4 labels
    page = _Page(dom)
    given, chosen = page.tables[0], page.tables[1]  # what the user typed, what aelab chose
    assert {"train.epochs", "train.batch_size", "train.noise_factor"} == set(given) and "train.lr" in chosen
    assert re.search(r'<p class="verdict (win|lose)">(The autoencoder beats|PCA-4 beats)', dom)
    shot = Path(os.environ.get("AELAB_SCREENSHOT_DIR", cli_run)) / "report-screenshot.png"
    result = chromium("--virtual-time-budget=30000", "--window-size=1280,3600", f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 50_000, result.stderr[-500:]
    pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(shot).convert("L"))
    assert pixels.std() > 20  # not a blank page


def legible(body: str) -> None:
    """No text of the page below 11 pixels, and the text in its figures at least 10 pixels as shown."""
    assert 'data-small-text="0"' in body, body
    shown = json.loads(re.search(r'data-figure-text="([^"]*)"', body).group(1).replace("&quot;", '"'))
    assert len(shown) >= 3 and min(shown) >= 10, shown  # loss curves, grid, reconstructions ...


@pytest.mark.browser
def test_a_variational_report_labels_its_traversals_legibly(fake_mnist, tmp_path):
    """A VAE's traversals name each row's latent variable and each column's step (-3 to +3), its
    text legible on the page, and the active units are said as they are."""
    need_chromium()
    out = tmp_path / "vae"
    assert main(["train", "--model", "vae", "--epochs", "2", "--batch-size", "64", "--out", str(out), "--quiet"]) == 0
    from aelab.plots import figure_text_px

    traversal = out / "figures" / "traversal.png"
    assert figure_text_px(traversal) >= 14
    dom = chromium("--virtual-time-budget=30000", "--window-size=1280,3600", "--dump-dom",
                   (out / "report.html").resolve().as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-rendered="ok"' in body, body
    legible(body)
    assert "each row one latent variable (z0, z1, ...)" in dom
    active = re.search(r"(All 4 latent dimensions are active|(\d) of 4 latent dimensions are active \(their "
                        r"posterior mean varies over the images\); the other (\d) carry no information)", dom)
    assert active and (active.group(2) is None or int(active.group(2)) + int(active.group(3)) == 4), active


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

    from aelab import figures, plots, report

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
    assert figures.map_points((1, 28, 28)) == figures.MAP_POINTS
    assert figures.map_points((3, 64, 64)) < figures.map_points((1, 64, 64)) < figures.MAP_POINTS


# Values from the user or the data that reach the page: class names (the maps' legends and hover
# labels), the run folder, the data path, and the run's JSON files (evaluation.json, anomaly.json).
HOSTILE_CLASSES = ("<!--<script>", "</script><script>document.body.dataset.injected = 'script'</script>",
                   "\"'&amp;\u2028x", "<b>bold</b><img src=x onerror=\"document.body.dataset.injected = 'img'\">")
HOSTILE_RUN = "<b>x</b>&<!--"  # (the folder "b>&<!--" inside a folder "<b>x<")
HOSTILE_DATA = "<i>data</i>&<!--<script>.npz"
HOSTILE_EPOCH = "<b>1</b><!--"
HOSTILE_METHOD = "</script><b>mse</b>"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A run whose class names, folder, data path, best epoch and anomaly score method are hostile
    HTML, with its report."""
    from aelab import RunConfig, report, train
    from aelab.config import DataConfig, train_config_for
    from aelab.data.sets import ImageSet

    def images(n: int, seed: int) -> ImageSet:
        return ImageSet.from_arrays(*synthetic_images(n, seed), HOSTILE_CLASSES)

    splits = {"train": images(192, 0), "val": images(64, 1), "test": images(64, 2)}
    out = tmp_path_factory.mktemp("hostile") / HOSTILE_RUN
    config = RunConfig(data=DataConfig(dataset=HOSTILE_DATA, classes=HOSTILE_CLASSES[0]),
                       train=train_config_for("fast", epochs=1, batch_size=64))
    train(config, out, report=False, data=splits)
    evaluation = json.loads((out / "evaluation.json").read_text())
    (out / "evaluation.json").write_text(json.dumps({**evaluation, "best_epoch": HOSTILE_EPOCH}))
    section = report.anomaly_section
    with pytest.MonkeyPatch.context() as patch:  # as if RUN/anomaly.json named this method
        patch.setattr(report, "anomaly_section", lambda *args: {**section(*args), "method": HOSTILE_METHOD})
        report.write_report(out, splits=splits)
    return out


def test_script_json_escapes_what_could_end_or_change_a_script():
    from aelab.plots import plotly_text, script_json

    value = {"name": "</script><!--<script>&\u2028\u2029>", "n": [1, 2.5, None]}
    text = script_json(value)
    assert not set("<>&\u2028\u2029") & set(text) and json.loads(text) == value
    assert plotly_text("<b>x</b> &amp; \"'") == "&lt;b&gt;x&lt;/b&gt; &amp;amp; \"'"  # plotly decodes these only


def test_hostile_names_and_paths_are_escaped_in_the_report(hostile_run):
    page = (hostile_run / "report.html").read_text(encoding="utf-8")
    for hostile in (*HOSTILE_CLASSES, HOSTILE_RUN, "b>&<!--", HOSTILE_DATA, HOSTILE_EPOCH, HOSTILE_METHOD):
        assert hostile not in page
    # (the scripts: errors, plotly.js's loader, the explorer's data and code, the page's own)
    assert "<!--" not in page and "\u2028" not in page and page.count("<script") == 5
    assert HOSTILE_CLASSES[0] in json.loads(re.search(r"const AELAB_EXPLORER = (.*?);</script>", page).group(1))["class_names"]


class _Page(HTMLParser):
    """What a dumped DOM holds: the elements by tag, the images' sources, the plotly legends' texts
    and the page's text outside scripts and styles."""

    def __init__(self, dom: str):
        super().__init__()
        self.tags, self.sources, self.legends, self.texts = Counter(), [], [], []
        self.tables: list[dict[str, str]] = []  # the key-value tables (the configuration's), {setting: value}
        self._in, self._legend, self._cell = [], None, None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] += 1
        self.sources += [attrs.get("src") or ""] if tag == "img" else []
        if tag == "text" and "legendtext" in (attrs.get("class") or "").split():
            self._legend = ""
        if tag == "table" and "kv" in (attrs.get("class") or "").split():
            self.tables.append({})
        if tag in ("th", "td") and "table" in self._in and self.tables:
            self._cell = [tag, ""]
        self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            kind, text = self._cell
            if kind == "th":
                self._key = text
            else:
                self.tables[-1][self._key] = text
            self._cell = None
        if tag == "text" and self._legend is not None:
            self.legends.append(self._legend)
            self._legend = None
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag):]

    def handle_data(self, data):
        if self._legend is not None:
            self._legend += data
        if self._cell is not None:
            self._cell[1] += data
        if not {"script", "style"} & set(self._in):
            self.texts.append(data)


@pytest.mark.browser
def test_hostile_names_and_paths_are_text_in_the_rendered_report(hostile_run):
    """The page renders completely, nothing hostile became an element or ran, and the names show
    as written (in the header, the tables and the maps' legends)."""
    need_chromium()
    dom = chromium("--virtual-time-budget=30000", "--dump-dom", (hostile_run / "report.html").resolve().as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-rendered="ok"' in body and 'data-errors="[]"' in body, body
    assert 'data-maps="2"' in body and 'data-broken-images="0"' in body and "injected" not in body, body
    page = _Page(dom)
    # the page's 5 scripts and plotly.js, which the page unpacks into a script of its own
    assert page.tags["script"] == 6 and page.tags["b"] == page.tags["i"] == 0, page.tags
    assert page.sources and all(source.startswith("data:image/") for source in page.sources)
    assert page.legends == [*HOSTILE_CLASSES] * 2  # the scatter's and the t-SNE's
    text = "".join(page.texts)
    for hostile in ("aelab run b>&<!--", HOSTILE_RUN, HOSTILE_DATA, f"epoch {HOSTILE_EPOCH} had",
                    f"highest {HOSTILE_METHOD} scores", f"Trained on class {HOSTILE_CLASSES[0]} only"):
        assert hostile in text, hostile


def test_a_class_name_with_a_dollar_sign_draws_as_written(tmp_path):
    """matplotlib reads $...$ as mathtext: a stray $ in a class name failed the PNG of a map."""
    from aelab.plots import map_png

    labels = np.arange(20) % 2
    path = map_png(np.random.default_rng(0).normal(size=(20, 2)), labels, ("cost $5", "$x"), ("PC1", "PC2"),
                   "a $ in the title", tmp_path / "map.png")
    assert path.stat().st_size > 1000


def test_every_command_writes_into_outputs_and_never_over_the_runs_files(cli_run, tmp_path, capsys):
    """One rule for every command: --out when given, else RUN/outputs/; the files that training and
    the report wrote are never written over, and an --out among them is refused."""
    import hashlib

    def owned() -> dict[str, str]:
        return {str(path.relative_to(cli_run)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(cli_run.rglob("*")) if path.is_file() and "outputs" not in path.parts
                and path.name != ".lock"}

    before = owned()
    assert {"figures/samples.png", "report.html", "anomaly.json"} <= set(before)
    Image = __import__("PIL.Image", fromlist=["Image"])
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(synthetic_images(1, seed=1)[0][0]).save(inputs / "one.png")
    commands = [["embed"], ["plot", "scatter"], ["generate", "--grid", "--n", "3"], ["generate", "--samples", "4"],
                ["generate", "--interpolate", "0", "1", "--steps", "3"], ["score"], ["score", "--method", "mse"],
                ["export", "--format", "torchscript"],
                ["reconstruct", str(inputs)], ["denoise", str(inputs)], ["encode", str(inputs)]]
    for command in commands:
        assert main([command[0], str(cli_run), *command[1:], "--quiet"]) == 0, command
    made = {str(path.relative_to(cli_run / "outputs")) for path in (cli_run / "outputs").rglob("*") if path.is_file()}
    assert made >= {"codes-test.csv", "scatter-test.html", "scatter-test.png", "scatter-test.csv", "grid.png",
                    "samples.png", "interpolation-0-1.png", "scores-test.csv", "scores-test.png", "autoencoder.pt",
                    "reconstruct/one.png", "denoise/one.png", "encoded.csv", "anomaly-mse-0.1.json"}, made
    assert owned() == before
    capsys.readouterr()
    assert main(["generate", str(cli_run), "--samples", "4", "--out", str(cli_run / "figures" / "samples.png")]) == 2
    assert "one of the run's own files" in capsys.readouterr().err and owned() == before


def test_a_denoising_run_says_which_input_each_number_measures_and_the_report_splits_its_settings(cli_run, capsys):
    assert main(["evaluate", str(cli_run), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "clean inputs" in lines[0] and "noisy inputs (noise factor 0.2" in lines[1]
    assert "PCA with 4 components" in lines[2] and "on clean inputs" in lines[2]  # the baseline, for the clean inputs
    assert re.search(r"(the autoencoder beats PCA-4: its error is \d+% lower|PCA-4 beats the autoencoder: .* to do "
                     r"better, train longer \(--epochs\))", lines[2])  # the verdict, by how much, what to try
    assert main(["evaluate", str(cli_run), "--json", "--quiet"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["input"] == "clean" and found["denoising"]["input"] == "noisy" and found["denoising"]["noise_factor"] == 0.2
    assert main(["evaluate", str(cli_run), "--noise-factor", "0", "--json", "--quiet"]) == 0
    assert "denoising" not in json.loads(capsys.readouterr().out)
    page = (cli_run / "report.html").read_text()
    chosen, details = page.index("What you chose"), page.index("<h3>Details</h3>")
    assert chosen < page.index("train.noise_factor") < details < page.index("data.fingerprint")
    assert "model.kl_warmup" not in page and "model.samples" not in page  # (the other families' settings)
