"""Clustering functions on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from keras_pixelembed.cluster import connected_components, embedding_slic, greedy_ball, mean_shift, merge_small
from keras_pixelembed.metrics import asa, sbd


def _blocks(h=40, w=48):
    labels = np.ones((h, w), np.int32)
    labels[5:20, 5:25] = 2
    labels[22:38, 10:30] = 3
    labels[8:30, 32:45] = 4
    return labels


def _embeddings(labels, channels=6, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels.max() + 1, channels)) * 3
    return (centres[labels] + rng.normal(0, noise, (*labels.shape, channels))).astype(np.float32)


@pytest.mark.parametrize("fn", [lambda z: greedy_ball(z, 0.5), lambda z: mean_shift(z, 0.5)])
def test_separated_clusters_are_recovered_exactly(fn):
    labels = _blocks()
    out = fn(_embeddings(labels))
    assert out.dtype == np.int32 and out.shape == labels.shape and out.min() >= 1
    assert sbd(out, labels) == 1.0


def test_identical_embeddings_give_one_segment():
    z = np.zeros((10, 12, 4), np.float32)
    assert np.all(greedy_ball(z, 0.3) == 1)
    assert np.all(mean_shift(z, 0.3) == 1)


def test_greedy_ball_splits_disconnected_pieces_and_merges_small_ones():
    labels = np.ones((20, 20), np.int32)
    labels[2:8, 2:8] = 2
    labels[12:18, 12:18] = 2  # same embedding, two places: two segments when connected=True
    labels[15, 3] = 2  # one pixel: merged into its surroundings
    z = _embeddings(labels, noise=0.01)
    out = greedy_ball(z, 0.5, min_size=4)
    assert len(np.unique(out)) == 3
    assert out[15, 3] == out[15, 2]
    assert len(np.unique(greedy_ball(z, 0.5, min_size=0, connected=False))) == 2


def test_embedding_slic_follows_the_embedding_boundaries():
    labels = _blocks()
    out = embedding_slic(_embeddings(labels, noise=0.01), n_segments=30, compactness=1.0)
    assert out.dtype == np.int32 and out.min() >= 1
    assert asa(out, labels) > 0.98
    assert 10 <= len(np.unique(out)) <= 60


def test_embedding_slic_on_color_is_comparable_to_skimage_slic():
    from skimage.color import rgb2lab
    from skimage.segmentation import slic

    from keras_pixelembed.data import masks_to_label_map, synthetic

    image, masks, _ = synthetic(1, (96, 96), seed=3).load(0)
    gt = masks_to_label_map(masks) + 1
    ours = embedding_slic(rgb2lab(image).astype(np.float32), n_segments=100, compactness=10.0)
    theirs = slic(image, n_segments=100, compactness=10.0, start_label=1)
    assert abs(len(np.unique(ours)) - len(np.unique(theirs))) <= 0.4 * len(np.unique(theirs))
    assert asa(ours, gt) > asa(theirs, gt) - 0.05


def test_connected_components_and_merge_small():
    labels = np.array([[1, 1, 0, 1], [0, 0, 0, 1], [2, 2, 0, 0]])
    cc = connected_components(labels)
    assert cc[0, 0] == cc[0, 1] and cc[0, 3] == cc[1, 3] and cc[0, 0] != cc[0, 3]
    assert np.all(cc[labels == 0] == 0) and len(np.unique(cc)) == 4
    grid = np.array([[1, 1, 1], [1, 2, 1], [3, 3, 3]])
    merged = merge_small(grid, 2)
    assert merged[1, 1] == merged[0, 0]  # the one-pixel segment shares 3 edges with 1, 1 with 3
    assert len(np.unique(merged)) == 2


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: greedy_ball(np.zeros((4, 4)), 0.5), "shape"),
        (lambda: greedy_ball(np.zeros((4, 4, 2)), 0.0), "radius"),
        (lambda: mean_shift(np.full((4, 4, 2), np.nan), 0.5), "NaN"),
        (lambda: embedding_slic(np.zeros((4, 4, 2)), n_segments=0), "n_segments"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, name):
    with pytest.raises(ValueError, match=name):
        call()
