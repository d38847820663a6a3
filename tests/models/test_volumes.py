"""Volumes through the layers and models: `CoordinateGrid` and `SpatialEmbeddingHead` in 3D, the
3D U-Net of `build_pixel_embedder(ndim=3)`, saving and reloading a compiled volume model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_pixelembed import CoordinateGrid, SpatialEmbeddingHead, SpatialEmbeddingLoss, build_pixel_embedder
from keras_pixelembed.models.builders import ResidualEmbedding
from tests.helpers import assert_config_round_trip


def test_coordinate_grid_of_a_volume_is_z_row_col_with_spacing_and_origin():
    grid = CoordinateGrid(0.5, z_spacing=2.0)
    out = ops.convert_to_numpy(grid(np.zeros((2, 3, 4, 5, 1), np.float32)))
    assert out.shape == (2, 3, 4, 5, 3)
    k, i, j = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    np.testing.assert_allclose(out[1], np.stack([k * 2.0, i, j], -1) * 0.5)
    grid.origin = (1, 2, 3)
    out = ops.convert_to_numpy(grid(np.zeros((1, 3, 4, 5, 1), np.float32)))
    np.testing.assert_allclose(out[0], np.stack([(k + 1) * 2.0, i + 2, j + 3], -1) * 0.5)
    assert grid.compute_output_shape((None, None, None, None, 1)) == (None, None, None, None, 3)
    assert_config_round_trip(CoordinateGrid(0.25, z_spacing=3.0), {"pixel_size": 0.25, "z_spacing": 3.0})


def test_spatial_head_on_volumes_starts_as_the_paper_does():
    head = SpatialEmbeddingHead(n_sigma=3, hidden_channels=(4,), ndim=3)
    out = ops.convert_to_numpy(head(np.random.default_rng(0).normal(size=(1, 2, 4, 4, 6)).astype(np.float32)))
    assert out.shape == (1, 2, 4, 4, 7)  # dz, dy, dx, 3 sigmas, seed
    np.testing.assert_allclose(out[..., :3], 0.0)
    np.testing.assert_allclose(out[..., 3:6], 1.0)
    assert_config_round_trip(
        SpatialEmbeddingHead(n_sigma=1, hidden_channels=(8,), ndim=3), {"n_sigma": 1, "hidden_channels": [8], "ndim": 3}
    )
    with pytest.raises(ValueError, match="n_sigma"):
        SpatialEmbeddingHead(n_sigma=2, ndim=3)
    with pytest.raises(ValueError, match="ndim"):
        SpatialEmbeddingHead(ndim=4)


def test_volume_models_take_any_multiple_of_the_depth():
    spatial = build_pixel_embedder("unet", head="spatial", width=4, depth=2, ndim=3, n_sigma=3, z_spacing=2.0)
    assert spatial.input_shape == (None, None, None, None, 1)
    for shape in ((1, 4, 8, 12, 1), (2, 8, 4, 4, 1)):
        assert spatial.predict_on_batch(np.zeros(shape, np.float32)).shape == (*shape[:4], 7)
    embedding = build_pixel_embedder("unet", head="embedding", embedding_dim=6, width=4, depth=1, ndim=3, channels=2)
    x = np.random.default_rng(1).random((1, 2, 4, 4, 2)).astype(np.float32)
    assert embedding.predict_on_batch(x).shape == (1, 2, 4, 4, 6)
    with pytest.raises(ValueError, match="unet"):
        build_pixel_embedder("unet_lite", head="spatial", ndim=3)
    with pytest.raises(ValueError, match="channels"):
        build_pixel_embedder("unet", head="spatial", ndim=3, channels=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        build_pixel_embedder("unet", head="embedding", embedding_dim=4, ndim=3, channels=2, depth=1)


def test_residual_embedding_of_a_volume_is_intensity_then_positions():
    layer = ResidualEmbedding(6, position_scale=0.5, color_scale=2.0, z_spacing=3.0)
    image = np.random.default_rng(2).random((1, 2, 3, 4, 1)).astype(np.float32)
    out = ops.convert_to_numpy(layer(image, np.zeros((1, 2, 3, 4, 6), np.float32)))
    k, i, j = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij")
    np.testing.assert_allclose(out[0, ..., 0], 2.0 * image[0, ..., 0])
    np.testing.assert_allclose(out[0, ..., 1:4], np.stack([k * 3.0, i, j], -1) * 0.5)
    np.testing.assert_allclose(out[0, ..., 4:], 0.0)
    with pytest.raises(ValueError, match="embedding_dim"):
        ResidualEmbedding(3)(image, np.zeros((1, 2, 3, 4, 3), np.float32))


def test_compiled_volume_model_trains_saves_and_reloads_in_safe_mode(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_pixel_embedder("unet", head="spatial", width=4, depth=1, ndim=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=SpatialEmbeddingLoss(pixel_size=1 / 64, z_spacing=2.0))
    x = np.random.default_rng(3).random((2, 4, 8, 8, 1)).astype(np.float32)
    y = np.zeros((2, 4, 8, 8), np.float32)
    y[:, 1:3, 1:4, 1:4], y[:, :, 5:8, 4:8] = 1, 2
    history = model.fit(x, y, epochs=3, batch_size=2, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    path = str(tmp_path / "volume.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-5)
    assert again.loss.z_spacing == 2.0


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="slow: one backend (the loss is checked on all three)")
def test_overfitting_one_volume_recovers_its_objects():
    from keras_pixelembed.cluster import spatial_embedding_instances
    from keras_pixelembed.data import synthetic_volume
    from keras_pixelembed.metrics import sbd

    # three touching textured ellipsoids in 8 x 24 x 24; 180 steps, so that the batch
    # normalization's moving statistics (batch of one) come close to the training ones
    image, labels = synthetic_volume(np.random.default_rng(1), shape=(8, 24, 24), n_objects=(3, 3), radius=(4, 7))
    assert labels.max() == 3
    keras.utils.set_random_seed(0)
    model = build_pixel_embedder("unet", head="spatial", width=8, depth=2, ndim=3)
    model.compile(keras.optimizers.Adam(5e-3), SpatialEmbeddingLoss())
    history = model.fit(image[None], labels[None].astype(np.float32), epochs=180, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < 0.3 * history[0]
    segments = spatial_embedding_instances(model.predict(image[None], verbose=0)[0], min_size=5)
    assert sbd(segments, labels) > 0.85
