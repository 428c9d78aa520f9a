"""Figures as PNG files. Matplotlib is imported inside the functions that need it."""

from __future__ import annotations

import base64
import functools
import gzip
import html
import io
import json
from pathlib import Path

import numpy as np
import torch

from .fsutil import atomic_save


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """Float images [N, C, H, W] in [0, 1] -> uint8 [N, H, W, C]."""
    array = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return array.transpose(0, 2, 3, 1)


def tile(images: torch.Tensor, rows: int, cols: int, pad: int = 2, value: int = 255) -> np.ndarray:
    """Tile images [rows*cols, C, H, W] into one uint8 picture [H', W'] or [H', W', 3]."""
    pixels = to_pixels(images)
    n, height, width, channels = pixels.shape
    canvas = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, channels), value, np.uint8)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        y, x = pad + r * (height + pad), pad + c * (width + pad)
        canvas[y: y + height, x: x + width] = pixels[i]
    return canvas[..., 0] if channels == 1 else canvas


def save_png(array: np.ndarray, path: Path, scale: int = 1) -> Path:
    """Save a uint8 picture as PNG (atomically), enlarged ``scale`` times with sharp pixels."""
    from PIL import Image

    image = Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    atomic_save(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def reconstruction_figure(originals: torch.Tensor, reconstructions: torch.Tensor, path: Path,
                          title: str = "", noisy: torch.Tensor | None = None) -> Path:
    """The tutorial's picture: originals above their reconstructions (noisy inputs between)."""
    rows = [("original", originals)] + ([("noisy input", noisy)] if noisy is not None else [])
    return rows_figure(rows + [("reconstruction", reconstructions)], path, title)


# a decoded image in a picture (a grid, samples, an interpolation, traversals, rows of images) is at most this on its
# longer side: pictures of big images stay legible on a page, and are decoded in bounded memory
PICTURE_SIDE = 128
TEXT_KEY = "aelab:text-px"  # a figure's PNG says the pixel size of its smallest text under this key (the page checks)
WIDE = 1100  # pixels: about a report's column; a figure's text grows with the figure beyond it, to stay legible


def text_px(width: int) -> int:
    """The pixel size of a figure's smallest text for a figure ``width`` pixels wide: 14, more for a
    figure wider than a page's column (shown narrower, its text shrinks with it)."""
    return max(14, round(14 * width / WIDE))


def figure_text_px(path: Path) -> int | None:
    """The size of a figure's smallest text as its PNG records it (``TEXT_KEY``), or None."""
    from PIL import Image

    with Image.open(path) as image:
        value = getattr(image, "text", {}).get(TEXT_KEY)
    return int(value) if value else None


def save_figure(figure, path: Path) -> Path:
    """A matplotlib figure as a PNG (atomically), recording the pixel size of its smallest text (``TEXT_KEY``)."""
    from matplotlib.text import Text

    sizes = [text.get_fontsize() for text in figure.findobj(Text) if text.get_visible() and text.get_text().strip()]
    px = round(min(sizes) * figure.dpi / 72) if sizes else 0
    atomic_save(path, lambda tmp: figure.savefig(tmp, format="png", metadata={TEXT_KEY: str(px)} if px else None))
    return path


def rows_figure(rows: list[tuple[str, torch.Tensor]], path: Path, title: str = "",
                captions: list[str] | None = None, caption_name: str = "",
                colour_bar: tuple[str, float] | None = None, largest: int = PICTURE_SIDE) -> Path:
    """Rows of images [N, C, H, W] in [0, 1] (grey rows shown in colour beside colour ones), each
    named at its left, enlarged by the image size (images larger than ``largest`` shrunk to it first);
    ``captions`` under the columns (lines split at "\n"), named ``caption_name`` at the left;
    ``colour_bar`` (name, the value of its top colour): the scale of the last row (``heat``), from 0
    at its bottom, at the right. The text is at least 14 pixels, more in a wide figure (``text_px``),
    and the PNG records its size (``TEXT_KEY``)."""
    from PIL import Image, ImageDraw, PngImagePlugin

    colour = any(images.shape[1] == 3 for _, images in rows)
    images = torch.cat([thumbnails(x.expand(-1, 3, -1, -1) if colour and x.shape[1] == 1 else x, largest)
                        for _, x in rows])
    n = len(rows[0][1])
    grid = tile(images, len(rows), n)
    scale = display_scale(*images.shape[-2:])
    body = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).convert("RGB")
    size = text_px(body.width + 200)
    font, small = _font(size + 2), _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [name for name, _ in rows] + (caption_name.split("\n") if captions else [])
    margin_left = round(max(measure.textlength(name, font=font) for name in names)) + 16
    lines = max((len(text.split("\n")) for text in [*captions, caption_name]), default=0) if captions else 0
    margin_top = size + 12 if title else 4
    margin_bottom = 8 + (size + 4) * lines
    bar_words = colour_bar[0].split("\n") if colour_bar else []
    margin_right = (round(max(measure.textlength(word, font=small) for word in bar_words)) + 40) if colour_bar else 0
    canvas = Image.new("RGB", (body.width + margin_left + margin_right, body.height + margin_top + margin_bottom),
                       "white")
    canvas.paste(body, (margin_left, margin_top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((margin_left, 4), title, fill="black", font=font)
    row_height = body.height / len(rows)
    for i, (name, _) in enumerate(rows):
        draw.text((6, margin_top + row_height * (i + 0.5) - size / 2 - 1), name, fill="black", font=font)
    if captions:
        column = body.width / n
        top = margin_top + body.height + 2
        draw.multiline_text((6, top), caption_name, fill="black", font=small, spacing=4)
        for i, caption in enumerate(captions):
            draw.multiline_text((margin_left + column * i + 2, top), caption, fill="black", font=small, spacing=4)
    if colour_bar:
        _colour_bar(draw, canvas, (margin_left + body.width + 8, margin_top + row_height * (len(rows) - 1) + 2),
                    round(row_height) - 4, bar_words, colour_bar[1], small, size)
    info = PngImagePlugin.PngInfo()
    info.add_text(TEXT_KEY, str(size))
    atomic_save(path, lambda tmp: canvas.save(tmp, format="PNG", pnginfo=info))
    return path


def _colour_bar(draw, canvas, corner: tuple[float, float], height: int, words: list[str], top: float, font,
                size: int) -> None:
    """A vertical bar of ``heat``'s colours, 0 at the bottom and ``top`` at the top, with its labels
    and the ``words`` that say what it measures."""
    from matplotlib import colormaps
    from PIL import Image

    height = max(3 * size, height)
    ramp = (colormaps["inferno"](np.linspace(1, 0, height))[:, :3] * 255).astype(np.uint8)  # [height, 3], top first
    bar = Image.fromarray(np.repeat(ramp[:, None, :], 12, axis=1))
    x, y = round(corner[0]), round(corner[1])
    canvas.paste(bar, (x, y))
    draw.text((x + 16, y - 2), f"{top:.3g}", fill="black", font=font)
    draw.text((x + 16, y + height - size - 2), "0", fill="black", font=font)
    draw.multiline_text((x + 16, y + size + 4), "\n".join(words), fill="black", font=font, spacing=2)


def heat(maps: torch.Tensor) -> torch.Tensor:
    """Error maps [N, H, W] (0 and more) as colour images [N, 3, H, W] in [0, 1] (matplotlib's
    inferno), all on one scale: black no error, yellow the largest."""
    from matplotlib import colormaps

    top = float(maps.max()) or 1.0
    colours = colormaps["inferno"](np.clip(maps.numpy() / top, 0, 1))[..., :3]  # [N, H, W, 3]
    return torch.from_numpy(colours).permute(0, 3, 1, 2).float()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def draw_grid(axes, images: torch.Tensor, plane, n: int) -> None:
    """Draw an n x n grid of decoded images [n*n, C, H, W] (``latent.grid_images``, row by row) on
    matplotlib ``axes``, each image centred on its point of ``plane`` (a ``latent.LatentPlane``):
    the axes carry the plane's coordinates, names and description."""
    picture = tile(images, n, n, pad=0)
    (a0, a1), (b0, b1) = plane.range_a, plane.range_b
    step_a, step_b = (a1 - a0) / (n - 1), (b1 - b0) / (n - 1)
    extent = (a0 - step_a / 2, a1 + step_a / 2, b0 - step_b / 2, b1 + step_b / 2)
    axes.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255, extent=extent,
                aspect="auto", interpolation="nearest")
    axes.set_xlabel(matplotlib_text(plane.names[0]))
    axes.set_ylabel(matplotlib_text(plane.names[1]))
    axes.set_title(matplotlib_text(f"decoded over {plane.description}"), fontsize=9, wrap=True)


def grid_figure(images: torch.Tensor, plane, n: int, path: Path) -> Path:
    """``draw_grid`` as a PNG file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = images.shape[-2:]
    side = min(9.0, max(4.5, n * max(height, width) / 40))
    figure = Figure(figsize=(side * width / max(height, width) + 1.0, side * height / max(height, width) + 1.0),
                    dpi=110)
    FigureCanvasAgg(figure)
    draw_grid(figure.add_subplot(), images, plane, n)
    figure.tight_layout()
    save_figure(figure, path)
    return path


def kl_figure(kl_per_dimension: np.ndarray, active: np.ndarray, path: Path) -> Path:
    """The KL divergence of each latent dimension (nats, averaged over images) as bars, the active
    units in colour and the inactive ones (collapsed to the prior) in grey."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(4.0, 0.3 * len(kl_per_dimension) + 1.5), 3.0), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(np.arange(len(kl_per_dimension)), kl_per_dimension,
             color=["#1f77b4" if on else "#b0b5c0" for on in active])
    axes.set_xlabel("latent dimension")
    axes.set_ylabel("KL (nats)")
    axes.set_title("KL per dimension (grey: inactive, the prior)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    return path


def loss_curves_figure(metrics: list[dict[str, float]], path: Path, label: str = "loss (mean per pixel)") -> Path:
    """Train and validation loss per epoch (``label``: what it is) on a log scale where it is
    positive (the tutorial's plot), else on a linear scale (a Gaussian likelihood's nats may be negative)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epochs = [row["epoch"] for row in metrics]
    values = [row[key] for row in metrics for key in ("train_loss", "val_loss")]
    draw = axes.semilogy if all(value > 0 for value in values) else axes.plot
    draw(epochs, [row["train_loss"] for row in metrics], marker="o", ms=3, label="train")
    draw(epochs, [row["val_loss"] for row in metrics], marker="o", ms=3, label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel(matplotlib_text(label))
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path)
    return path


def palette(n: int) -> list[str]:
    """n distinct colours (tab10, then tab20)."""
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
            "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
    return [base[i % len(base)] for i in range(n)]


def label_colour(label: int, class_names: tuple[str, ...]) -> str:
    """A label's colour (``palette``); grey for -1 (images without labels)."""
    return "#5a6478" if label < 0 else palette(max(len(class_names), label + 1))[label]


def label_name(label: int, class_names: tuple[str, ...]) -> str:
    """A label's class name; ``unlabelled`` for -1 (images without labels)."""
    if label < 0:
        return "unlabelled"
    return class_names[label] if label < len(class_names) else str(label)


def draw_map(axes, xy: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], axis_names: tuple[str, str],
             title: str) -> None:
    """A 2-D map of points coloured by label, with a legend, on matplotlib ``axes``."""
    for label in np.unique(labels):
        mask = labels == label
        name = matplotlib_text(label_name(label, class_names))
        axes.scatter(xy[mask, 0], xy[mask, 1], s=4, alpha=0.7, color=label_colour(label, class_names), label=name,
                     linewidths=0)
    axes.set_xlabel(matplotlib_text(axis_names[0]))
    axes.set_ylabel(matplotlib_text(axis_names[1]))
    axes.set_title(matplotlib_text(title))
    axes.legend(markerscale=3, fontsize=8, loc="best", framealpha=0.8)


