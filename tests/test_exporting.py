"""Export: ONNX run in onnxruntime and TorchScript in a fresh process give aelab's outputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from aelab.cli import main
from aelab.inference import infer
from aelab.run import load_run

from conftest import synthetic_images


@pytest.fixture(scope="module")
def images():
    pixels, _ = synthetic_images(1000, seed=11)
    return torch.from_numpy(pixels).unsqueeze(1)  # uint8 [1000, 1, 28, 28]


def test_onnx_in_onnxruntime_gives_aelabs_outputs(trained_run, images, tmp_path):
    import onnx
    import onnxruntime

    run = load_run(trained_run)
    x = images.float().div(255).numpy()
    expected = infer(run.model, images, terms=(), codes=True, reconstructions=True)
    for part, want in (("autoencoder", expected.reconstructions.numpy()), ("encoder", expected.codes)):
        out = tmp_path / f"{part}.onnx"
        assert main(["export", str(trained_run), "--part", part, "--out", str(out), "--quiet"]) == 0
        session = onnxruntime.InferenceSession(str(out))
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    out = tmp_path / "decoder.onnx"
    assert main(["export", str(trained_run), "--part", "decoder", "--out", str(out), "--quiet"]) == 0
    session = onnxruntime.InferenceSession(str(out))
    got = session.run(None, {"codes": expected.codes[:7]})[0]  # another batch size: the axis is dynamic
    assert np.abs(got - expected.reconstructions.numpy()[:7]).max() < 1e-5
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["input"])["shape"] == ["N", 4] and json.loads(meta["output"])["range"] == [0.0, 1.0]
    assert meta["latent_dim"] == "4" and meta["aelab_version"]


def test_torchscript_in_a_fresh_process_gives_aelabs_outputs(trained_run, images, tmp_path):
    run = load_run(trained_run)
    out = tmp_path / "model.pt"
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(out), "--quiet"]) == 0
    np.save(tmp_path / "x.npy", images.float().div(255).numpy())
    code = ("import json, sys, numpy, torch; extra = {'aelab.json': ''}; "
            f"m = torch.jit.load({str(out)!r}, _extra_files=extra); "
            f"y = m(torch.from_numpy(numpy.load({str(tmp_path / 'x.npy')!r}))); "
            f"numpy.save({str(tmp_path / 'y.npy')!r}, y.detach().numpy()); print(json.loads(extra['aelab.json'])['part'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "autoencoder"
    want = infer(run.model, images, terms=(), reconstructions=True).reconstructions.numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - want).max() < 1e-5


def test_export_of_what_is_not_a_run_is_one_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--quiet"]) == 2
    assert "config.json" in capsys.readouterr().err
