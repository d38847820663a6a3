"""Decoding of the spatial-embedding head (Neven et al., CVPR 2019), written once.

The head's raw output has `2 + n_sigma + 1` channels `[dy, dx, sigma_1..sigma_n, seed_logit]`
(volumes: `3 + n_sigma + 1`, `[dz, dy, dx, sigma_1..sigma_n, seed_logit]`).
The loss, the numpy clustering (the readable reference), the in-graph clustering and the
benchmarks all read it through `decode_spatial`, so that positions, offsets, bandwidths and
seeds mean the same everywhere:

    position(i, j) = (i, j) * pixel_size                    volumes: (k * z_spacing, i, j) * pixel_size
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


def coordinate_grid_3d(
    depth, height, width, pixel_size: float, z_spacing: float = 1.0, dtype="float32", origin=(0, 0, 0)
):
    """Positions of a volume `(depth, height, width, 3)`, order (z, row, col):
    position(k, i, j) = ((origin_z + k) * z_spacing, origin_row + i, origin_col + j) * pixel_size.
    `z_spacing` is the anisotropy: the distance between two slices in units of the in-plane
    pixel spacing (e.g. 2.0 for 0.2 um pixels and 0.4 um slices). Sizes may be symbolic."""
    z = ops.cast(ops.arange(depth) + origin[0], dtype) * (pixel_size * z_spacing)
    rows = ops.cast(ops.arange(height) + origin[1], dtype) * pixel_size
    cols = ops.cast(ops.arange(width) + origin[2], dtype) * pixel_size
    shape = (depth, height, width)
    return ops.stack(
        [
            ops.broadcast_to(ops.reshape(z, (-1, 1, 1)), shape),
            ops.broadcast_to(ops.reshape(rows, (1, -1, 1)), shape),
            ops.broadcast_to(ops.reshape(cols, (1, 1, -1)), shape),
        ],
        axis=-1,
    )


def position_planes_3d(depth: int, height: int, width: int, pixel_size: float, z_spacing: float, batch: int = 1):
    """The positions of `coordinate_grid_3d` (same float32 values) as three planes `(3, batch *
    depth * height * width)`, repeated for `batch` volumes (a NumPy constant)."""
    z = np.arange(depth, dtype=np.float32) * np.float32(pixel_size * z_spacing)
    rows = np.arange(height, dtype=np.float32) * np.float32(pixel_size)
    cols = np.arange(width, dtype=np.float32) * np.float32(pixel_size)
    grid = np.meshgrid(z, rows, cols, indexing="ij")
    return np.tile(np.stack([g.reshape(-1) for g in grid]), (1, batch))


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


def spatial_channels(n_sigma: int, dims: int = 2) -> int:
    """Channels of the head's output for `n_sigma` bandwidth channels (`dims`: 2 for images, 3
    for volumes)."""
    return dims + n_sigma + 1


def decode_spatial(
    pred,
    pixel_size: float,
    n_sigma: int | None = None,
    origin=None,
    whole_tanh: bool = False,
    dims: int = 2,
    z_spacing: float = 1.0,
) -> SpatialParts:
    """Splits a spatial head's raw output `(..., height, width, 2 + n_sigma + 1)`, or with
    `dims=3` a volume's `(..., depth, height, width, 3 + n_sigma + 1)`.

    Args:
        pred: raw output; the last `dims + 1` axes are the spatial axes and the channels.
        pixel_size: size of a pixel in embedding units (the loss's `pixel_size`).
        n_sigma: bandwidth channels; by default read off the channel count.
        origin: `(row, col)` (volumes: `(z, row, col)`) of `pred`'s first pixel in a larger
            image (pixels). Defaults to zeros.
        whole_tanh: compute tanh over every channel, then keep the offsets' (the same values;
            faster on PyTorch, slower where slices are free).
        dims: 2 for images, 3 for volumes.
        z_spacing: volumes: the slice spacing in units of the pixel spacing (`coordinate_grid_3d`).

    Returns:
        `SpatialParts` (embeddings, positions, sigma, seeds), all in `pred`'s dtype.
    """
    channels = pred.shape[-1]
    if n_sigma is None:
        n_sigma = channels - dims - 1
    shape = ops.shape(pred)
    if dims == 3:
        depth, height, width = shape[-4], shape[-3], shape[-2]
        origin = (0, 0, 0) if origin is None else origin
        positions = coordinate_grid_3d(depth, height, width, pixel_size, z_spacing, dtype=pred.dtype, origin=origin)
    else:
        height, width = shape[-3], shape[-2]
        origin = (0, 0) if origin is None else origin
        positions = coordinate_grid(height, width, pixel_size, dtype=pred.dtype, origin=origin)
    # whole_tanh: tanh of the whole (contiguous) output, then the slice, several times faster
    # on PyTorch's CPU than tanh of a strided slice (the loss asks for it).
    offsets = ops.tanh(pred)[..., :dims] if whole_tanh else ops.tanh(pred[..., :dims])
    embeddings = offsets + positions
    sigma = pred[..., dims : dims + n_sigma]
    seeds = ops.sigmoid(pred[..., dims + n_sigma])
    return SpatialParts(embeddings, positions, sigma, seeds)


def decode_spatial_planes(planes, positions, n_sigma: int | None = None) -> SpatialParts:
    """`decode_spatial` of a head output given as channel planes (eager callers that keep one
    contiguous array per channel): the same formulas, each part a list of planes.

    Args:
        planes: the `2 + n_sigma + 1` channels of the raw output, each `(n,)` (pixels of a
            flattened batch) or any one shape.
        positions: `(2, n)`, the pixels' positions (`position_planes`; volumes: `(3, n)`,
            `position_planes_3d`), or a row and a column position that broadcast against the
            planes (`(height, 1)` and `(width,)`). Their number is the number of axes.
        n_sigma: bandwidth channels; by default read off the channel count.

    Returns:
        `SpatialParts`: embeddings `[e_row, e_col]`, positions, sigma `[sigma_1..]`, seeds `(n,)`.
    """
    dims = len(positions)
    if n_sigma is None:
        n_sigma = len(planes) - dims - 1
    embeddings = [ops.tanh(planes[c]) + positions[c] for c in range(dims)]
    return SpatialParts(embeddings, positions, list(planes[dims : dims + n_sigma]), ops.sigmoid(planes[dims + n_sigma]))


def bandwidth(sigma, sigma_scale: float, dims: int = 2):
    """`exp(sigma_scale * sigma)` with one value per axis `(..., dims)`: a single bandwidth
    channel serves every axis."""
    out = ops.exp(sigma_scale * sigma)
    if out.shape[-1] == 1 and dims > 1:
        out = ops.concatenate([out] * dims, axis=-1)
    return out
