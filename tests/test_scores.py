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


def test_the_threshold_flags_the_contamination_share_of_validation_images(tmp_path, capsys):
    """For every method, `aelab score` fits the detector (its threshold in anomaly.json); scoring the
    validation images again then flags the contamination share of them (within one image), images
    of a class left out of training more often, and noise nearly always; the saved detector reads
    back to the same scores."""
    from aelab.data.sets import data_for_run, load_run_splits
    from aelab.run import load_run
    from aelab.scores import METHODS

    images, labels = synthetic_images(400, seed=3)
    np.savez(tmp_path / "shapes.npz", images=images, labels=labels)
    noise = np.random.default_rng(0).integers(128, 256, (50, 28, 28), dtype=np.uint8)  # bright noise: nothing like them
    np.save(tmp_path / "noise.npy", noise)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "shapes.npz"), "--classes", "0,1,2", "--epochs", "3",
                 "--batch-size", "32", "--out", str(run), "--no-report", "--quiet"]) == 0

    def score(*options) -> dict:
        capsys.readouterr()
        assert main(["score", str(run), "--contamination", "0.25", "--top", "1", "--json", "--quiet", *options]) == 0
        return json.loads(capsys.readouterr().out)

    for method in reversed([m for m in METHODS if m != "nelbo"]):  # combined last (nelbo: variational runs)
        val = score("--method", method, "--split", "val")
        saved = json.loads((run / "outputs" / f"anomaly-{method}-0.25.json").read_text())  # (RUN/anomaly.json: 0.1's)
        assert (saved["method"], saved["contamination"], saved["threshold"]) == (method, 0.25, val["threshold"])
        assert not (run / "anomaly.json").exists()
        assert abs(val["n_anomalies"] / val["n_images"] - 0.25) <= 1 / val["n_images"] + 1e-9, (method, val)
    score("--split", "test")  # every class: 3 is the one left out of training
    rows = [row.split(",") for row in (run / "outputs" / "scores-test.csv").read_text().splitlines()[1:]]
    flagged = {label: np.mean([int(row[3]) for row in rows if (row[1] == "3") == (label == "3")]) for label in ("3", "0-2")}
    assert flagged["3"] > 0.5 > flagged["0-2"], flagged
    noise = score("--data", str(tmp_path / "noise.npy"), "--data-dir", str(tmp_path / "cache"),
                  "--out", str(tmp_path / "noise.csv"))
    assert noise["n_anomalies"] == noise["n_images"] == 50, noise

    trained = load_run(run)  # the saved detector is the one fitted on the run's own images
    splits = load_run_splits(trained.config, data_for_run(trained.config), ("train", "val"))
    fresh = fit_detector(trained.model, splits["train"].images, splits["val"].images, contamination=0.25, seed=0)
    again = load_detector(run, trained.model, run / "outputs" / "anomaly-combined-0.25.json")
    assert again.threshold == fresh.threshold
    assert np.array_equal(score_images(trained.model, again, splits["val"].images).score,
                          score_images(trained.model, fresh, splits["val"].images).score)


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
    assert load_detector(run).version == 3 and (run / "anomaly.safetensors").is_file()


@pytest.mark.parametrize("value", [0, -0.1, 0.6, float("nan")])
def test_contamination_out_of_range_is_one_clear_error(value):
    with pytest.raises(AelabError, match=r"`contamination`.*\(0, 0.5\].*try 0.1"):
        check_contamination(value)


def _shapes_run(tmp_path, *options: str):
    """A run trained through the command line on 400 labelled shapes (tmp_path/shapes.npz) with
    ``options``, and its config.json."""
    images, labels = synthetic_images(400, seed=3)
    np.savez(tmp_path / "shapes.npz", images=images, labels=labels)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "shapes.npz"), *options, "--out", str(run), "--no-report",
                 "--quiet"]) == 0
    return run, json.loads((run / "config.json").read_text())


