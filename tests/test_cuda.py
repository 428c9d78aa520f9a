"""The CUDA path: one captured graph per training step, the same numbers as the eager loop.

Skipped where there is no CUDA GPU (CI); on a GPU machine: ``AELAB_TEST_CUDA=1 python -m pytest tests/test_cuda.py``
(the rest of the suite hides the GPU: its expected numbers are CPU numbers).
"""

import pytest
import torch

from aelab import RunConfig, load_run, train
from aelab.config import train_config_for
from aelab.training import Trainer
from conftest import make_splits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and AELAB_TEST_CUDA=1")


def cuda_config(**train_settings):
    values = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "device": "cuda", **train_settings}
    return RunConfig(train=train_config_for("fast", **values))


def train_cuda(tmp_path, name, monkeypatch, graphs: bool, splits=None, **train_settings):
    monkeypatch.setenv("AELAB_CUDA_GRAPHS", "1" if graphs else "0")
    return train(cuda_config(**train_settings), tmp_path / name, report=False,
                 data=splits or make_splits(n_train=250))  # 250 = 7 full batches of 32 and one of 26


def test_graphed_training_computes_what_the_eager_loop_computes(tmp_path, monkeypatch):
    eager = train_cuda(tmp_path, "eager", monkeypatch, graphs=False, epochs=3)
    graphed = train_cuda(tmp_path, "graphed", monkeypatch, graphs=True, epochs=3)
    for a, b in zip(eager.metrics, graphed.metrics):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["lr"] == a["lr"]
    for (name, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name


def test_the_graph_is_used_and_warm_up_leaves_no_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("AELAB_CUDA_GRAPHS", "1")
    trainer = Trainer(cuda_config(), tmp_path, make_splits(), device=torch.device("cuda"))
    graph = trainer.train_step.graph
    assert graph is not None
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    index = torch.arange(32, device="cuda")
    graph.capture()  # warm-up steps run, then everything is put back
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(float(v.abs().sum()) == 0 for s in trainer.optimizer.state.values() for v in s.values())
    with trainer.train_step as step:
        loss = step(index)
    assert trainer.train_step.graph is graph and torch.isfinite(loss)
    assert float(graph.lr) == pytest.approx(trainer.config.train.lr / 25, rel=1e-6)  # the first rate
    assert not torch.equal(before["encoder.encoder_cnn.0.weight"], trainer.model.encoder.encoder_cnn[0].weight)


def test_a_cuda_run_resumes_and_moves_to_the_cpu(tmp_path, monkeypatch):
    train_cuda(tmp_path, "run", monkeypatch, graphs=True, epochs=2)
    config = RunConfig(train=train_config_for("fast", epochs=3, device="cpu"))
    result = train(config, tmp_path / "run", resume=True, report=False, data=make_splits(n_train=250),
                   explicit={"train.epochs", "train.device"})
    assert len(result.metrics) == 3 and next(result.model.parameters()).device.type == "cpu"
    assert load_run(tmp_path / "run").config.train.device == "cpu"


def test_bf16_and_denoising_train_on_cuda(tmp_path, monkeypatch):
    bf16 = train_cuda(tmp_path, "bf16", monkeypatch, graphs=True, precision="bf16", epochs=3)
    assert bf16.metrics[-1]["train_loss"] < bf16.metrics[0]["train_loss"]
    denoising = train_cuda(tmp_path, "den", monkeypatch, graphs=True, noise_factor=0.3, epochs=2)
    assert "test_denoising_mse" in denoising.evaluation


def test_on_a_gpu_the_training_step_is_counted_against_the_gpus_memory(tmp_path, monkeypatch):
    """The estimate puts the training step (and the images, held on the GPU) on the GPU's side, says
    its free memory, and what training takes there stays within it."""
    from aelab import footprint

    config = cuda_config(batch_size=64)
    splits = make_splits(n_train=256)
    said = footprint.estimate(config, 256, 64, device="cuda")
    assert said.gpu > 0 and said.parts["training"] == footprint.LIBRARIES
    assert "the GPU about" in said.line(*footprint.limit(), footprint.gpu_free("cuda"))
    torch.cuda.reset_peak_memory_stats()
    train_cuda(tmp_path, "run", monkeypatch, graphs=False, splits=splits, batch_size=64)
    assert torch.cuda.max_memory_allocated() <= said.gpu + sum(part.images.nbytes for part in splits.values())
