"""CoordinateGrid and SpatialEmbeddingHead: values, dynamic sizes, initialisation, configs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_pixelembed import CoordinateGrid, SpatialEmbeddingHead
from tests.helpers import assert_config_round_trip


def test_coordinate_grid_values_and_dynamic_size():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, CoordinateGrid(pixel_size=0.25)(inputs))
    for h, w in ((3, 5), (6, 2)):
        grid = model.predict(np.zeros((2, h, w, 3), np.float32), verbose=0)
        assert grid.shape == (2, h, w, 2)
        rows, cols = np.meshgrid(np.arange(h) * 0.25, np.arange(w) * 0.25, indexing="ij")
        np.testing.assert_allclose(grid[1], np.stack([rows, cols], -1))


def test_head_initialisation_and_channels():
    head = SpatialEmbeddingHead(n_sigma=2, hidden_channels=(4,))
    out = ops.convert_to_numpy(head(np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float32)))
    assert out.shape == (2, 5, 6, 5)
    assert np.all(out[..., :2] == 0.0) and np.allclose(out[..., 2:4], 1.0)
    with pytest.raises(ValueError, match="n_sigma"):
        SpatialEmbeddingHead(n_sigma=0)


def test_configs_round_trip():
    assert_config_round_trip(CoordinateGrid(pixel_size=0.5), {"pixel_size": 0.5})
    assert_config_round_trip(
        SpatialEmbeddingHead(n_sigma=2, hidden_channels=(4,)), {"n_sigma": 2, "hidden_channels": [4]}
    )