def test_score_on_an_array_run_with_normal_classes(tmp_path, capsys):
    run, config = _shapes_run(tmp_path, "--classes", "3", "--epochs", "20", "--batch-size", "32")
    assert config["data"]["classes"] == "3"
    capsys.readouterr()
    assert main(["score", str(run), "--normal", "3", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["n_images"] == 40 and 0.5 < result["auroc"] <= 1.0
    rows = (run / "outputs" / "scores-test.csv").read_text().splitlines()
    assert rows[0] == "index,label,score,is_anomaly,mse_raw,mse_standardised,feature_error_raw,feature_error_standardised,feature_distance_raw,feature_distance_standardised,density_raw" and len(rows) == 41
    scores = [float(row.split(",")[2]) for row in rows[1:]]
    assert scores == sorted(scores, reverse=True)
    assert (run / "outputs" / "scores-test.png").is_file() and load_detector(run).contamination == 0.1
    for bad, words in ((["--contamination", "0.7"], "contamination"), (["--normal", "7"], "--normal"),
                       (["--normal", "0,1,2,3"], "all normal")):
        assert main(["score", str(run), *bad, "--quiet"]) == 2
        assert words in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "shapes.npz"), "--classes", "9", "--out", str(tmp_path / "r2"),
                 "--quiet"]) == 2
    assert "--classes names '9'" in capsys.readouterr().err


