"""Decoding of the spatial-embedding head (Neven et al., CVPR 2019), written once.

The head's raw output has `2 + n_sigma + 1` channels `[dy, dx, sigma_1..sigma_n, seed_logit]`.
The loss, the numpy clustering (the readable reference), the in-graph clustering and the
benchmarks all read it through `decode_spatial`, so that positions, offsets, bandwidths and
seeds mean the same everywhere:

    position(i, j) = (i, j) * pixel_size
    e(x)           = tanh(offset(x)) + position(x)          the spatial embedding
    bandwidth(x)   = exp(sigma_scale * sigma(x))            one value per axis (n_sigma=1: shared)
    seed(x)        = sigmoid(seed_logit(x))
    phi(x; c, b)   = exp(-sum_axis b_axis (e_axis(x) - c_axis)^2)

A pixel belongs to a center when phi > 0.5, i.e. when the exponent is below `LN2`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from keras import ops

LN2 = math.log(2.0)


def coordinate_grid(height, width, pixel_size: float, dtype="float32", origin=(0, 0)):
    """Positions `(height, width, 2)`, position(i, j) = (origin + (i, j)) * pixel_size, order
    (row, col); `origin` (pixels) places the grid in a larger image (tiles, row bands).

    `height` and `width` may be symbolic (dynamic image sizes).
    """
    rows = ops.cast(ops.arange(height) + origin[0], dtype) * pixel_size
    cols = ops.cast(ops.arange(width) + origin[1], dtype) * pixel_size
    grid_r = ops.repeat(rows, width)
    grid_c = ops.tile(cols, [height])
    return ops.reshape(ops.stack([grid_r, grid_c], axis=-1), (height, width, 2))


def position_planes(height: int, width: int, pixel_size: float, batch: int = 1) -> np.ndarray:
    """The positions of `coordinate_grid` (same float32 values), as two planes `(2, batch *
    height * width)`, row then column, repeated for `batch` images: a NumPy constant for eager
    callers with known sizes."""
    rows = np.arange(height, dtype=np.float32) * np.float32(pixel_size)
    cols = np.arange(width, dtype=np.float32) * np.float32(pixel_size)
    planes = np.stack([np.repeat(rows, width), np.tile(cols, height)])
    return np.tile(planes, (1, batch))


class SpatialParts(NamedTuple):
    """The decoded head output; leading axes as in the input (`(..., height, width)`).

    Attributes:
        embeddings: `(..., height, width, 2)` e = tanh(offset) + position.
        positions: `(height, width, 2)` the pixel positions alone.
        sigma: `(..., height, width, n_sigma)` raw bandwidth channels.
        seeds: `(..., height, width)` sigmoid of the seed logit.
    """

    embeddings: object
    positions: object
    sigma: object
    seeds: object


def spatial_channels(n_sigma: int) -> int:
    """Channels of the head's output for `n_sigma` bandwidth channels."""
    return 2 + n_sigma + 1


def decode_spatial(
    pred, pixel_size: float, n_sigma: int | None = None, origin=(0, 0), whole_tanh: bool = False
) -> SpatialParts:
    """Splits a spatial head's raw output `(..., height, width, 2 + n_sigma + 1)`.

    Args:
        pred: raw output; the last three axes are height, width and channels.
        pixel_size: size of a pixel in embedding units (the loss's `pixel_size`).
        n_sigma: bandwidth channels; by default read off the channel count.
        origin: `(row, col)` of `pred`'s top-left pixel in a larger image (pixels).
        whole_tanh: compute tanh over every channel, then keep the offsets' (the same values;
            faster on PyTorch, slower where slices are free).

    Returns:
        `SpatialParts` (embeddings, positions, sigma, seeds), all in `pred`'s dtype.
    """
    channels = pred.shape[-1]
    if n_sigma is None:
        n_sigma = channels - 3
    shape = ops.shape(pred)
    height, width = shape[-3], shape[-2]
    positions = coordinate_grid(height, width, pixel_size, dtype=pred.dtype, origin=origin)
    # whole_tanh: tanh of the whole (contiguous) output, then the slice, several times faster
    # on PyTorch's CPU than tanh of a strided slice (the loss asks for it).
    offsets = ops.tanh(pred)[..., :2] if whole_tanh else ops.tanh(pred[..., :2])
    embeddings = offsets + positions
    sigma = pred[..., 2 : 2 + n_sigma]
    seeds = ops.sigmoid(pred[..., 2 + n_sigma])
    return SpatialParts(embeddings, positions, sigma, seeds)


def decode_spatial_planes(planes, positions, n_sigma: int | None = None) -> SpatialParts:
    """`decode_spatial` of a head output given as channel planes (eager callers that keep one
    contiguous array per channel): the same formulas, each part a list of planes.

    Args:
        planes: the `2 + n_sigma + 1` channels of the raw output, each `(n,)` (pixels of a
            flattened batch) or any one shape.
        positions: `(2, n)`, the pixels' positions (`position_planes`), or a row and a column
            position that broadcast against the planes (`(height, 1)` and `(width,)`).
        n_sigma: bandwidth channels; by default read off the channel count.

    Returns:
        `SpatialParts`: embeddings `[e_row, e_col]`, positions, sigma `[sigma_1..]`, seeds `(n,)`.
    """
    if n_sigma is None:
        n_sigma = len(planes) - 3
    embeddings = [ops.tanh(planes[c]) + positions[c] for c in range(2)]
    return SpatialParts(embeddings, positions, list(planes[2 : 2 + n_sigma]), ops.sigmoid(planes[2 + n_sigma]))


def bandwidth(sigma, sigma_scale: float):
    """`exp(sigma_scale * sigma)` with one value per axis `(..., 2)`: a single bandwidth
    channel serves both axes."""
    out = ops.exp(sigma_scale * sigma)
    if out.shape[-1] == 1:
        out = ops.concatenate([out, out], axis=-1)
    return out
