"""The Lovasz hinge (Berman et al., CVPR 2018), vectorized over rows: one sort per row."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_pixelembed.losses.base import PixelLoss
from keras_pixelembed.ops._backend import is_concrete

# Errors of ignored pixels: below every real error, so they sort last and add nothing.
_IGNORED = -1e9


def lovasz_hinge_rows(errors, labels, valid=None):
    """Lovasz extension of the Jaccard loss applied to hinge errors, one value per row.

    For each row, with the errors sorted in decreasing order and `g` the labels in that order:
    `J_i = 1 - (G - cumsum(g)_i) / (G + cumsum(1 - g)_i)`, `G = sum(g)`, and the value is
    `sum_i relu(e_(i)) (J_i - J_(i-1))`. The gradient flows through the sorted errors only.

    Pixels with error <= 0 add nothing, so when values are known (eager) only the top
    `k` errors are sorted, `k` the largest count of positive errors in a row: exact, and much
    cheaper when most errors are 0 (pixels far from a mask). Under jit every row is sorted.

    Args:
        errors: `(rows, pixels)` hinge errors `1 - logit * (2 label - 1)`.
        labels: `(rows, pixels)` 0/1, float.
        valid: optional `(rows, pixels)` 0/1; invalid pixels are left out of the row.

    Returns:
        `(rows,)`.
    """
    errors = ops.convert_to_tensor(errors)
    labels = ops.cast(labels, errors.dtype)
    if valid is not None:
        valid = ops.cast(valid, errors.dtype)
        labels = labels * valid
        errors = ops.where(ops.greater(valid, 0), errors, ops.full_like(errors, _IGNORED))
    pixels = errors.shape[-1]
    k = pixels
    if pixels is not None and is_concrete(errors):
        if math.prod(errors.shape) == 0:
            return ops.zeros(ops.shape(errors)[:1], dtype=errors.dtype)
        positive = int(ops.convert_to_numpy(ops.max(ops.sum(ops.cast(ops.greater(errors, 0), "int32"), axis=-1))))
        if positive == 0:
            return ops.sum(errors * 0.0, axis=-1)
        # A multiple of 256 limits the number of distinct shapes (compiled kernels).
        k = min(pixels, 256 * -(-positive // 256))
    if k is None:
        k = ops.shape(errors)[-1]
    sorted_errors, order = ops.top_k(errors, k, sorted=True)
    sorted_labels = ops.take_along_axis(labels, order, axis=-1)
    # J_i = 1 - (G - cumsum(g)_i) / (G + (i + 1) - cumsum(g)_i); the denominator is >= 1
    # (G >= 1, or every label so far is 0). Only the sorted errors carry a gradient.
    sorted_labels = ops.stop_gradient(sorted_labels)
    total = ops.sum(labels, axis=-1, keepdims=True)
    seen = ops.cumsum(sorted_labels, axis=-1)
    rank = ops.cast(ops.arange(1, ops.shape(sorted_labels)[-1] + 1), errors.dtype)
    jaccard = 1.0 - (total - seen) / (total + rank - seen)
    weights = ops.stop_gradient(jaccard - ops.pad(jaccard[:, :-1], [[0, 0], [1, 0]]))
    return ops.sum(ops.relu(sorted_errors) * weights, axis=-1)


def _per_image(logits, labels):
    logits = ops.convert_to_tensor(logits)
    labels = ops.cast(ops.convert_to_tensor(labels), logits.dtype)
    if len(logits.shape) != 4 or len(labels.shape) != 4:
        raise ValueError(
            "Expected logits and labels of shape (batch, height, width, K). "
            f"Received: logits.shape={tuple(logits.shape)}, labels.shape={tuple(labels.shape)}"
        )
    if logits.shape[-1] is not None and labels.shape[-1] is not None and logits.shape[-1] != labels.shape[-1]:
        raise ValueError(
            f"logits and labels disagree on K: logits.shape={tuple(logits.shape)}, labels.shape={tuple(labels.shape)}"
        )
    shape = ops.shape(logits)
    batch, channels = shape[0], shape[3]
    # rows = (image, channel), columns = pixels
    logits = ops.reshape(ops.transpose(logits, (0, 3, 1, 2)), (batch * channels, -1))
    labels = ops.reshape(ops.transpose(labels, (0, 3, 1, 2)), (batch * channels, -1))
    valid = ops.greater_equal(labels, 0)
    binary = ops.cast(ops.greater(labels, 0.5), logits.dtype)
    errors = 1.0 - logits * (2.0 * binary - 1.0)
    per_row = lovasz_hinge_rows(errors, binary, valid)
    return ops.mean(ops.reshape(per_row, (batch, channels)), axis=-1)


def lovasz_hinge(logits, labels):
    """Binary Lovasz hinge of every image and channel over its pixels, averaged.

    Args:
        logits: `(batch, height, width, K)` real scores (> 0 means inside).
        labels: `(batch, height, width, K)` 0/1; negative values mark ignored pixels.

    Returns:
        A scalar.
    """
    return ops.mean(_per_image(logits, labels))


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class LovaszHingeLoss(PixelLoss):
    """Binary Lovasz hinge loss (Berman et al. 2018), a convex surrogate of the Jaccard loss.

    `y_true (batch, h, w, K)` 0/1 (negative = ignored pixel), `y_pred (batch, h, w, K)` logits.
    Each image's value is the mean over its K channels of the Lovasz hinge over the h * w
    pixels; Keras' reduction then averages the images.

    Example:

    ```python
    model.compile(optimizer="adam", loss=LovaszHingeLoss())
    ```
    """

    def __init__(self, reduction: str = "sum_over_batch_size", name: str | None = "lovasz_hinge", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        return _per_image(y_pred, y_true)
