"""Pixel positions and the offset + sigma + seed head of spatial embeddings (Neven et al. 2019),
for images and volumes."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.ops.spatial import coordinate_grid, coordinate_grid_3d, spatial_channels
from keras_pixelembed.validation import check_integer, check_number


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class CoordinateGrid(keras.layers.Layer):
    """Positions of the pixels of the input: `(batch, h, w, c)` -> `(batch, h, w, 2)`; of the
    voxels of a volume: `(batch, d, h, w, c)` -> `(batch, d, h, w, 3)`.

    position(i, j) = (i * pixel_size, j * pixel_size), order (row, col); in a volume
    position(k, i, j) = (k * z_spacing, i, j) * pixel_size, order (z, row, col). A fixed `pixel_size`
    (not 1 / height) keeps a bandwidth meaning the same number of pixels at every image size.
    The grid follows the input's (possibly dynamic) height and width.

    `origin` (pixels, `(row, col)`, default `(0, 0)`, not saved) is the position of the input's
    top-left pixel in a larger image: `Segmenter.predict_tiled` sets it per tile (in eager
    calls) so that a tile sees the positions it has in the whole image. Volumes take a
    `(z, row, col)` origin (a `(row, col)` one means slice 0).

    Args:
        pixel_size: size of one pixel in embedding units. Defaults to `1 / 1024`.
        z_spacing: volumes: the distance between slices in units of the pixel spacing (the
            anisotropy of the data). Defaults to `1.0`.
    """

    def __init__(self, pixel_size: float = 1.0 / 1024, z_spacing: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.pixel_size = check_number("pixel_size", pixel_size, minimum=0.0, strict=True)
        self.z_spacing = check_number("z_spacing", z_spacing, minimum=0.0, strict=True)
        self.origin = (0, 0)

    def call(self, inputs):
        shape = ops.shape(inputs)
        if len(inputs.shape) == 5:
            origin = tuple(self.origin) if len(self.origin) == 3 else (0, *self.origin)
            spatial = (shape[1], shape[2], shape[3])
            grid = coordinate_grid_3d(
                *spatial, self.pixel_size, self.z_spacing, dtype=self.compute_dtype, origin=origin
            )
            return ops.broadcast_to(ops.expand_dims(grid, 0), (shape[0], *spatial, 3))
        batch, height, width = shape[0], shape[1], shape[2]
        grid = coordinate_grid(height, width, self.pixel_size, dtype=self.compute_dtype, origin=self.origin)
        return ops.broadcast_to(ops.expand_dims(grid, 0), (batch, height, width, 2))

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], len(input_shape) - 2)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"pixel_size": self.pixel_size, "z_spacing": self.z_spacing})
        return config


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class SpatialEmbeddingHead(keras.layers.Layer):
    """Features -> `[dy, dx, sigma_1..sigma_n, seed_logit]`, `2 + n_sigma + 1` channels; with
    `ndim=3` volume features -> `[dz, dy, dx, sigma_1..sigma_n, seed_logit]`, `3 + n_sigma + 1`.

    Optional 3x3 conv + ReLU layers (`hidden_channels`), then 1x1 convolutions initialised as
    the spatial-embedding paper does: offsets start at zero (weights and bias 0), sigmas at 1
    (weights 0, bias 1), so training starts from "every pixel is its own center, bandwidth
    exp(sigma_scale)". The output feeds `SpatialEmbeddingLoss` and
    `cluster.spatial_embedding_instances`.

    Args:
        n_sigma: number of bandwidth channels (1: one for every axis, or one per axis: 2 for
            images, 3 for volumes).
        hidden_channels: widths of the 3x3 conv layers before the 1x1 output. Defaults to `()`.
        ndim: 2 for images (`Conv2D`), 3 for volumes (`Conv3D`, three offsets). Defaults to `2`.
    """

    def __init__(self, n_sigma: int = 1, hidden_channels=(), ndim: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.n_sigma = check_integer("n_sigma", n_sigma, minimum=1)
        self.ndim = check_integer("ndim", ndim, minimum=2)
        if self.ndim > 3 or self.n_sigma not in (1, self.ndim):
            raise ValueError(
                "Invalid values for arguments `ndim` and `n_sigma`. Expected ndim 2 or 3 and n_sigma 1 or ndim. "
                f"Received: ndim={ndim!r}, n_sigma={n_sigma!r}"
            )
        self.hidden_channels = tuple(
            check_integer(f"hidden_channels[{i}]", c, minimum=1) for i, c in enumerate(hidden_channels)
        )
        conv = keras.layers.Conv3D if self.ndim == 3 else keras.layers.Conv2D
        self.hidden = [
            conv(c, 3, padding="same", activation="relu", name=f"hidden_{i}", dtype=self.dtype_policy)
            for i, c in enumerate(self.hidden_channels)
        ]
        self.offset = conv(
            self.ndim, 1, kernel_initializer="zeros", bias_initializer="zeros", name="offset", dtype=self.dtype_policy
        )
        self.sigma = conv(
            self.n_sigma, 1, kernel_initializer="zeros", bias_initializer="ones", name="sigma", dtype=self.dtype_policy
        )
        self.seed = conv(1, 1, name="seed", dtype=self.dtype_policy)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        for layer in (self.offset, self.sigma, self.seed):
            layer.build(shape)

    def call(self, inputs):
        x = inputs
        for layer in self.hidden:
            x = layer(x)
        return ops.concatenate([self.offset(x), self.sigma(x), self.seed(x)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], spatial_channels(self.n_sigma, self.ndim))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"n_sigma": self.n_sigma, "hidden_channels": list(self.hidden_channels), "ndim": self.ndim})
        return config
