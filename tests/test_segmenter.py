"""Segmenter: padding and cropping, loading a run directory or a bare .keras file, thresholds."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from keras_pixelembed import run_dir
from keras_pixelembed.bundled import default_model_path
from keras_pixelembed.evaluation import tune_thresholds, tuning_grid
from keras_pixelembed.segmenter import Segmenter
from tests.helpers import tiny_model_dir


@pytest.fixture(scope="module", params=["spatial", "embedding"])
def model_dir(request, tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp(request.param), head=request.param)


def test_load_reads_head_thresholds_and_multiple(model_dir):
    segmenter = Segmenter.load(model_dir)
    with open(os.path.join(model_dir, "thresholds.json")) as f:
        thresholds = json.load(f)
    assert segmenter.head == run_dir.read_json(os.path.join(model_dir, "config.json"))["head"]
    assert segmenter.multiple == 4 and {**segmenter.thresholds, **thresholds} == segmenter.thresholds


@pytest.mark.parametrize("h, w", [(1, 1), (5, 7), (16, 16), (17, 31)])
def test_any_size_is_padded_and_cropped_back(model_dir, h, w):
    segmenter = Segmenter.load(model_dir)
    image = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    out = segmenter.predict(image)
    assert out.shape[:2] == (h, w)
    labels = segmenter.segment(image)
    assert labels.shape == (h, w) and labels.dtype == np.int32
    batch = segmenter.predict(np.stack([image, image]))
    np.testing.assert_allclose(batch[0], out, rtol=1e-5, atol=1e-6)


def test_a_bare_keras_file_loads_with_default_thresholds(model_dir):
    segmenter = Segmenter.load(os.path.join(model_dir, "model.keras"))
    assert segmenter.thresholds == Segmenter(segmenter.model, head=segmenter.head).thresholds


def test_bad_inputs_name_what_is_wrong(model_dir, tmp_path):
    segmenter = Segmenter.load(model_dir)
    with pytest.raises(ValueError, match="shape"):
        segmenter.predict(np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        segmenter.predict(np.zeros((4,), np.float32))
    with pytest.raises(ValueError, match="head"):
        Segmenter(segmenter.model, head="nope")
    with pytest.raises(FileNotFoundError, match="model.keras"):
        Segmenter.load(str(tmp_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.keras").write_text("not a model")
    with pytest.raises(ValueError, match="Cannot load the model"):
        Segmenter.load(str(broken))


def test_overrides_change_the_clustering_and_tuning_picks_from_the_grid(model_dir):
    segmenter = Segmenter.load(model_dir)
    images = np.random.default_rng(1).random((2, 16, 16, 3)).astype(np.float32)
    outputs = [segmenter.predict(im) for im in images]
    gts = [np.ones((16, 16), np.int32)] * 2
    best, score = tune_thresholds(segmenter, outputs, gts)
    assert best in tuning_grid(segmenter.head) and 0.0 <= score <= 1.0
    if segmenter.head == "spatial":
        assert np.all(segmenter.segment(images[0], seed_threshold=1.0, fg_threshold=1.0) == 0)


def _mosaic(n, size=96, seed=0):
    """An n x n mosaic of synthetic scenes: many objects at the bundled model's scale."""
    from keras_pixelembed import data

    source = data.synthetic(n * n, (size, size), seed=seed)
    return np.concatenate([np.concatenate([source.load(r * n + c)[0] for c in range(n)], 1) for r in range(n)], 0)


def test_tiled_and_whole_agree_and_objects_across_borders_get_one_label():
    from keras_pixelembed.bundled import default_model_path
    from keras_pixelembed.metrics import adjusted_rand_index

    image = _mosaic(3)[:280, :250]
    whole = Segmenter.load(default_model_path(), tile_size=None)
    tiled = Segmenter.load(default_model_path(), tile_size=128, tile_overlap=32)  # cells of 64 pixels
    want, got = whole.segment(image), tiled.segment(image)
    assert np.abs(tiled.predict(image) - whole.predict(image)).mean() < 0.1  # context cut at 32 pixels
    assert adjusted_rand_index(got, want) >= 0.98
    rows, cols = np.nonzero(want > 0)
    crossing = [k for k in np.unique(want[want > 0]) if len(np.unique(rows[want[rows, cols] == k] // 64)) > 1]
    assert crossing  # objects cut by a cell border...
    for k in crossing:  # ...have one label in the tiled result (a few edge pixels may fall to background)
        labels = got[want == k]
        assert len(np.unique(labels[labels > 0])) == 1 and np.mean(labels > 0) >= 0.9
    # the tiled segment clusters band by band of tiles (the whole output never exists): exactly
    # the clustering of the stitched output
    np.testing.assert_array_equal(got, tiled.cluster(tiled.predict_tiled(image)))
    np.testing.assert_array_equal(
        tiled.segment(image, seed_threshold=0.8), tiled.cluster(tiled.predict_tiled(image), seed_threshold=0.8)
    )


def test_clustering_from_bands_is_the_whole_map_clustering_and_checks_the_bands():
    from keras_pixelembed.cluster.spatial import instances_from_bands, spatial_embedding_instances

    segmenter = Segmenter.load(default_model_path(), tile_size=None)
    out = segmenter.predict(_mosaic(2)[:190, :170])
    assert out.shape[:2] == (190, 170)
    for rows in (1, 7, 64, 190):
        bands = ((top, out[top : top + rows]) for top in range(0, 190, rows))
        np.testing.assert_array_equal(instances_from_bands(bands, (190, 170)), spatial_embedding_instances(out))
    with pytest.raises(ValueError, match="row 0 was next"):
        instances_from_bands([(10, out[10:])], (190, 170))
    with pytest.raises(ValueError, match="covering 190 rows"):
        instances_from_bands([(0, out[:100])], (190, 170))
    bad = out.copy()
    bad[150, 3, 0] = np.nan
    with pytest.raises(ValueError, match="pred"):
        instances_from_bands([(0, bad)], (190, 170))


def test_tile_arguments_are_checked(model_dir):
    with pytest.raises(ValueError, match="tile_size"):
        Segmenter.load(model_dir, tile_size=10, tile_overlap=8)
    with pytest.raises(ValueError, match="tile_overlap"):
        Segmenter.load(model_dir, tile_overlap=-1)


def test_more_instances_than_the_bound_fall_back_to_numpy(caplog):
    import logging

    from keras_pixelembed.bundled import default_model_path

    image = _mosaic(2)
    small = Segmenter.load(default_model_path(), max_instances=2)
    with caplog.at_level(logging.WARNING, logger="keras_pixelembed"):
        labels = small.segment(image)
    assert "max_instances=2" in caplog.text
    np.testing.assert_array_equal(labels, small.cluster(small.predict(image)))
    assert labels.max() > 2
    bounded = small.segmentation_model().predict_on_batch(image[None])
    assert np.asarray(bounded["labels"]).max() == 2 and np.asarray(bounded["dropped_seeds"])[0] > 0


def test_grey_images_are_taken_as_three_equal_channels(model_dir):
    segmenter = Segmenter.load(model_dir)
    grey = np.random.default_rng(1).random((9, 13)).astype(np.float32)
    want = segmenter.predict(np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_allclose(segmenter.predict(grey), want, atol=1e-6)
    np.testing.assert_allclose(segmenter.predict(grey[..., None]), want, atol=1e-6)
    assert segmenter.segment(grey).shape == (9, 13)