def map_png(xy: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], axis_names: tuple[str, str],
            title: str, path: Path) -> Path:
    """``draw_map`` as a PNG file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 6.5), dpi=110)
    FigureCanvasAgg(figure)
    draw_map(figure.add_subplot(), xy, labels, class_names, axis_names, title)
    figure.tight_layout()
    save_figure(figure, path)
    return path


def map_plotly(xy: np.ndarray, labels: np.ndarray, index: np.ndarray, class_names: tuple[str, ...],
               axis_names: tuple[str, str], title: str):
    """An interactive plotly map: one trace per label (legend), hover shows index and label.

    Each point's customdata is [index, label name, position in the arrays] so a page can look
    up the image under the pointer. Every text (class names, title, axis names) is shown as written
    (``plotly_text``).
    """
    import plotly.graph_objects as go

    figure = go.Figure()
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        name = plotly_text(label_name(label, class_names))
        figure.add_trace(go.Scattergl(
            x=xy[positions, 0], y=xy[positions, 1], mode="markers", name=name,
            marker={"size": 4, "color": label_colour(label, class_names), "opacity": 0.75},
            customdata=np.column_stack([index[positions], np.full(len(positions), name, dtype=object), positions]),
            hovertemplate="index %{customdata[0]}<br>label %{customdata[1]}<extra></extra>"))
    # the title sits below the band where plotly's toolbar appears (the top 30 pixels), so it is never covered
    figure.update_layout(title={"text": plotly_text(title), "x": 0, "xanchor": "left", "y": 1, "yref": "paper",
                                "yanchor": "bottom", "pad": {"b": 10}, "font": {"size": 15}},
                         xaxis_title=plotly_text(axis_names[0]),
                         yaxis_title=plotly_text(axis_names[1]), template="plotly_white",
                         legend={"itemsizing": "constant", "title": "label"}, height=580,
                         margin={"l": 50, "r": 20, "t": 72, "b": 50})
    return figure


def display_scale(height: int, width: int, most: int = 4) -> int:
    """How many times to enlarge images of this size in a figure: 4 for MNIST's 28, 2 for 64, 1 from 128."""
    return max(1, min(most, 128 // max(height, width)))


def thumbnails(images: torch.Tensor, side: int = 32) -> torch.Tensor:
    """Images [N, C, H, W] in [0, 1] shrunk (antialiased) so that neither side exceeds ``side``."""
    height, width = images.shape[-2:]
    if max(height, width) <= side:
        return images
    factor = side / max(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True,
                                           align_corners=False).clamp_(0, 1)


def picture_uri(source: Path | np.ndarray, max_bytes: int, shrink: bool = True) -> str:
    """A picture as a data: URI of at most about ``max_bytes``: PNG as it is when it fits; else JPEG
    (colour pictures), then (with ``shrink``) smaller and smaller. Keeps self-contained pages light."""
    from PIL import Image

    if isinstance(source, Path):
        data = source.read_bytes()
        if len(data) <= max_bytes:
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        with Image.open(source) as opened:
            opened.load()
            image = opened.copy()
    else:
        image = Image.fromarray(source)
    image = image.convert("RGB") if image.mode not in ("L", "RGB") else image
    for _ in range(8):
        kind, data = "png", _encoded(image, "PNG")
        if len(data) > max_bytes:
            kind, data = "jpeg", _encoded(image, "JPEG", quality=85)
        if len(data) <= max_bytes or not shrink:
            break
        factor = min(0.9, max(0.3, (max_bytes / len(data)) ** 0.5))
        image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                             Image.Resampling.LANCZOS)
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _encoded(image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def matplotlib_text(text: str) -> str:
    """``text`` for a matplotlib label, shown as written: a ``$`` would start mathtext (and a stray one
    fails the figure)."""
    return str(text).replace("$", r"\$")


def plotly_text(text: str) -> str:
    """``text`` for a plotly label (trace name, title, hover text), which plotly reads as its own HTML
    subset (<b>, <br>, <a href>, &lt; ...): shown as written, never as markup. (Plotly decodes only
    &amp; &lt; &gt; and numeric entities, so quotes stay as they are.)"""
    return html.escape(str(text), quote=False)


# What JSON must not hold raw inside a <script> element (as Django's json_script): "<" (</script>,
# <!-- and <script switch the HTML parser's states), ">" and "&" (for good measure), and the line
# separators U+2028/2029 (line ends to older JavaScript). Outside strings JSON has none of these.
_SCRIPT_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def script_json(value) -> str:
    """``value`` as JSON that is safe inside a <script> element: the one way data reaches a page's
    scripts (plotly's figures included)."""
    return json.dumps(value).translate(_SCRIPT_ESCAPES)


# Interactive maps with the image under the pointer: each map is a <div> whose parent also holds
# a <canvas class="preview">; the images are one sprite sheet, in the order of customdata[2].
MAP_CSS = """.map { position: relative; }
.preview { position: absolute; right: 16px; top: 56px; width: 84px; height: auto; border: 1px solid #ccd;
  background: black; image-rendering: pixelated; display: none; }"""

MAP_SCRIPT = """function aelabMaps(maps, spriteUri, columns, width, height) {
  const sprite = new Image(); sprite.src = spriteUri;
  const plotted = Object.keys(maps).map(function (id) {
    const div = document.getElementById(id), canvas = div.parentElement.querySelector("canvas.preview");
    canvas.width = width; canvas.height = height;
    return Plotly.newPlot(div, maps[id].data, maps[id].layout, {responsive: true, displaylogo: false}).then(function () {
      div.on("plotly_hover", function (event) {
        const k = Number(event.points[0].customdata[2]);
        canvas.getContext("2d").drawImage(sprite, (k % columns) * width, Math.floor(k / columns) * height, width, height, 0, 0, width, height);
        canvas.style.display = "block"; });
      div.on("plotly_unhover", function () { canvas.style.display = "none"; });
    });
  });
  return {sprite: sprite, plotted: plotted};
}"""


@functools.lru_cache(maxsize=1)
def plotly_packed() -> str:
    """plotly.js gzipped, in base64: 1.9 MB in a page where it is 4.8 MB as it is, so that the report's
    budget leaves room for the explorer's decoder. ``PLOTLY_LOADER`` unpacks it in the browser."""
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


# window.aelabPlotly: a promise of plotly.js, unpacked by the browser's own gzip (DecompressionStream:
# Chrome 80, Firefox 113, Safari 16.4) and run as a script of the page; what draws with Plotly waits for it.
PLOTLY_LOADER = """window.aelabPlotly = (function (packed) {
  return Promise.resolve().then(function () {  /* (a browser without DecompressionStream: a rejected promise) */
    const bytes = Uint8Array.from(atob(packed), function (c) { return c.charCodeAt(0); });
    return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
  }).then(function (code) {
    const script = document.createElement("script"); script.textContent = code; document.head.appendChild(script);
    if (typeof Plotly === "undefined") throw new Error("plotly.js did not load");
  });
})"""


SPRITE_BYTES = 1_200_000  # the hover previews of a map: PNG, or JPEG where PNG is larger


def maps_script(figures: dict, images: torch.Tensor) -> str:
    """JavaScript that draws ``figures`` ({div id: plotly figure}) with hover previews of ``images``
    [N, C, H, W] in [0, 1] (N = the points, in customdata order; see ``thumbnails``). Needs plotly.js
    and MAP_SCRIPT."""
    columns = max(1, min(100, len(images)))
    sprite = tile(images, -(-len(images) // columns), columns, pad=0, value=0)
    figures_json = {name: json.loads(figure.to_json()) for name, figure in figures.items()}
    uri = picture_uri(sprite, SPRITE_BYTES, shrink=False)
    return (f"const AELAB_MAPS = aelabMaps({script_json(figures_json)}, {script_json(uri)}, "
            f"{columns}, {images.shape[-1]}, {images.shape[-2]});")


def write_map_html(figure, images: torch.Tensor, path: Path, title: str) -> Path:
    """A standalone page with one interactive map (plotly's JavaScript inside: opens offline)
    that shows the image under the pointer."""
    from plotly.offline import get_plotlyjs

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 16px; }} {MAP_CSS}</style></head>
<body><div class="map"><div id="map"></div><canvas class="preview"></canvas></div>
<script>{get_plotlyjs()}</script>
<script>{MAP_SCRIPT}
{maps_script({"map": figure}, images)}
Promise.all(AELAB_MAPS.plotted.concat([AELAB_MAPS.sprite.decode()]))
  .then(function () {{ document.body.dataset.rendered = "ok"; }})
  .catch(function (error) {{ document.body.dataset.rendered = "failed: " + error; }});</script>
</body></html>
"""
    atomic_save(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path
