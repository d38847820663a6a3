"""In-graph seed clustering, edge padding and cropping against the numpy reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_pixelembed import data
from keras_pixelembed.bundled import BUNDLED_DIR, default_model_path
from keras_pixelembed.cluster import greedy_ball, spatial_embedding_instances
from keras_pixelembed.layers.clustering import (
    BallClustering,
    CropLike,
    DihedralBatch,
    DihedralMean,
    EdgePad,
    SeedClustering,
)
from keras_pixelembed.metrics import adjusted_rand_index
from keras_pixelembed.segmenter import Segmenter
from tests.helpers import BACKEND, assert_config_round_trip


@pytest.fixture(scope="module")
def bundled():
    segmenter = Segmenter.load(default_model_path())
    source = data.synthetic(32, (96, 96), seed=777)
    outputs = np.stack([segmenter.predict(source.load(i)[0]) for i in range(len(source))])
    return segmenter, outputs


def _layer(segmenter, **kwargs):
    args = {**segmenter.thresholds, "pixel_size": segmenter.pixel_size, "sigma_scale": segmenter.sigma_scale, **kwargs}
    return SeedClustering(**args)


def _numpy(labels):
    return tuple(ops.convert_to_numpy(x) for x in labels)


def test_layer_agrees_with_the_numpy_reference_on_the_bundled_model(bundled):
    segmenter, outputs = bundled
    labels, dropped = _numpy(_layer(segmenter)(outputs))
    assert labels.dtype == np.int32 and labels.shape == outputs.shape[:3] and np.all(dropped == 0)
    for got, out in zip(labels, outputs):
        want = segmenter.cluster(out)
        assert adjusted_rand_index(got, want) >= 0.99
        assert got.max() == want.max()


def test_under_jit_in_a_model(bundled):
    segmenter, outputs = bundled
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, _layer(segmenter)(inputs)[0])
    model.compile(jit_compile=BACKEND != "torch")
    got = model.predict(outputs[:4], verbose=0)
    for g, out in zip(got, outputs[:4]):
        assert adjusted_rand_index(g, segmenter.cluster(out)) >= 0.99


@pytest.mark.parametrize(
    "window_blocks, small, size",
    [(1, 16, (90, 83)), (3, 16, (90, 83)), (12, 16, (90, 83)), (64, 16, (40, 37)), (6, 2, (90, 83))],
)
def test_windows_of_blocks_give_exactly_the_reference_labels(bundled, monkeypatch, window_blocks, small, size):
    """Each step visits only the blocks its center can reach when they fit in the first small
    window, else in the window, else every block: every branch (windows of 2 and 6 blocks on
    36-block crops use all three), on crops whose sides are not multiples of the block, and an
    image with fewer blocks than the window (decided at run time in a graph of unknown size)."""
    from keras_pixelembed.layers import clustering

    monkeypatch.setattr(clustering, "SMALL_WINDOW", small)
    segmenter, outputs = bundled
    crops = outputs[:6, : size[0], : size[1]]
    layer = _layer(segmenter, window_blocks=window_blocks)
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, layer(inputs)[0])
    model.compile(jit_compile=BACKEND != "torch")
    for got in (_numpy(layer(crops))[0], model.predict(crops, verbose=0)):
        for g, out in zip(got, crops):
            np.testing.assert_array_equal(g, segmenter.cluster(out))


def test_more_seeds_than_the_bound_never_mislabel_a_pixel(bundled):
    segmenter, outputs = bundled
    labels, dropped = _numpy(_layer(segmenter, max_instances=2)(outputs[:8]))
    for got, out, n_dropped in zip(labels, outputs[:8], dropped):
        bounded, want = segmenter.cluster(out, max_instances=2), segmenter.cluster(out)
        assert adjusted_rand_index(got, bounded) >= 0.99 and got.max() == min(2, want.max())
        assert np.all(want[got > 0] > 0)  # a labelled pixel is in an instance of the unbounded run too
        # an image with more instances than the bound always says so; the converse is not
        # promised: seed pixels left unvisited may only have made proposals under min_size
        assert n_dropped > 0 or want.max() <= 2
    assert any(np.max(segmenter.cluster(out)) > 2 for out in outputs[:8]) and dropped.max() > 0


def _perfect_disc():
    """One 5 x 7 image whose every pixel points at its centre, with strong seeds."""
    pred = np.zeros((1, 5, 7, 4), np.float32)
    rows, cols = np.mgrid[:5, :7] / 1024.0
    pred[0, ..., 0], pred[0, ..., 1] = np.arctanh(rows.mean() - rows), np.arctanh(cols.mean() - cols)
    pred[0, ..., 3] = 6.0
    return pred


def test_no_seed_one_pixel_and_tiny_images():
    pred = np.zeros((2, 5, 7, 4), np.float32)
    pred[..., 3] = -6.0  # no seed
    labels, dropped = _numpy(SeedClustering()(pred))
    assert np.all(labels == 0) and np.all(dropped == 0)
    mixed = np.concatenate([pred[:1], _perfect_disc()], 0)  # an image without seeds beside one with
    labels, dropped = _numpy(SeedClustering()(mixed))
    assert np.all(labels[0] == 0) and labels[1].max() == 1 and np.all(dropped == 0)
    one = np.zeros((1, 1, 1, 4), np.float32)
    one[..., 3] = 6.0  # a 1 x 1 image whose pixel is a seed: one pixel is not more than min_size
    np.testing.assert_array_equal(_numpy(SeedClustering()(one))[0], spatial_embedding_instances(one[0])[None])
    np.testing.assert_array_equal(_numpy(SeedClustering(min_size=0)(one))[0], [[[1]]])


def test_bad_arguments_and_config():
    for kwargs, name in (
        ({"seed_threshold": 2.0}, "seed_threshold"),
        ({"max_instances": 0}, "max_instances"),
        ({"min_size": -1}, "min_size"),
        ({"pixel_size": 0.0}, "pixel_size"),
    ):
        with pytest.raises(ValueError, match=name):
            SeedClustering(**kwargs)
    args = {
        "seed_threshold": 0.7,
        "fg_threshold": 0.4,
        "min_size": 3,
        "pixel_size": 0.002,
        "sigma_scale": 8.0,
        "max_instances": 300,
    }
    assert_config_round_trip(SeedClustering(**args), args)
    assert_config_round_trip(EdgePad(multiple=16), {"multiple": 16})
    assert_config_round_trip(DihedralBatch(transpose=True), {"transpose": True})
    assert_config_round_trip(DihedralMean(n_sigma=2), {"n_sigma": 2})


def test_dihedral_batches_hold_the_four_flips_of_the_image_and_of_its_transpose():
    x = np.random.default_rng(1).random((2, 5, 7, 3)).astype(np.float32)
    plain, transposed = (ops.convert_to_numpy(DihedralBatch(t)(x)) for t in (False, True))
    assert plain.shape == (8, 5, 7, 3) and transposed.shape == (8, 7, 5, 3)
    flips = [x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1]]  # DIHEDRAL order: rows outer, columns inner
    np.testing.assert_array_equal(plain, np.concatenate(flips))
    xt = np.swapaxes(x, 1, 2)
    np.testing.assert_array_equal(transposed, np.concatenate([xt, xt[:, :, ::-1], xt[:, ::-1], xt[:, ::-1, ::-1]]))


@pytest.mark.parametrize("h, w", [(1, 1), (7, 8), (9, 13), (16, 16)])
def test_edge_pad_and_crop_undo_each_other(h, w):
    x = np.random.default_rng(0).random((2, h, w, 3)).astype(np.float32)
    padded = ops.convert_to_numpy(EdgePad(8)(x))
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    np.testing.assert_array_equal(padded, np.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge"))
    np.testing.assert_array_equal(ops.convert_to_numpy(CropLike()(padded, x)), x)


@pytest.fixture(scope="module")
def bundled_embedding():
    segmenter = Segmenter.load(f"{BUNDLED_DIR}/embedding_unet")
    source = data.synthetic(32, (64, 64), seed=778)
    outputs = np.stack([segmenter.predict(source.load(i)[0]) for i in range(len(source))])
    return segmenter.thresholds["radius"], outputs


def _balls(out, radius, **kwargs):
    return greedy_ball(out, radius, start="spread", connected=False, min_size=0, **kwargs)


def test_ball_layer_agrees_with_the_numpy_reference(bundled_embedding):
    radius, outputs = bundled_embedding
    labels, dropped = _numpy(BallClustering(radius)(outputs))
    assert labels.dtype == np.int32 and np.all(dropped == 0) and np.all(labels >= 1)
    for got, out in zip(labels, outputs):
        assert adjusted_rand_index(got, _balls(out, radius)) >= 0.99


def test_ball_layer_bound_and_identical_embeddings(bundled_embedding):
    radius, outputs = bundled_embedding
    labels, dropped = _numpy(BallClustering(radius, max_instances=3)(outputs[:4]))
    for got, out, n in zip(labels, outputs[:4], dropped):
        want = _balls(out, radius, max_instances=3)
        assert adjusted_rand_index(got, want) >= 0.99 and n == np.sum(want == 0) and got.max() <= 3
    same = np.ones((1, 4, 5, 3), np.float32)
    np.testing.assert_array_equal(_numpy(BallClustering(0.1)(same))[0], np.ones((1, 4, 5)))
    assert_config_round_trip(BallClustering(0.7, max_instances=9), {"radius": 0.7, "max_instances": 9})
    with pytest.raises(ValueError, match="radius"):
        BallClustering(0.0)
