"""Linear and nearest sampling of per-pixel maps at offset positions (`keras.ops` only), for
images `(batch, height, width, channels)` and volumes `(batch, depth, height, width, channels)`."""

from __future__ import annotations

from keras import ops


def _grid(values, dims: int):
    """Sizes of the `dims` spatial axes of `values` and each axis' position of every pixel
    (voxel), broadcast to the spatial shape."""
    shape = ops.shape(values)
    sizes = [shape[1 + a] for a in range(dims)]
    positions = []
    for a in range(dims):
        at = ops.cast(ops.arange(sizes[a]), values.dtype)
        at = ops.reshape(at, [-1 if b == a else 1 for b in range(dims)])
        positions.append(ops.broadcast_to(at, sizes))
    return sizes, positions


def _gather(flat, indices, sizes):
    """`flat (batch, pixels, c)` at integer per-axis `indices` (each `(batch, *spatial)`) ->
    `(batch, *spatial, c)`."""
    index = indices[0]
    for a in range(1, len(indices)):
        index = index * ops.cast(sizes[a], "int32") + indices[a]
    shape = ops.shape(index)
    picked = ops.take_along_axis(flat, ops.reshape(index, (shape[0], -1, 1)), axis=1)
    return ops.reshape(picked, (*(shape[i] for i in range(len(index.shape))), flat.shape[-1]))


def bilinear_sample(values, offsets):
    """Samples `values` at `position + offsets` by linear interpolation (bilinear; trilinear
    for volumes), clamped at the border.

    Args:
        values: `(batch, height, width, channels)`, or a volume's `(batch, depth, height,
            width, channels)`.
        offsets: `(batch, height, width, 2)` in pixels, order `(dy, dx)` (volumes: `(..., 3)`,
            `(dz, dy, dx)`).

    Returns:
        The shape of `values`; gradients flow to `values` and `offsets`.
    """
    dims = len(values.shape) - 2
    sizes, positions = _grid(values, dims)
    low, high, weights = [], [], []
    for a in range(dims):
        top = ops.cast(sizes[a] - 1, values.dtype)
        p = ops.clip(positions[a] + offsets[..., a], 0.0, top)
        p0 = ops.floor(ops.stop_gradient(p))
        weights.append(ops.expand_dims(p - p0, -1))
        i0 = ops.cast(p0, "int32")
        low.append(i0)
        high.append(ops.minimum(i0 + 1, ops.cast(sizes[a] - 1, "int32")))
    flat = ops.reshape(values, (ops.shape(values)[0], -1, values.shape[-1]))

    def along(axis, chosen):
        """Interpolation along `axis` and the axes after it, the earlier ones at `chosen`."""
        if axis == dims:
            return _gather(flat, chosen, sizes)
        w = weights[axis]
        return (1.0 - w) * along(axis + 1, [*chosen, low[axis]]) + w * along(axis + 1, [*chosen, high[axis]])

    return along(0, [])


def nearest_targets(labels, offsets):
    """Label of the pixel (voxel) nearest to `position + offsets`, and whether it lies inside.

    Args:
        labels: `(batch, height, width)` int (volumes: `(batch, depth, height, width)`).
        offsets: `(batch, height, width, 2)` in pixels, order `(dy, dx)` (volumes: `(dz, dy, dx)`).

    Returns:
        `(target_labels, inside)`, both the shape of `labels`; `target_labels` is clamped to
        the border where `inside` is False.
    """
    dims = len(labels.shape) - 1
    offsets = ops.cast(offsets, "float32")
    sizes, positions = _grid(offsets, dims)
    inside, indices = None, []
    for a in range(dims):
        top = ops.cast(sizes[a] - 1, "float32")
        p = ops.round(positions[a] + offsets[..., a])
        ok = ops.logical_and(ops.greater_equal(p, 0.0), ops.less_equal(p, top))
        inside = ok if inside is None else ops.logical_and(inside, ok)
        indices.append(ops.cast(ops.clip(p, 0.0, top), "int32"))
    flat = ops.reshape(labels, (ops.shape(labels)[0], -1, 1))
    return _gather(flat, indices, sizes)[..., 0], inside
