"""Training-step throughput of the tutorial's model under variants of layout, precision and optimizer.

    .venv/bin/python benchmarks/step_variants.py [--compile] [--rounds 5]

Variants run interleaved (round after round), so a slow moment of a shared machine touches them
all alike; the median images/s of each is printed. Real MNIST images, batch 256, Adam. This is
how the choices in aelab's training step (channels-last, fused Adam, fp32) were made; see
RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from aelab.config import DataConfig
from aelab.data.sets import load_split
from aelab.model import ConvAutoencoder


class Variant:
    def __init__(self, name: str, images: torch.Tensor, channels_last=False, bf16=False, fused=False,
                 batch_size=256, compile_model=False):
        torch.manual_seed(0)
        model = ConvAutoencoder()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.name, self.images, self.bf16, self.batch_size = name, images, bf16, batch_size
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5, fused=fused or None)
        self.model = torch.compile(model) if compile_model else model
        self.rates: list[float] = []

    def step(self, batch: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            output = self.model(batch)
        loss = F.mse_loss(output.float(), batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def round(self) -> None:
        steps = len(self.images) // self.batch_size
        start = time.perf_counter()
        for i in range(steps):
            self.step(self.images[i * self.batch_size: (i + 1) * self.batch_size])
        self.rates.append(steps * self.batch_size / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants (compile time excluded)")
    args = parser.parse_args()
    images = load_split(DataConfig(), "train", quiet=True).images[:8192].float().div(255)
    variants = [
        Variant("fp32 (stock)", images),
        Variant("fp32 fused Adam", images, fused=True),
        Variant("fp32 channels-last fused Adam", images, channels_last=True, fused=True),
        Variant("bf16 autocast fused Adam", images, bf16=True, fused=True),
        Variant("bf16 channels-last fused Adam", images, bf16=True, channels_last=True, fused=True),
        Variant("fp32 channels-last fused, batch 512", images, channels_last=True, fused=True, batch_size=512),
    ]
    if args.compile:
        variants.append(Variant("compile channels-last fused Adam", images, channels_last=True, fused=True,
                                compile_model=True))
    for variant in variants:  # warm-up round (and compilation), not counted
        variant.round()
        variant.rates.clear()
    for _ in range(args.rounds):
        for variant in variants:
            variant.round()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for variant in variants:
        print(f"{variant.name:38s} {statistics.median(variant.rates):9,.0f} images/s (median of {args.rounds})")


if __name__ == "__main__":
    main()
