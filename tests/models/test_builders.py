"""Model builders: shapes at dynamic sizes, the residual formulation, serialization."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from keras_pixelembed.models import ResidualEmbedding, build_pixel_embedder
from keras_pixelembed.models.builders import PixelShuffle, input_multiple
from tests.helpers import assert_config_round_trip


@pytest.mark.parametrize("backbone", ["unet", "erfnet", "unet_lite"])
@pytest.mark.parametrize("head, channels", [("spatial", 4), ("embedding", 8)])
def test_dynamic_sizes_and_channels(backbone, head, channels):
    model = build_pixel_embedder(backbone, head, embedding_dim=8, width=4, depth=2)
    assert tuple(model.input_shape) == (None, None, None, 3)
    for h, w in ((16, 24), (32, 8)):
        assert model.predict(np.zeros((2, h, w, 3), np.float32), verbose=0).shape == (2, h, w, channels)


def test_residual_embedding_of_a_zero_network_is_color_and_position():
    model = build_pixel_embedder("unet", "embedding", embedding_dim=7, width=4, depth=2, position_scale=0.5)
    model.get_layer("embedding").set_weights([np.zeros_like(w) for w in model.get_layer("embedding").get_weights()])
    image = np.random.default_rng(0).random((1, 8, 12, 3)).astype(np.float32)
    out = model.predict(image, verbose=0)[0]
    rows, cols = np.meshgrid(np.arange(8) * 0.5, np.arange(12) * 0.5, indexing="ij")
    np.testing.assert_allclose(out[..., :3], image[0], atol=1e-6)
    np.testing.assert_allclose(out[..., 3], rows, atol=1e-6)
    np.testing.assert_allclose(out[..., 4], cols, atol=1e-6)
    assert np.all(out[..., 5:] == 0)
    assert_config_round_trip(
        ResidualEmbedding(7, 0.5, 2.0), {"embedding_dim": 7, "position_scale": 0.5, "color_scale": 2.0}
    )


def test_a_keras_applications_backbone_built_without_download():
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(None, None, 3), include_top=False, weights=None, include_preprocessing=False
    )
    model = build_pixel_embedder(backbone, "spatial", width=4, depth=5)
    assert model.predict(np.zeros((1, 64, 32, 3), np.float32), verbose=0).shape == (1, 64, 32, 4)


def test_pixel_shuffle_is_depth_to_space():
    x = np.random.default_rng(0).random((2, 3, 5, 12)).astype(np.float32)
    out = keras.ops.convert_to_numpy(PixelShuffle()(x))
    assert out.shape == (2, 6, 10, 3)
    for i in range(2):
        for j in range(2):  # channel (2 i + j) c + k of a pixel is channel k of its sub-pixel (i, j)
            np.testing.assert_array_equal(out[:, i::2, j::2], x[..., (2 * i + j) * 3 : (2 * i + j + 1) * 3])
    symbolic = PixelShuffle()(keras.Input((None, 7, 8)))
    assert tuple(symbolic.shape) == (None, None, 14, 2)


def test_input_multiple_of_each_backbone():
    from keras_pixelembed.training import TrainConfig

    assert input_multiple("unet", 3) == input_multiple("erfnet", 3) == 8
    assert input_multiple("unet_lite", 3) == 16
    assert TrainConfig(backbone="unet_lite", depth=2).to_json()["multiple"] == 8
    with pytest.raises(ValueError, match="divisible by 16"):
        TrainConfig(backbone="unet_lite", depth=3, image_size=(120, 120))
    model = build_pixel_embedder("unet_lite", "spatial", width=4, depth=3)
    assert model.predict(np.zeros((1, 16, 48, 3), np.float32), verbose=0).shape == (1, 16, 48, 4)


@pytest.mark.parametrize("backbone", ["erfnet", "unet_lite"])
def test_saved_model_reloads_with_safe_mode(tmp_path, backbone):
    from keras_pixelembed import SpatialEmbeddingLoss

    model = build_pixel_embedder(backbone, "spatial", width=4, depth=2)
    model.compile(optimizer="adam", loss=SpatialEmbeddingLoss())
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).random((1, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="backbone"):
        build_pixel_embedder("resnet9000")
    with pytest.raises(ValueError, match="head"):
        build_pixel_embedder(head="boxes")
    with pytest.raises(ValueError, match="embedding_dim"):
        build_pixel_embedder(head="embedding", embedding_dim=3, residual=True)
