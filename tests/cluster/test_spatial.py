"""Seed clustering of spatial embeddings (`spatial_embedding_instances`)."""

from __future__ import annotations

import numpy as np
import pytest

from keras_pixelembed.cluster import spatial_embedding_instances
from keras_pixelembed.metrics import sbd


def _perfect_prediction(labels, pixel_size=1.0 / 1024, sigma=1.0):
    """Raw head output whose embeddings sit exactly at each object's mean position."""
    h, w = labels.shape
    rows, cols = np.meshgrid(np.arange(h) * pixel_size, np.arange(w) * pixel_size, indexing="ij")
    pos = np.stack([rows, cols], -1)
    pred = np.zeros((h, w, 4), np.float32)
    pred[..., 2] = sigma
    pred[..., 3] = -6.0
    for k in np.unique(labels[labels > 0]):
        m = labels == k
        pred[m, :2] = np.arctanh(pos[m].mean(0) - pos[m])
        pred[m, 3] = 6.0 - 0.01 * np.hypot(*(pos[m] - pos[m].mean(0)).T) / pixel_size
    return pred


def test_clustering_recovers_objects_from_a_perfect_prediction():
    labels = np.zeros((64, 64), np.int32)
    labels[3:15, 4:20], labels[30:50, 10:25], labels[40:60, 40:62] = 1, 2, 3
    labels[20:24, 40:44] = 4
    got = spatial_embedding_instances(_perfect_prediction(labels))
    assert got.dtype == np.int32 and got.shape == labels.shape
    assert sbd(got, labels) == 1.0
    assert set(np.unique(got)) == {0, 1, 2, 3, 4}
    # min_size drops the 16-pixel object; thresholds above every seed give nothing
    assert len(np.unique(spatial_embedding_instances(_perfect_prediction(labels), min_size=20))) == 4
    assert np.all(spatial_embedding_instances(_perfect_prediction(labels), seed_threshold=1.0) == 0)


def test_clustering_without_foreground_and_bad_inputs():
    pred = np.zeros((8, 8, 4), np.float32)
    pred[..., 3] = -5
    assert np.all(spatial_embedding_instances(pred) == 0)
    with pytest.raises(ValueError, match=r"pred.*shape"):
        spatial_embedding_instances(np.zeros((1, 8, 8, 4)))
    with pytest.raises(ValueError, match="NaN"):
        spatial_embedding_instances(np.full((8, 8, 4), np.nan))
    with pytest.raises(ValueError, match="seed_threshold"):
        spatial_embedding_instances(pred, seed_threshold=2.0)


def _perfect_volume(labels, pixel_size=1.0 / 256, z_spacing=1.0, sigma=1.0):
    """A volume's raw head output `(d, h, w, 5)` whose embeddings sit at each object's mean position."""
    k, i, j = np.meshgrid(*(np.arange(n) for n in labels.shape), indexing="ij")
    pos = np.stack([k * z_spacing, i, j], -1) * pixel_size
    pred = np.zeros((*labels.shape, 5), np.float32)
    pred[..., 3] = sigma
    pred[..., 4] = -6.0
    for obj in np.unique(labels[labels > 0]):
        m = labels == obj
        pred[m, :3] = np.arctanh(pos[m].mean(0) - pos[m])
        pred[m, 4] = 6.0 - 0.01 * np.linalg.norm(pos[m] - pos[m].mean(0), axis=-1) / pixel_size
    return pred


def test_clustering_recovers_objects_of_a_volume_with_anisotropy_and_bands():
    from keras_pixelembed.cluster import instances_from_bands

    labels = np.zeros((6, 20, 24), np.int32)
    labels[0:3, 2:8, 3:10], labels[2:6, 10:18, 4:12], labels[1:5, 3:15, 15:22] = 1, 2, 3
    labels[5, 0, 23] = 4  # one voxel: dropped by min_size
    for z_spacing in (1.0, 3.0):
        pred = _perfect_volume(labels, z_spacing=z_spacing)
        got = spatial_embedding_instances(pred, z_spacing=z_spacing, min_size=5, pixel_size=1 / 256)
        assert got.dtype == np.int32 and got.shape == labels.shape
        assert sbd(got, np.where(labels == 4, 0, labels)) == 1.0
        assert set(np.unique(got)) == {0, 1, 2, 3}
        bands = ((top, pred[top : top + 2]) for top in range(0, 6, 2))
        np.testing.assert_array_equal(
            instances_from_bands(bands, labels.shape, z_spacing=z_spacing, min_size=5, pixel_size=1 / 256), got
        )
    # the positions of a wrong spacing put the objects' voxels out of their centers' reach
    wrong = spatial_embedding_instances(_perfect_volume(labels, z_spacing=3.0), min_size=5, pixel_size=1 / 256)
    assert sbd(wrong, np.where(labels == 4, 0, labels)) < 1.0


def test_volume_clustering_bad_inputs():
    with pytest.raises(ValueError, match="batch axis"):
        spatial_embedding_instances(np.zeros((1, 8, 8, 4), np.float32))
    with pytest.raises(ValueError, match="n_sigma"):
        spatial_embedding_instances(np.zeros((2, 8, 8, 6), np.float32))  # 3 + 2 sigmas + 1
    pred = np.zeros((4, 4, 4, 5), np.float32)
    pred[..., 4] = -5
    assert np.all(spatial_embedding_instances(pred) == 0)
    from keras_pixelembed.cluster import instances_from_bands

    with pytest.raises(ValueError, match="slices"):
        instances_from_bands([(0, pred[:2]), (3, pred[2:])], (4, 4, 4))
