"""Anomaly scores: the detector, `aelab score`, one-class training, and the blind spot of the
reconstruction error."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aelab import AelabError
from aelab.cli import main
from aelab.scores import check_contamination, fit_detector, load_detector, score_images

from conftest import make_splits, synthetic_images


def test_the_threshold_flags_the_contamination_share_of_validation_images(trained_run, tmp_path):
    from aelab.run import load_run
    from aelab.scores import METHODS, save_detector

    run = load_run(trained_run)
    splits = make_splits()
    for method in METHODS:
        detector = fit_detector(run.model, splits["train"].images, splits["val"].images, method, contamination=0.25)
        val = score_images(run.model, detector, splits["val"].images)
        assert abs(val.is_anomaly.mean() - 0.25) <= 1 / len(val.score) + 1e-9
        save_detector(detector, tmp_path)
        again = load_detector(tmp_path)  # as saved in the run
        assert again.method == method
        assert np.allclose(score_images(run.model, again, splits["test"].images).score,
                           score_images(run.model, detector, splits["test"].images).score)


def test_the_ingredients_are_what_they_say(trained_run):
    """feature_distance: the Mahalanobis distance of the encoder's features from the training images'
    Gaussian; feature_error: that of the features' change through the reconstruction; combined: their
    standardised logs and the error's, joined by a smooth maximum."""
    import torch

    from aelab.data.batches import to_unit
    from aelab.run import load_run

    run = load_run(trained_run)
    splits = make_splits()
    detector = fit_detector(run.model, splits["train"].images, splits["val"].images)
    scored = score_images(run.model, detector, splits["test"].images)
    x = to_unit(splits["test"].images)
    with torch.no_grad():
        features = run.model.encoder.encoder_cnn(x).flatten(1).double().numpy()
        rebuilt = run.model.encoder.encoder_cnn(run.model(x)).flatten(1).double().numpy()
    for name, values in (("feature_distance", features), ("feature_error", features - rebuilt)):
        gaussian = detector.gaussians[name]
        centred = values - gaussian["mean"]
        expected = np.einsum("ij,jk,ik->i", centred, gaussian["precision"], centred)
        assert np.allclose(scored.parts[name], expected, rtol=1e-4, atol=1e-6)
    z = [(np.log(scored.parts[name]) - detector.standard[name][0]) / detector.standard[name][1]
         for name in ("mse", "feature_error", "feature_distance")]
    assert np.allclose(scored.score, np.log(np.exp(z[0]) + np.exp(z[1]) + np.exp(z[2])))


def test_a_score_saved_by_an_older_aelab_is_fitted_anew(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "anomaly.json").write_text(json.dumps({"method": "combined", "contamination": 0.1, "threshold": 1.0,
                                                  "mixture": {}, "standard": {}}))  # (no version: session 5's)
    assert load_detector(run) is None
    assert main(["score", str(run), "--quiet"]) == 0
    assert load_detector(run).version == 2 and (run / "anomaly.safetensors").is_file()


@pytest.mark.parametrize("value", [0, -0.1, 0.6, float("nan")])
def test_contamination_out_of_range_is_one_clear_error(value):
    with pytest.raises(AelabError, match=r"`contamination`.*\(0, 0.5\].*try 0.1"):
        check_contamination(value)


def test_score_on_an_array_run_with_normal_classes(tmp_path, capsys):
    images, labels = synthetic_images(400, seed=3)
    np.savez(tmp_path / "shapes.npz", images=images, labels=labels)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "shapes.npz"), "--classes", "3", "--epochs", "20",
                 "--batch-size", "32", "--out", str(run), "--no-report", "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["classes"] == "3"
    capsys.readouterr()
    assert main(["score", str(run), "--normal", "3", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["n_images"] == 40 and 0.5 < result["auroc"] <= 1.0
    rows = (run / "scores-test.csv").read_text().splitlines()
    assert rows[0] == "index,label,score,is_anomaly,mse,feature_error,feature_distance,density" and len(rows) == 41
    scores = [float(row.split(",")[2]) for row in rows[1:]]
    assert scores == sorted(scores, reverse=True)
    assert (run / "scores-test.png").is_file() and load_detector(run).contamination == 0.1
    for bad, words in ((["--contamination", "0.7"], "contamination"), (["--normal", "7"], "--normal"),
                       (["--normal", "0,1,2,3"], "all normal")):
        assert main(["score", str(run), *bad, "--quiet"]) == 2
        assert words in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "shapes.npz"), "--classes", "9", "--out", str(tmp_path / "r2"),
                 "--quiet"]) == 2
    assert "--classes names '9'" in capsys.readouterr().err


def test_score_new_images_in_a_folder(tmp_path, capsys):
    from PIL import Image

    np.save(tmp_path / "shapes.npy", synthetic_images(300, seed=4)[0])
    trained_run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "shapes.npy"), "--epochs", "2", "--batch-size", "32",
                 "--out", str(trained_run), "--no-report", "--quiet"]) == 0
    images, _ = synthetic_images(6, seed=9)
    folder = tmp_path / "new"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).resize((40, 40)).save(folder / f"{i}.png")  # another size: resized to the run's
    Image.fromarray(np.stack([images[0]] * 3, -1)).save(folder / "0.png")  # colour: converted to the run's grey
    (folder / "broken.png").write_text("no")
    out = tmp_path / "scores.csv"
    assert main(["score", str(trained_run), "--data", str(folder), "--data-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "6 images (all)" in captured.out and "1 files skipped" in captured.err
    assert "5 of 6 images are not 28x28 (the size asked for); they are resized" in captured.err
    assert "1 of 6 images have colour; they are converted to grey" in captured.err
    assert out.read_text().splitlines()[0] == "index,path,score,is_anomaly,mse,feature_error,feature_distance,density"


@pytest.mark.network
@pytest.mark.slow
def test_the_default_score_sees_simple_images_the_error_misses(real_mnist, tmp_path):
    """Reconstruction error's blind spot, on held-out classes: trained on 8s only, the 1s (a thin
    stroke) reconstruct better than the 8s themselves, so the error ranks them as normal; the
    default score, which also asks how far each image's features lie from the 8s', flags them."""
    from aelab import RunConfig, train
    from aelab.config import DataConfig, train_config_for
    from aelab.data.sets import load_splits

    data = DataConfig(classes="8", data_dir=str(real_mnist))
    splits = load_splits(data)
    result = train(RunConfig(data=data, train=train_config_for("fast", epochs=6)), tmp_path / "eights",
                   report=False, data=splits)
    labels = splits["test"].labels.numpy()
    pair = np.isin(labels, [8, 1])
    auroc = {}
    for method in ("mse", "combined"):
        detector = fit_detector(result.model, splits["train"].images, splits["val"].images, method)
        scores = score_images(result.model, detector, splits["test"].images).score
        auroc[method] = roc_auc_score(labels[pair] == 1, scores[pair])
    assert auroc["mse"] < 0.4, auroc  # the blind spot: 1s look more normal than 8s
    assert auroc["combined"] > 0.75, auroc
