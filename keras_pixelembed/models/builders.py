"""`build_pixel_embedder`: functional Keras models with input `(None, None, 3)` (volumes, `ndim=3`:
`(None, None, None, channels)`).

Upsampling is nearest-neighbour followed by a convolution (never bilinear): Keras 3.15 on
TensorFlow cannot resize bilinearly when height and width are unknown, and both dynamic sizes
and export need them unknown. Inputs must have height and width divisible by `2 ** depth`
(`Segmenter` pads and crops for you).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.layers.spatial import CoordinateGrid, SpatialEmbeddingHead
from keras_pixelembed.validation import check_choice, check_integer, check_number

BACKBONES = ("unet", "erfnet", "unet_lite")
HEADS = ("spatial", "embedding")


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class ResidualEmbedding(keras.layers.Layer):
    """`[image * color_scale, row, col] * 1, zero-padded to embedding_dim` + the network's residual
    (volumes: `[image * color_scale, z, row, col]`).

    The residual formulation of pixel embeddings (as in Kulikov and Lempitsky, "Instance
    segmentation of biological images using harmonic embeddings", CVPR 2020, and the
    position-plus-offset embeddings of Neven et al. 2019): with a zero residual every pixel's
    embedding is its own color and position (SLIC's feature space); training learns what color
    alone misses. Positions are `CoordinateGrid(position_scale)` positions.

    Args:
        embedding_dim: channels of the residual and of the output (at least the image's channels
            plus its axes: 5 for RGB images).
        position_scale: the model's input grid: a pixel step is this much position. Defaults
            to `1 / 64` (not the spatial loss's `pixel_size`, which is the unit of its offsets).
        color_scale: weight of the color channels against the position channels.
        z_spacing: volumes: the slice spacing in units of the pixel spacing. Defaults to `1.0`.
    """

    def __init__(
        self,
        embedding_dim: int,
        position_scale: float = 1.0 / 64,
        color_scale: float = 1.0,
        z_spacing: float = 1.0,
        **kwargs,
    ):
        if "pixel_size" in kwargs:  # the name models saved before 0.2 used
            position_scale = kwargs.pop("pixel_size")
        super().__init__(**kwargs)
        self.embedding_dim = check_integer("embedding_dim", embedding_dim, minimum=1)
        self.position_scale = check_number("position_scale", position_scale, minimum=0.0, strict=True)
        self.color_scale = check_number("color_scale", color_scale)
        self.grid = CoordinateGrid(self.position_scale, z_spacing=z_spacing, dtype=self.dtype_policy)
        self.z_spacing = self.grid.z_spacing

    def call(self, image, residual):
        base = ops.concatenate(
            [ops.cast(image, residual.dtype) * self.color_scale, ops.cast(self.grid(image), residual.dtype)], axis=-1
        )
        used = base.shape[-1]
        if used > self.embedding_dim:
            raise ValueError(
                f"`embedding_dim={self.embedding_dim}` is below the {used} channels of the image and its positions. "
                f"Received: image.shape={tuple(image.shape)}"
            )
        if self.embedding_dim > used:
            base = ops.concatenate([base, ops.zeros_like(residual[..., used:])], axis=-1)
        return residual + base

    def compute_output_shape(self, image_shape, residual_shape):
        return tuple(residual_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "embedding_dim": self.embedding_dim,
                "position_scale": self.position_scale,
                "color_scale": self.color_scale,
                "z_spacing": self.z_spacing,
            }
        )
        return config


def _conv(x):
    """`Conv3D` for volumes `(batch, d, h, w, c)`, `Conv2D` for images."""
    return keras.layers.Conv3D if len(x.shape) == 5 else keras.layers.Conv2D


def _conv_block(x, width: int, name: str, dilation: int = 1):
    for i in range(2):
        x = _conv(x)(width, 3, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _unet_levels(x, width: int, depth: int, up):
    """The U-Net's levels from `x`: `depth` conv blocks + 2x max pooling, a dilated bottom
    block, then per level `up(x, channels, name)` (a 2x upsampling to `channels`), the skip
    concatenation and a conv block."""
    skips = []
    for level in range(depth):
        x = _conv_block(x, width * 2**level, f"enc{level}")
        skips.append(x)
        pooling = keras.layers.MaxPooling3D if len(x.shape) == 5 else keras.layers.MaxPooling2D
        x = pooling(2, name=f"pool{level}")(x)
    x = _conv_block(x, width * 2**depth, "bottom", dilation=2)
    for level in reversed(range(depth)):
        x = up(x, width * 2**level, f"up{level}")
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, width * 2**level, f"dec{level}")
    return x


def _nearest_up(x, width: int, name: str):
    if len(x.shape) == 5:
        x = keras.layers.UpSampling3D(2, name=name)(x)
    else:
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=name)(x)
    return _conv(x)(width, 3, padding="same", name=f"{name}_conv")(x)


def unet_features(x, width: int = 32, depth: int = 3):
    """A U-Net: `depth` 2x downsamplings, nearest upsampling + conv, skip concatenations."""
    return _unet_levels(x, width, depth, _nearest_up)


def input_multiple(backbone, depth: int) -> int:
    """What height and width must be a multiple of for `build_pixel_embedder(backbone, depth=depth)`
    (`Segmenter` pads to it): `2 ** depth`, `2 ** (depth + 1)` for `"unet_lite"` (its stem halves
    the image first)."""
    return 2 ** (int(depth) + (1 if backbone == "unet_lite" else 0))


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class PixelShuffle(keras.layers.Layer):
    """Depth to space by 2: `(b, h, w, 4 c)` -> `(b, 2 h, 2 w, c)`; channel `(2 i + j) c + k` of a
    pixel goes to channel `k` of its sub-pixel `(i, j)` (a sub-pixel convolution's upsampling, Shi
    et al. 2016). One reshape and transpose: no `Tile` in exported graphs (nearest upsampling
    exports to ONNX as `Tile`, slow in ONNX Runtime)."""

    def call(self, x):
        shape = ops.shape(x)
        b, h, w, c = shape[0], shape[1], shape[2], x.shape[-1] // 4
        x = ops.reshape(x, (b, h, w, 2, 2, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (b, h * 2, w * 2, c))

    def compute_output_shape(self, shape):
        double = [None if s is None else 2 * s for s in shape[1:3]]
        return (shape[0], *double, shape[-1] // 4)


def _subpixel_up(x, width: int, name: str):
    """2x upsampling by a 3 x 3 convolution to `4 * width` channels at the low resolution and a
    `PixelShuffle`: the cost of nearest upsampling + convolution, without the upsampled tensor."""
    x = keras.layers.Conv2D(4 * width, 3, padding="same", name=f"{name}_conv")(x)
    return PixelShuffle(name=f"{name}_shuffle")(x)


def unet_lite_features(x, width: int = 16, depth: int = 3):
    """A U-Net on the half-resolution image, for fast inference (about half of `unet`'s time in
    ONNX Runtime at the same width and depth, a quarter of its convolutions' arithmetic): a
    stride-2 stem, the U-Net's levels at 1/2 .. 1/2^depth with sub-pixel upsampling, then back
    to full resolution (sub-pixel) joined with the input channels and one convolution there.
    Inputs must be multiples of `2 ** (depth + 1)`."""
    full = x
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    x = _unet_levels(x, width, depth, _subpixel_up)
    x = _subpixel_up(x, max(width // 2, 4), "up_full")
    x = keras.layers.Concatenate(name="skip_full")([x, full])
    x = keras.layers.Conv2D(max(width // 2, 4), 3, padding="same", use_bias=False, name="full_conv")(x)
    x = keras.layers.BatchNormalization(name="full_bn")(x)
    return keras.layers.Activation("relu", name="full_relu")(x)


def _non_bottleneck(x, width: int, dilation: int, name: str):
    """ERFNet's factorised residual block: 3x1, 1x3, then dilated 3x1, 1x3."""
    y = keras.layers.Conv2D(width, (3, 1), padding="same", activation="relu", name=f"{name}_a")(x)
    y = keras.layers.Conv2D(width, (1, 3), padding="same", name=f"{name}_b")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.Activation("relu", name=f"{name}_relu")(y)
    y = keras.layers.Conv2D(
        width, (3, 1), padding="same", dilation_rate=(dilation, 1), activation="relu", name=f"{name}_c"
    )(y)
    y = keras.layers.Conv2D(width, (1, 3), padding="same", dilation_rate=(1, dilation), name=f"{name}_d")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    return keras.layers.Activation("relu", name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([x, y]))


def erfnet_features(x, width: int = 16, depth: int = 3):
    """An ERFNet-style encoder (downsampling + factorised dilated blocks) and a light decoder."""
    for level in range(depth):
        x = keras.layers.Conv2D(width * 2**level, 3, strides=2, padding="same", activation="relu", name=f"down{level}")(
            x
        )
        for i, rate in enumerate((1, 2, 4) if level == depth - 1 else (1,)):
            x = _non_bottleneck(x, width * 2**level, rate, f"nb{level}_{i}")
    for level in reversed(range(depth)):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}")(x)
        x = keras.layers.Conv2D(
            width * 2 ** max(level - 1, 0), 3, padding="same", activation="relu", name=f"up{level}_conv"
        )(x)
        x = _non_bottleneck(x, width * 2 ** max(level - 1, 0), 1, f"dec{level}")
    return x


def external_features(extractor, images, x, width: int, depth: int):
    """Features from a user-built extractor (e.g. `keras.applications.MobileNetV3Small(
    input_shape=(None, None, 3), include_top=False, weights=None)`) of output stride `2 ** depth`,
    brought back to full resolution by `depth` nearest 2x upsamplings + convs, then joined with the
    input channels (image and positions)."""
    f = extractor(images)
    for level in reversed(range(depth)):
        f = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"ext_up{level}")(f)
        f = keras.layers.Conv2D(
            width * 2 ** min(level, 2), 3, padding="same", activation="relu", name=f"ext_up{level}_conv"
        )(f)
    f = keras.layers.Concatenate(name="ext_with_input")([f, x])
    return _conv_block(f, width, "ext_out")


def build_pixel_embedder(
    backbone: str = "unet",
    head: str = "embedding",
    embedding_dim: int = 16,
    residual: bool = True,
    width: int = 32,
    depth: int = 3,
    n_sigma: int = 1,
    coordinates: bool = True,
    position_scale: float = 1.0 / 64,
    color_scale: float = 1.0,
    name: str | None = None,
    ndim: int = 2,
    channels: int | None = None,
    z_spacing: float = 1.0,
) -> keras.Model:
    """A functional model `(batch, None, None, 3)` -> per-pixel output.

    Args:
        backbone: `"unet"`, `"erfnet"` (ERFNet-style encoder; the spatial head then has the
            paper's two branches: offsets + sigma, and seeds), or a `keras.Model` feature
            extractor with input `(None, None, 3)` and output stride `2 ** depth`, built by the
            user from explicit arguments (`keras.applications.*(include_top=False,
            weights=None)` or a weights file): nothing is downloaded here.
        head: `"embedding"` (`embedding_dim` channels, for the centroid / metric losses) or
            `"spatial"` (`[dy, dx, sigma x n_sigma, seed_logit]` for `SpatialEmbeddingLoss`).
        embedding_dim: channels of the embedding head.
        residual: embedding head only: add the network's output to each pixel's own
            `[R, G, B, row, col]` (`ResidualEmbedding`), so a zero network is SLIC's space.
        width, depth: channels of the first level and number of 2x downsamplings.
        n_sigma: bandwidth channels of the spatial head.
        coordinates: feed `CoordinateGrid(position_scale)` positions as two extra input channels.
        position_scale: the model's input grid, the position step of one pixel in those
            channels and in the residual embedding. Defaults to `1 / 64`.
        color_scale: weight of the color in the residual embedding.
        ndim: 2 for images, 3 for volumes (a 3D U-Net, `backbone="unet"` only: 3 x 3 x 3
            convolutions, 2 x 2 x 2 pooling; inputs `(batch, d, h, w, channels)` with every
            spatial size a multiple of `2 ** depth`; the spatial head has offsets `(dz, dy, dx)`).
        channels: input channels. Defaults to `3` for images, `1` for volumes.
        z_spacing: volumes: the slice spacing in units of the pixel spacing, for the input
            positions (`CoordinateGrid`). Defaults to `1.0`.
    """
    external = isinstance(backbone, keras.Model)
    if not external and backbone not in BACKBONES:
        raise ValueError(
            f"Invalid value for argument `backbone`. Expected one of {BACKBONES} or a keras.Model feature extractor. "
            f"Received: backbone={backbone!r}"
        )
    check_choice("head", head, HEADS)
    width = check_integer("width", width, minimum=1)
    depth = check_integer("depth", depth, minimum=1)
    ndim = check_integer("ndim", ndim, minimum=2)
    if ndim > 3:
        raise ValueError(f"Invalid value for argument `ndim`. Expected 2 or 3. Received: ndim={ndim!r}")
    if ndim == 3 and (external or backbone != "unet"):
        raise ValueError(
            f'Volumes (ndim=3) take backbone="unet" (a 3D U-Net). Received: backbone={getattr(backbone, "name", backbone)!r}'
        )
    channels = check_integer("channels", (3 if ndim == 2 else 1) if channels is None else channels, minimum=1)
    inputs = keras.Input((None,) * ndim + (channels,), name="images")
    x = inputs
    if coordinates:
        grid = CoordinateGrid(position_scale, z_spacing=z_spacing, name="positions")
        x = keras.layers.Concatenate(name="with_positions")([inputs, grid(inputs)])
    if external:
        features = external_features(backbone, inputs, x, width, depth)
    elif backbone == "unet":
        features = unet_features(x, width, depth)
    elif backbone == "unet_lite":
        features = unet_lite_features(x, width, depth)
    else:
        features = erfnet_features(x, width, depth)
    if head == "spatial":
        if not external and backbone == "erfnet":
            branch = _non_bottleneck(features, features.shape[-1], 1, "seed_branch")
            out = SpatialEmbeddingHead(n_sigma, name="spatial_head")(features)
            seed = keras.layers.Conv2D(1, 1, name="seed_logit")(branch)
            outputs = keras.layers.Concatenate(name="spatial_output")([_SliceChannels(0, 2 + n_sigma)(out), seed])
        else:
            outputs = SpatialEmbeddingHead(n_sigma, ndim=ndim, name="spatial_head")(features)
    else:
        embedding_dim = check_integer("embedding_dim", embedding_dim, minimum=channels + ndim if residual else 1)
        outputs = _conv(features)(embedding_dim, 1, name="embedding")(features)
        if residual:
            residual_layer = ResidualEmbedding(
                embedding_dim, position_scale, color_scale, z_spacing=z_spacing, name="residual_embedding"
            )
            outputs = residual_layer(inputs, outputs)
    outputs = keras.layers.Activation("linear", dtype="float32", name="output")(
        outputs
    )  # float32 under mixed precision
    return keras.Model(inputs, outputs, name=name or f"{backbone.name if external else backbone}_{head}")


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class _SliceChannels(keras.layers.Layer):
    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x):
        return x[..., self.start : self.stop]

    def compute_output_shape(self, shape):
        return (*tuple(shape)[:-1], self.stop - self.start)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"start": self.start, "stop": self.stop})
        return config
