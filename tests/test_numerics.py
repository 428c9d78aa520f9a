"""No subnormal floats in what training leaves: they make Intel CPUs' arithmetic slow (issue 19)."""

import pytest
import torch
from safetensors.torch import load_file

from aelab import RunConfig, train
from aelab.callbacks import Callback
from aelab.checkpoint import read_checkpoint
from aelab.config import train_config_for
from aelab.optim import ADAM_MOMENTS, keep_subnormals_out
from conftest import make_splits


def subnormals(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """How many subnormal values each floating tensor holds (only those that hold some)."""
    counts = {name: int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())
              for name, t in tensors.items() if t.is_floating_point()}
    return {name: n for name, n in counts.items() if n}


class DeadUnit(Callback):
    """Hidden unit 0 of the decoder's first layer never fires (bias -100), so the weights into and
    out of it get no gradient but weight decay's; they start at ``start``."""

    def __init__(self, start: float):
        self.start = start

    @torch.no_grad()
    def on_train_start(self, trainer):
        first, second = trainer.model.decoder.decoder_lin[0], trainer.model.decoder.decoder_lin[2]
        first.bias[0] = -100.0
        first.weight[0].fill_(self.start)  # [latent_dim] weights in
        second.weight[:, 0].fill_(self.start)  # [288] weights out


def what_the_run_holds(run_dir) -> dict[str, torch.Tensor]:
    """Its weights and BatchNorm buffers (model.safetensors, the last checkpoint's) and Adam's moments."""
    saved = read_checkpoint(run_dir)
    tensors = {f"model.safetensors:{k}": v for k, v in load_file(run_dir / "model.safetensors").items()}
    tensors |= {f"checkpoint:{k}": v for k, v in saved.weights.items()}
    for index, state in saved.state["optimizer"]["state"].items():
        tensors |= {f"adam:{index}.{key}": state[key] for key in ADAM_MOMENTS if key in state}
    return tensors


@pytest.mark.parametrize("shards", [1, 2])  # the eager step and the sharded one
@pytest.mark.parametrize("start, weight_decay", [
    (1e-39, 0.0),  # subnormal weights: with no gradient at all they stay as they are
    (4e-38, 1e-6),  # normal weights, but weight decay's gradient on them (4e-44) is subnormal: Adam's moments become so
], ids=["subnormal-weights", "subnormal-moments"])
def test_training_leaves_no_subnormal(tmp_path, shards, start, weight_decay):
    """After a seeded 2-epoch run with a dead unit, no weight, buffer or Adam moment the run keeps is
    subnormal (without `keep_subnormals_out`: the unit's 292 weights, or their 292 `exp_avg` values)."""
    config = RunConfig(train=train_config_for("fast", epochs=2, batch_size=32, lr=3e-3, seed=0,
                                              weight_decay=weight_decay, shards=shards))
    train(config, tmp_path / "run", report=False, data=make_splits(), callbacks=[DeadUnit(start)])
    held = what_the_run_holds(tmp_path / "run")
    assert any(name.startswith("adam:") for name in held) and any("running_var" in name for name in held)
    assert subnormals(held) == {}


def test_the_flush_changes_only_subnormals():
    """NaN, infinities, the smallest normal number and every other normal value stay as they were."""
    tiny = torch.finfo(torch.float32).tiny
    values = [1e-39, -1e-39, 1.4e-45, -tiny * (1 - 2 ** -23), tiny, -tiny, 0.0, 1.0, -3e-38,
              float("nan"), float("inf"), -float("inf")]
    model = torch.nn.Linear(len(values), 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    keep_subnormals_out(model, optimizer)
    with torch.no_grad():
        model.weight[0] = torch.tensor(values)
    model.weight.grad = torch.zeros_like(model.weight)
    optimizer.step()
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, tiny, -tiny, 0.0, 1.0, -3e-38, float("nan"), float("inf"), -float("inf")])
    assert torch.equal(model.weight[0].isnan(), expected.isnan())
    assert torch.equal(model.weight[0].nan_to_num(), expected.nan_to_num())
