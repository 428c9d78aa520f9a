"""Training-step throughput of the tutorial's model under variants of how the step is computed.

    .venv/bin/python benchmarks/step_variants.py [--more] [--compile] [--rounds 8]

Variants run interleaved (round after round of 8,192 real MNIST images, batch 256, Adam), so a
slow moment of a shared machine touches them all alike; the median images/s of each is printed.
This is how the choices in aelab's CPU training step were made (benchmarks/RESULTS.md):
channels-last, fused Adam, fp32, the transposed convolutions of ``aelab.ops.ConvTranspose2d``
(against PyTorch's ``nn.ConvTranspose2d``) and shards (``aelab.steps.ShardedStep``, the batch
split over threads of their own) against PyTorch's intra-op threads.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from aelab.config import DataConfig, TrainConfig
from aelab.data.sets import load_split
from aelab.models.ae import ConvAutoencoder
from aelab.ops import ConvTranspose2d
from aelab.steps import ShardedStep


class Variant:
    def __init__(self, name: str, images: torch.Tensor, aelab_convt=True, channels_last=True, bf16=False,
                 fused=True, batch_size=256, shards=1, compile_model=False):
        torch.manual_seed(0)
        model = ConvAutoencoder()
        if not aelab_convt:
            for module in model.modules():
                if isinstance(module, ConvTranspose2d):
                    module.__class__ = torch.nn.ConvTranspose2d  # PyTorch's own forward and backward
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.name, self.images, self.bf16, self.batch_size = name, images, bf16, batch_size
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5, fused=fused or None)
        self.model = torch.compile(model) if compile_model else model
        self.sharded = ShardedStep(model, self.optimizer, TrainConfig(), shards) if shards > 1 else None
        self.rates: list[float] = []

    def step(self, batch: torch.Tensor) -> None:
        if self.sharded is not None:
            self.sharded(batch, batch)
            return
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            output = self.model(batch)
        loss = F.mse_loss(output.float(), batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def round(self) -> None:
        steps = len(self.images) // self.batch_size
        with self.sharded or contextlib.nullcontext():  # shards: one intra-op thread each, for the round
            start = time.perf_counter()
            for i in range(steps):
                self.step(self.images[i * self.batch_size: (i + 1) * self.batch_size])
            self.rates.append(steps * self.batch_size / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--more", action="store_true", help="add the layout, optimizer, bf16 and batch-512 variants")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant (compile time excluded)")
    parser.add_argument("--data-dir", help="data folder (default: aelab's)")
    args = parser.parse_args()
    images = load_split(DataConfig(data_dir=args.data_dir), "train").images[:8192].float().div(255)
    variants = [
        Variant("intra-op threads, PyTorch's convT", images, aelab_convt=False),
        Variant("intra-op threads, aelab's convT", images),
        Variant("2 shards, PyTorch's convT", images, aelab_convt=False, shards=2),
        Variant("2 shards, aelab's convT (aelab)", images, shards=2),
    ]
    if args.more:
        variants += [
            Variant("NCHW, foreach Adam, PyTorch's convT", images, aelab_convt=False, channels_last=False, fused=False),
            Variant("bf16 autocast, intra-op threads", images, bf16=True),
            Variant("batch 512, 2 shards", images, shards=2, batch_size=512),
        ]
    if args.compile:
        variants.append(Variant("torch.compile, intra-op threads", images, compile_model=True))
    for variant in variants:  # warm-up round (and compilation), not counted
        variant.round()
        variant.rates.clear()
    for _ in range(args.rounds):
        for variant in variants:
            variant.round()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 256 unless named")
    for variant in variants:
        print(f"{variant.name:40s} {statistics.median(variant.rates):9,.0f} images/s (median of {args.rounds})")


if __name__ == "__main__":
    main()
