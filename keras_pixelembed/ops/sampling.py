"""Bilinear and nearest sampling of per-pixel maps at offset positions (`keras.ops` only)."""

from __future__ import annotations

from keras import ops


def _grid(values):
    shape = ops.shape(values)
    height, width = shape[1], shape[2]
    rows = ops.cast(ops.arange(height), values.dtype)[:, None]
    cols = ops.cast(ops.arange(width), values.dtype)[None, :]
    return height, width, ops.broadcast_to(rows, (height, width)), ops.broadcast_to(cols, (height, width))


def _gather(flat, row, col, width):
    """`flat (batch, h*w, c)` at integer `row, col (batch, h, w)` -> `(batch, h, w, c)`."""
    index = ops.reshape(row * width + col, (ops.shape(row)[0], -1, 1))
    picked = ops.take_along_axis(flat, index, axis=1)
    shape = ops.shape(row)
    return ops.reshape(picked, (shape[0], shape[1], shape[2], flat.shape[-1]))


def bilinear_sample(values, offsets):
    """Samples `values` at `position + offsets` by bilinear interpolation, clamped at the border.

    Args:
        values: `(batch, height, width, channels)`.
        offsets: `(batch, height, width, 2)` in pixels, order `(dy, dx)`.

    Returns:
        `(batch, height, width, channels)`; gradients flow to `values` and `offsets`.
    """
    height, width, rows, cols = _grid(values)
    h_max = ops.cast(height - 1, values.dtype)
    w_max = ops.cast(width - 1, values.dtype)
    r = ops.clip(rows + offsets[..., 0], 0.0, h_max)
    c = ops.clip(cols + offsets[..., 1], 0.0, w_max)
    r0 = ops.floor(ops.stop_gradient(r))
    c0 = ops.floor(ops.stop_gradient(c))
    wr = ops.expand_dims(r - r0, -1)
    wc = ops.expand_dims(c - c0, -1)
    r0i, c0i = ops.cast(r0, "int32"), ops.cast(c0, "int32")
    r1i = ops.minimum(r0i + 1, ops.cast(height - 1, "int32"))
    c1i = ops.minimum(c0i + 1, ops.cast(width - 1, "int32"))
    flat = ops.reshape(values, (ops.shape(values)[0], -1, values.shape[-1]))
    w_int = ops.cast(width, "int32")
    top = (1.0 - wc) * _gather(flat, r0i, c0i, w_int) + wc * _gather(flat, r0i, c1i, w_int)
    bottom = (1.0 - wc) * _gather(flat, r1i, c0i, w_int) + wc * _gather(flat, r1i, c1i, w_int)
    return (1.0 - wr) * top + wr * bottom


def nearest_targets(labels, offsets):
    """Label of the pixel nearest to `position + offsets`, and whether it lies in the image.

    Args:
        labels: `(batch, height, width)` int.
        offsets: `(batch, height, width, 2)` in pixels, order `(dy, dx)`.

    Returns:
        `(target_labels, inside)`, both `(batch, height, width)`; `target_labels` is clamped to
        the border where `inside` is False.
    """
    height, width, rows, cols = _grid(ops.cast(offsets, "float32"))
    r = ops.round(rows + ops.cast(offsets[..., 0], "float32"))
    c = ops.round(cols + ops.cast(offsets[..., 1], "float32"))
    h_max = ops.cast(height - 1, "float32")
    w_max = ops.cast(width - 1, "float32")
    inside = ops.logical_and(
        ops.logical_and(ops.greater_equal(r, 0.0), ops.less_equal(r, h_max)),
        ops.logical_and(ops.greater_equal(c, 0.0), ops.less_equal(c, w_max)),
    )
    ri = ops.cast(ops.clip(r, 0.0, h_max), "int32")
    ci = ops.cast(ops.clip(c, 0.0, w_max), "int32")
    flat = ops.reshape(labels, (ops.shape(labels)[0], -1, 1))
    target = _gather(flat, ri, ci, ops.cast(width, "int32"))[..., 0]
    return target, inside