def test_a_run_of_the_novelty_recipe_keeps_the_density_score_as_its_own(tmp_path, capsys):
    """--recipe novelty on your own images: its model settings (what is given wins), the training
    length from the images, and the code's density as the score the run keeps in RUN/anomaly.json
    (another method goes to outputs/)."""
    run, config = _shapes_run(tmp_path, "--classes", "0,1,2", "--recipe", "novelty", "--epochs", "2")
    assert (config["model"]["latent_dim"], config["model"]["arch"], config["train"]["recipe"]) == (16, "deep", "novelty")
    assert config["train"]["batch_size"] == 64  # (chosen from the images: the recipe sets the model and the score)
    capsys.readouterr()
    assert main(["score", str(run), "--normal", "0,1,2", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == load_detector(run).method == "density"
    assert main(["score", str(run), "--method", "combined", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "combined"
    assert load_detector(run).method == "density" and (run / "outputs" / "anomaly-combined-0.1.json").is_file()
    assert main(["train", "--data", str(tmp_path / "shapes.npz"), "--recipe", "novelty", "--latent-dim", "8",
                 "--epochs", "1", "--out", str(tmp_path / "r8"), "--no-report", "--quiet"]) == 0
    assert json.loads((tmp_path / "r8" / "config.json").read_text())["model"]["latent_dim"] == 8


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
    assert "6 images (all)" in captured.out and "flagged by construction" in captured.out and "1 files skipped" in captured.err
    assert "5 of 6 images are not 28x28 (height x width; the run's size); they are resized (stretch)" in captured.err
    assert "1 of 6 images have colour; they are converted to grey" in captured.err
    assert out.read_text().splitlines()[0] == ("index,path,score,is_anomaly,mse_raw,mse_standardised,feature_error_raw,"
                                                 "feature_error_standardised,feature_distance_raw,feature_distance_standardised,density_raw")


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


@pytest.mark.network
@pytest.mark.slow
def test_the_novelty_recipe_finds_a_held_out_digit_the_default_score_misses(real_mnist, tmp_path, capsys):
    """Leave-one-class-out: trained on every MNIST digit but 1, the 1s (thin strokes, rebuilt well)
    score as normal under the combined score; a run of --recipe novelty scores by the code's density
    under a mixture of 64 components unless told, and flags them."""
    from aelab.scores import DENSITY_COMPONENTS

    run, normal = tmp_path / "no-ones", "0,2,3,4,5,6,7,8,9"
    assert main(["train", "--data-dir", str(real_mnist), "--classes", normal, "--recipe", "novelty", "--epochs", "3",
                 "--out", str(run), "--no-report", "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["model"]["kind"], config["model"]["latent_dim"], config["train"]["recipe"]) == ("ae", 16, "novelty")
    capsys.readouterr()
    assert main(["score", str(run), "--normal", normal, "--json", "--quiet"]) == 0
    found = json.loads(capsys.readouterr().out)
    detector = load_detector(run)  # (the run's default: RUN/anomaly.json)
    assert found["method"] == detector.method == "density" and len(detector.mixture["means"]) == DENSITY_COMPONENTS
    assert main(["score", str(run), "--normal", normal, "--method", "combined", "--json", "--quiet"]) == 0
    combined = json.loads(capsys.readouterr().out)
    assert combined["auroc"] < 0.7 < 0.85 < found["auroc"], (combined["auroc"], found["auroc"])
    assert load_detector(run).method == "density"  # (another method is kept in outputs/)


# --- a detector belongs to the weights it was fitted on --------------------------------------------

def _scores_csv(run) -> list[str]:
    return (run / "outputs" / "scores-test.csv").read_text().splitlines()


def test_a_detector_is_fitted_anew_when_the_run_trains_on(tmp_path, capsys):
    """Score, extend the run by one epoch, score again: the scores are those of a fresh fit on the new
    weights (the saved detector of the old weights is neither kept nor reused)."""
    from aelab.data.sets import data_for_run, load_run_splits
    from aelab.run import load_run, weights_digest
    from aelab.scores import fit_detector, save_detector

    images, labels = synthetic_images(300, seed=4)
    np.savez(tmp_path / "shapes.npz", images=images, labels=labels)
    run = tmp_path / "run"
    common = ["--data", str(tmp_path / "shapes.npz"), "--batch-size", "32", "--no-report", "--quiet"]
    assert main(["train", *common, "--epochs", "2", "--out", str(run)]) == 0
    assert main(["score", str(run), "--quiet"]) == 0
    first = _scores_csv(run)
    old = load_detector(run)
    assert old.weights == weights_digest(load_run(run).model)

    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet", "--no-report"]) == 0
    assert not (run / "anomaly.json").exists() and not (run / "anomaly.safetensors").exists()
    assert main(["score", str(run), "--quiet"]) == 0
    again = _scores_csv(run)
    assert again != first
    trained = load_run(run)
    splits = load_run_splits(trained.config, data_for_run(trained.config), ("train", "val", "test"))
    fresh = fit_detector(trained.model, splits["train"].images, splits["val"].images, seed=trained.config.train.seed)
    assert load_detector(run, trained.model).threshold == fresh.threshold
    expected = np.sort(score_images(trained.model, fresh, splits["test"].images).score)[::-1]
    assert np.allclose([float(row.split(",")[2]) for row in again[1:]], expected, rtol=0, atol=1e-9)

    # a detector of other weights (say, scored while the run was still training) is fitted anew, with a note
    save_detector(old, run)
    capsys.readouterr()
    assert main(["score", str(run)]) == 0
    assert "fitted on other weights" in capsys.readouterr().err
    save_detector(old, run)
    assert load_detector(run) is not None and load_detector(run, trained.model) is None
    assert main(["score", str(run), "--quiet"]) == 0
    assert _scores_csv(run) == again

    # --overwrite replaces the run and its detector
    assert (run / "anomaly.json").exists()
    assert main(["train", *common, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert not (run / "anomaly.json").exists()


def test_a_reader_never_pairs_one_half_of_a_detector_with_the_other(trained_run, tmp_path, caplog):
    """anomaly.json records the digest of anomaly.safetensors: the arrays of another detector next to
    it (a writer caught between the two files) are not used."""
    import logging
    import shutil

    from aelab.run import load_run
    from aelab.scores import save_detector

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    model = load_run(run).model
    splits = make_splits()
    one = fit_detector(model, splits["train"].images, splits["val"].images, seed=0)
    other = fit_detector(model, splits["train"].images[:128], splits["val"].images, seed=1)
    save_detector(other, tmp_path)
    save_detector(one, run)
    assert load_detector(run, model) is not None
    shutil.copy(tmp_path / "anomaly.safetensors", run / "anomaly.safetensors")  # the other's arrays
    caplog.set_level(logging.INFO, logger="aelab")
    assert load_detector(run, model) is None
    assert "do not belong together" in caplog.text
