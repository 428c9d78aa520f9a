"""The tutorial's pipeline, transcribed as written (../shared/seed), for side-by-side comparison.

Kept as close to the tutorial as possible: torchvision's MNIST dataset with ``ToTensor()``,
``random_split`` 80/20, DataLoaders of batch 256 (not reshuffled; the test loader shuffled),
its ``Encoder``/``Decoder`` classes, Adam(lr 1e-3, weight decay 1e-5), constant rate, MSE.
Its per-batch ``print``, its per-epoch test pass and its per-epoch picture of 5 test images and
their reconstructions (``plot_ae_outputs``, drawn with matplotlib's Agg backend instead of
``plt.show()``) are kept. Two of its bugs are fixed so that it runs and measures the same task
as aelab: the loop calls the training function that exists (the tutorial's ``train_epoch`` is
undefined), and there is no noise (a plain autoencoder, like aelab's default).
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, random_split
from torchvision import transforms


class Encoder(nn.Module):
    def __init__(self, encoded_space_dim, fc2_input_dim):
        super().__init__()
        self.encoder_cnn = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(True),
            nn.Conv2d(16, 32, 3, stride=2, padding=0),
            nn.ReLU(True),
        )
        self.flatten = nn.Flatten(start_dim=1)
        self.encoder_lin = nn.Sequential(
            nn.Linear(3 * 3 * 32, 128),
            nn.ReLU(True),
            nn.Linear(128, encoded_space_dim),
        )

    def forward(self, x):
        x = self.encoder_cnn(x)
        x = self.flatten(x)
        x = self.encoder_lin(x)
        return x


class Decoder(nn.Module):
    def __init__(self, encoded_space_dim, fc2_input_dim):
        super().__init__()
        self.decoder_lin = nn.Sequential(
            nn.Linear(encoded_space_dim, 128),
            nn.ReLU(True),
            nn.Linear(128, 3 * 3 * 32),
            nn.ReLU(True),
        )
        self.unflatten = nn.Unflatten(dim=1, unflattened_size=(32, 3, 3))
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, output_padding=0),
            nn.BatchNorm2d(16),
            nn.ReLU(True),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(True),
            nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),
        )

    def forward(self, x):
        x = self.decoder_lin(x)
        x = self.unflatten(x)
        x = self.decoder_conv(x)
        x = torch.sigmoid(x)
        return x


def train_epoch(encoder, decoder, device, dataloader, loss_fn, optimizer, verbose=True):
    encoder.train()
    decoder.train()
    train_loss = []
    for image_batch, _ in dataloader:
        image_batch = image_batch.to(device)
        encoded_data = encoder(image_batch)
        decoded_data = decoder(encoded_data)
        loss = loss_fn(decoded_data, image_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if verbose:
            print("\t partial train loss (single batch): %f" % (loss.data))
        train_loss.append(loss.detach().cpu().numpy())
    return np.mean(train_loss)


def test_epoch(encoder, decoder, device, dataloader, loss_fn):
    encoder.eval()
    decoder.eval()
    with torch.no_grad():
        conc_out = []
        conc_label = []
        for image_batch, _ in dataloader:
            image_batch = image_batch.to(device)
            encoded_data = encoder(image_batch)
            decoded_data = decoder(encoded_data)
            conc_out.append(decoded_data.cpu())
            conc_label.append(image_batch.cpu())
        conc_out = torch.cat(conc_out)
        conc_label = torch.cat(conc_label)
        val_loss = loss_fn(conc_out, conc_label)
    return val_loss.data


def plot_ae_outputs(encoder, decoder, test_dataset, device, n=5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(10, 4.5))
    for i in range(n):
        ax = plt.subplot(2, n, i + 1)
        img = test_dataset[i][0].unsqueeze(0).to(device)
        encoder.eval()
        decoder.eval()
        with torch.no_grad():
            rec_img = decoder(encoder(img))
        plt.imshow(img.cpu().squeeze().numpy(), cmap="gist_gray")
        ax.get_xaxis().set_visible(False)
        ax.get_yaxis().set_visible(False)
        if i == n // 2:
            ax.set_title("Original images")
        ax = plt.subplot(2, n, i + 1 + n)
        plt.imshow(rec_img.cpu().squeeze().numpy(), cmap="gist_gray")
        ax.get_xaxis().set_visible(False)
        ax.get_yaxis().set_visible(False)
        if i == n // 2:
            ax.set_title("Reconstructed images")
    plt.savefig(io.BytesIO(), format="png")  # instead of plt.show()
    plt.close()


def run(data_dir: str, num_epochs: int = 30, d: int = 4, device: str = "cpu", on_epoch=None):
    """Train as the tutorial does; ``on_epoch(epoch, encoder, decoder, test_loader)`` after each epoch.

    As written, the per-epoch "val loss" is measured on the test loader, so it is the test MSE.
    """
    train_dataset = torchvision.datasets.MNIST(data_dir, train=True, download=False)
    test_dataset = torchvision.datasets.MNIST(data_dir, train=False, download=False)
    train_dataset.transform = transforms.Compose([transforms.ToTensor()])
    test_dataset.transform = transforms.Compose([transforms.ToTensor()])
    m = len(train_dataset)
    train_data, val_data = random_split(train_dataset, [int(m - m * 0.2), int(m * 0.2)])
    batch_size = 256
    train_loader = DataLoader(train_data, batch_size=batch_size)
    valid_loader = DataLoader(val_data, batch_size=batch_size)  # noqa: F841  (built, as in the tutorial)
    test_loader = DataLoader(test_dataset, batch_size=batch_size, shuffle=True)

    loss_fn = torch.nn.MSELoss()
    lr = 0.001
    torch.manual_seed(0)
    encoder = Encoder(encoded_space_dim=d, fc2_input_dim=128)
    decoder = Decoder(encoded_space_dim=d, fc2_input_dim=128)
    params_to_optimize = [{"params": encoder.parameters()}, {"params": decoder.parameters()}]
    optim = torch.optim.Adam(params_to_optimize, lr=lr, weight_decay=1e-05)
    encoder.to(device)
    decoder.to(device)

    history = {"train_loss": [], "val_loss": [], "train_seconds": [], "wall_seconds": []}
    train_seconds = wall_seconds = 0.0
    for epoch in range(num_epochs):
        start = time.perf_counter()
        train_loss = train_epoch(encoder, decoder, device, train_loader, loss_fn, optim)
        train_seconds += time.perf_counter() - start
        val_loss = test_epoch(encoder, decoder, device, test_loader, loss_fn)  # as written: the test set
        print("\n EPOCH {}/{} \t train loss {} \t val loss {}".format(epoch + 1, num_epochs, train_loss, val_loss))
        history["train_loss"].append(float(train_loss))
        history["val_loss"].append(float(val_loss))
        plot_ae_outputs(encoder, decoder, test_dataset, device, n=5)
        wall_seconds += time.perf_counter() - start
        history["train_seconds"].append(train_seconds)
        history["wall_seconds"].append(wall_seconds)
        if on_epoch is not None:
            on_epoch(epoch + 1, encoder, decoder, test_loader)
    return encoder, decoder, history, test_loader
