import numpy as np
import pytest
import torch

from aelab import AelabError, load_run
from aelab import latent
from aelab.latent import latent_plane, stratified_subset
from conftest import make_splits


def test_embedding_codes_equal_encoding_with_the_saved_weights(trained_run):
    run = load_run(trained_run)
    test = make_splits()["test"]
    embedding = latent.embed(run, test)
    with torch.no_grad():
        expected = run.model.encoder(test.images.float() / 255).numpy()
    assert embedding.codes.shape == (len(test), 4)
    np.testing.assert_allclose(embedding.codes, expected, atol=1e-5)
    assert list(embedding.columns()) == ["index", "label", "z0", "z1", "z2", "z3"]
    assert np.array_equal(embedding.label, test.labels.numpy())


def test_table_csv(tmp_path, trained_run):
    run = load_run(trained_run)
    embedding = latent.embed(run, make_splits()["test"])
    path = latent.write_table(embedding.columns(), tmp_path / "codes.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "index,label,z0,z1,z2,z3" and len(lines) == 65
    row = lines[1].split(",")
    assert int(row[0]) == 0 and float(row[2]) == pytest.approx(float(embedding.codes[0, 0]), abs=1e-6)


def test_parquet_or_a_clear_message(tmp_path, trained_run):
    run = load_run(trained_run)
    columns = latent.embed(run, make_splits()["test"]).columns()
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(AelabError, match="aelab\\[parquet\\]"):
            latent.write_table(columns, tmp_path / "codes.parquet")
        return
    table = pq.read_table(latent.write_table(columns, tmp_path / "codes.parquet"))
    assert table.column_names[:3] == ["index", "label", "z0"] and table.num_rows == 64


def test_stratified_subset_keeps_label_proportions():
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])
    chosen = stratified_subset(labels, 100, seed=0)
    assert len(chosen) == 100 and len(set(chosen)) == 100
    assert np.bincount(labels[chosen]).tolist() == [40, 30, 20, 10]


@pytest.mark.parametrize("method", ["scatter", "pca", "tsne"])
def test_projections_are_2d(method, trained_run):
    codes = latent.embed(load_run(trained_run), make_splits()["test"]).codes
    xy, names = latent.project(codes, method, perplexity=10)
    assert xy.shape == (64, 2) and np.isfinite(xy).all() and len(names) == 2


def test_tsne_separates_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 60)
    codes = rng.normal(0, 0.3, (300, 4)) + np.eye(5, 4)[labels] * 4
    xy, _ = latent.project(codes, "tsne", perplexity=20)
    assert neighbour_agreement(xy, labels) > 0.95


def neighbour_agreement(xy, labels, k=10):
    distances = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1)[:, :k]
    return float((labels[neighbours] == labels[:, None]).mean())


def test_plane_ranges_follow_the_codes():
    rng = np.random.default_rng(0)
    codes = rng.normal(0, 1, (2000, 4)) * np.array([5, 1, 0.1, 0.1]) + 10
    plane = latent_plane(codes)
    assert abs(abs(plane.axis_a[0]) - 1) < 0.01  # the first principal direction
    assert plane.range_a[1] - plane.range_a[0] == pytest.approx(2 * 2.326 * 5, rel=0.1)  # 1st..99th percentile
    points = plane.points(3)
    assert points.shape == (9, 4)
    two = latent_plane(codes, dims=(0, 1))
    assert two.names == ("z0", "z1") and two.range_a[0] > 10 - 5 * 3


def test_generation_shapes(trained_run):
    run = load_run(trained_run)
    splits = make_splits()
    train_codes = latent.encode(run.model, splits["train"].images)
    assert latent.grid_images(run, latent.latent_plane(train_codes), 5).shape == (25, 1, 28, 28)
    assert latent.sample_images(run, train_codes, 7).shape == (7, 1, 28, 28)
    line = latent.interpolate_images(run, splits["test"], 0, 1, steps=6)
    assert line.shape == (6, 1, 28, 28)
    with torch.no_grad():
        ends = run.model(splits["test"].images[[0, 1]].float() / 255)
    torch.testing.assert_close(line[[0, -1]], ends, atol=1e-5, rtol=1e-4)
    with pytest.raises(AelabError, match="image 999 does not exist"):
        latent.interpolate_images(run, splits["test"], 0, 999)
