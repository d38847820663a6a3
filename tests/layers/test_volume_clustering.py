"""The graph layers on volumes: `SeedClustering` of a 3D head output gives exactly the numpy
reference's labels (`cluster.spatial_embedding_instances`), `EdgePad` / `CropLike` /
`PercentileNormalize` / `BallClustering` take 5-D input."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_pixelembed.cluster import spatial_embedding_instances
from keras_pixelembed.data import synthetic_volume
from keras_pixelembed.layers.clustering import BallClustering, CropLike, EdgePad, PercentileNormalize, SeedClustering
from tests.cluster.test_spatial import _perfect_volume
from tests.helpers import assert_config_round_trip

PIXEL = 1.0 / 256
KW = dict(pixel_size=PIXEL, min_size=5, seed_threshold=0.7, fg_threshold=0.5)


def _noisy_volume(seed: int, shape=(10, 24, 28), z_spacing=2.0, n_sigma=1):
    """A volume's head output near a perfect one, noisy enough that proposals overlap and some
    are refused (the greedy order matters)."""
    rng = np.random.default_rng(seed)
    _, labels = synthetic_volume(rng, shape, z_spacing=z_spacing)
    pred = _perfect_volume(labels, pixel_size=PIXEL, z_spacing=z_spacing)
    if n_sigma == 3:
        pred = np.concatenate([pred[..., :3], np.repeat(pred[..., 3:4], 3, -1), pred[..., 4:]], -1)
        pred[..., 3:6] += rng.normal(0, 0.2, (*shape, 3))
    scale = np.full(pred.shape[-1], 0.3)
    scale[:3] = 0.01  # offsets: about 2.5 voxels
    scale[-1] = 2.0  # seed logits
    return (pred + rng.normal(0, 1, pred.shape) * scale).astype(np.float32)


@pytest.mark.parametrize("n_sigma", [1, 3])
def test_seed_clustering_of_volumes_equals_the_numpy_reference(n_sigma):
    preds = np.stack([_noisy_volume(1, n_sigma=n_sigma), _noisy_volume(2, n_sigma=n_sigma)])
    layer = SeedClustering(z_spacing=2.0, **KW)
    labels, dropped = (ops.convert_to_numpy(x) for x in layer(preds))
    assert labels.shape == preds.shape[:4] and labels.dtype == np.int32
    for pred, got in zip(preds, labels):
        want = spatial_embedding_instances(pred, z_spacing=2.0, **KW)
        assert want.max() >= 3
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dropped, [0, 0])
    # the spacing is used: another one gives other labels
    other = ops.convert_to_numpy(SeedClustering(z_spacing=1.0, **KW)(preds)[0])
    assert not np.array_equal(other, labels)


def test_volume_bound_never_mislabels_and_counts_what_it_left():
    pred = _noisy_volume(3)
    want = spatial_embedding_instances(pred, z_spacing=2.0, **KW)
    labels, dropped = SeedClustering(z_spacing=2.0, max_instances=2, **KW)(pred[None])
    labels, dropped = ops.convert_to_numpy(labels)[0], int(ops.convert_to_numpy(dropped)[0])
    np.testing.assert_array_equal(labels, spatial_embedding_instances(pred, z_spacing=2.0, max_instances=2, **KW))
    assert set(np.unique(labels)) <= {0, 1, 2} and dropped > 0
    assert np.all((labels == 0) | (labels == want) | (want > 2))


def test_volume_without_seeds_one_voxel_and_under_jit():
    empty = np.zeros((1, 3, 4, 5, 5), np.float32)
    empty[..., 4] = -5.0
    labels, dropped = SeedClustering(z_spacing=2.0)(empty)
    assert ops.convert_to_numpy(labels).shape == (1, 3, 4, 5) and not ops.convert_to_numpy(labels).any()
    assert int(ops.convert_to_numpy(dropped)[0]) == 0
    one = np.zeros((1, 1, 1, 1, 5), np.float32)
    one[..., 4] = 6.0
    labels, _ = SeedClustering(min_size=0)(one)
    np.testing.assert_array_equal(ops.convert_to_numpy(labels), [[[[1]]]])
    inputs = keras.Input((None, None, None, 5))
    model = keras.Model(inputs, SeedClustering(z_spacing=2.0, **KW)(inputs)[0])
    pred = _noisy_volume(4)
    np.testing.assert_array_equal(
        np.asarray(model.predict_on_batch(pred[None]))[0], spatial_embedding_instances(pred, z_spacing=2.0, **KW)
    )
    with pytest.raises(ValueError, match="n_sigma"):
        SeedClustering()(np.zeros((1, 2, 2, 2, 6), np.float32))
    assert_config_round_trip(SeedClustering(z_spacing=3.0), {"z_spacing": 3.0})


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 9, 3)])
def test_edge_pad_crop_and_normalize_volumes(shape):
    rng = np.random.default_rng(0)
    x = rng.random((2, *shape, 2)).astype(np.float32)
    padded = ops.convert_to_numpy(EdgePad(4)(x))
    assert padded.shape == (2, *(-(-s // 4) * 4 for s in shape), 2)
    np.testing.assert_array_equal(padded[:, : shape[0], : shape[1], : shape[2]], x)
    np.testing.assert_array_equal(padded[:, -1, -1, -1], x[:, -1, -1, -1])  # the edge repeated
    np.testing.assert_array_equal(ops.convert_to_numpy(CropLike()(padded, x)), x)
    assert EdgePad(4).compute_output_shape((None, 5, None, 3, 2)) == (None, 8, None, 4, 2)
    normalized = ops.convert_to_numpy(PercentileNormalize((0.0, 100.0))(x))
    for v, n in zip(x, normalized):
        np.testing.assert_allclose(n, (v - v.min()) / (v.max() - v.min()), atol=1e-5)


def test_ball_clustering_of_a_volume_keeps_its_shape():
    z = np.zeros((1, 2, 3, 4, 2), np.float32)
    z[:, 1] = 5.0
    labels, dropped = BallClustering(0.5)(z)
    labels = ops.convert_to_numpy(labels)
    assert labels.shape == (1, 2, 3, 4) and len(np.unique(labels)) == 2
    assert int(ops.convert_to_numpy(dropped)[0]) == 0
