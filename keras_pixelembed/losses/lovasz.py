"""The Lovasz hinge (Berman et al., CVPR 2018), vectorized over rows: one sort per row."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_pixelembed.losses.base import PixelLoss
from keras_pixelembed.ops._backend import (
    float_bits,
    gather_rows,
    is_concrete,
    segment_sum,
    sort_with_indices,
    take_along_last,
)

# Errors of ignored pixels: below every real error, so they sort last and add nothing.
_IGNORED = -1e9


def _jaccard_steps(positive, total, seen, rank):
    """The Lovasz weights `J_i - J_(i-1)` of sorted entries, float arguments of one shape
    (counts as float32 are exact up to 2^24 pixels per row): `J_i = 1 - (G - seen_i) / (G +
    rank_i - seen_i)`, `rank` 1-based. With `union = G + rank - seen` (>= 1 when G >= 1), a
    positive adds `1 / union` and a negative `(G - seen) / ((union - 1) union)`; a row
    without positives has `J = 1` from its first entry on."""
    union = total + rank - seen
    steps = ops.where(positive > 0, 1.0, (total - seen) / ops.maximum(union - 1.0, 1.0)) / ops.maximum(union, 1.0)
    return ops.where(ops.logical_and(ops.equal(total, 0.0), ops.equal(rank, 1.0)), 1.0, steps)


def _run_means(steps, new_run):
    """`(rows, k)` steps averaged over each run (`new_run` marks a run's first entry), with
    static shapes (jit): segment sums over the flattened runs."""
    shape = ops.shape(steps)
    run = ops.cumsum(ops.reshape(ops.cast(new_run, "int32"), (-1,))) - 1
    n = math.prod(steps.shape) if None not in steps.shape else ops.shape(run)[0]
    flat = ops.reshape(steps, (-1,))
    sums = ops.segment_sum(flat, run, num_segments=n)
    sizes = ops.segment_sum(ops.ones_like(flat), run, num_segments=n)
    return ops.reshape(ops.take(sums / ops.maximum(sizes, 1.0), run), shape)


def lovasz_hinge_rows(errors, labels, valid=None):
    """Lovasz extension of the Jaccard loss applied to hinge errors, one value per row.

    For each row, with the errors sorted in decreasing order and `g` the labels in that order:
    `J_i = 1 - (G - cumsum(g)_i) / (G + cumsum(1 - g)_i)`, `G = sum(g)`, and the value is
    `sum_i relu(e_(i)) (J_i - J_(i-1))`. The gradient flows through the sorted errors only;
    each run of consecutive tied errors of one label shares its steps (errors of any sign: ties
    of mixed labels stay in the sort's order; `lovasz_hinge_unit_rows` puts positives first).

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
    positive = ops.cast(ops.greater(ops.take_along_axis(labels, order, axis=-1), 0.5), errors.dtype)
    total = ops.sum(ops.cast(ops.greater(labels, 0.5), errors.dtype), axis=-1, keepdims=True)
    rank = ops.cast(ops.arange(1, ops.shape(positive)[-1] + 1), errors.dtype)
    steps = _jaccard_steps(positive, total, ops.cumsum(positive, axis=-1), rank)
    # Runs of tied errors of one label share their steps (see `lovasz_hinge_unit_rows`).
    fixed = ops.stop_gradient(sorted_errors)
    same = ops.logical_and(ops.equal(fixed[:, 1:], fixed[:, :-1]), ops.equal(positive[:, 1:], positive[:, :-1]))
    new_run = ops.concatenate([ops.ones_like(same[:, :1]), ops.logical_not(same)], axis=1)
    steps = _run_means(steps, new_run)
    return ops.sum(ops.relu(sorted_errors) * ops.stop_gradient(steps), axis=-1)


def lovasz_hinge_unit_rows(errors, labels):
    """The Lovasz hinge of each row of `errors` in [0, 1] (such as `|m - phi|`).

    Same value as `lovasz_hinge_rows`, faster: the errors' float32 bits are read as int32 (for
    non-negative floats the same order) with the label in the lowest bit, so one integer sort
    per row orders the row by decreasing error with positives first among ties. Each run of
    tied errors of one label shares its Jaccard step equally (see `_tie_averaged`): the
    gradient does not depend on the sort's order among equal values.

    A pixel that cannot matter may be given error 0 and label 0 (padding, pixels left out): it
    ranks after every positive, where the Jaccard step is exactly 0.

    Args:
        errors: `(rows, k)` in [0, 1] (not checked: the bits of a negative error would sort
            wrong); the gradient flows through them.
        labels: `(rows, k)` 0/1; a row without a positive gets 0 (the Lovasz hinge would give
            its largest error).

    Returns:
        `(rows,)`.
    """
    errors = ops.convert_to_tensor(errors)
    labels = ops.cast(labels, errors.dtype)
    bits = float_bits(ops.stop_gradient(errors))
    keys, order = sort_with_indices(bits * 2 + ops.cast(labels, "int32"), descending=True)
    # Counts as float32 are exact up to 2^24 pixels per row.
    positive = ops.cast(ops.bitwise_and(keys, 1), errors.dtype)  # the label, from the key's lowest bit
    total = ops.sum(labels, axis=-1, keepdims=True)
    seen = ops.cumsum(positive, axis=-1)
    union = total + ops.cast(ops.arange(1, ops.shape(keys)[-1] + 1), errors.dtype) - seen  # >= 1
    # J_i - J_(i-1): a positive adds 1 / union, a negative (G - seen) / ((union - 1) union)
    # (union - 1 >= G >= 1 for a negative when G >= 1; a row without positives gets 0).
    # (A blend, not `where`: PyTorch's boolean selection is several times slower on one CPU thread.)
    negative_steps = (total - seen) / ops.maximum(union - 1.0, 1.0)
    steps = (negative_steps + positive * (1.0 - negative_steps)) / union
    if is_concrete(keys):
        steps = _tie_averaged(steps, keys)
    else:
        new_run = ops.concatenate([ops.ones_like(keys[:, :1], "bool"), ops.not_equal(keys[:, 1:], keys[:, :-1])], 1)
        steps = _run_means(steps, new_run)
    sorted_errors = take_along_last(errors, order)
    return ops.sum(sorted_errors * ops.stop_gradient(steps), axis=-1)


def _tie_averaged(steps, keys):
    """Each run of equal keys in a row (one error value, one label) gets the mean of its
    steps, `(rows, k)`. Eager: one pass finds the tied neighbours with `nonzero` (there are
    few), and the runs are worked out on those positions only. The mean over a run of one
    label is a subgradient of the Lovasz extension (the average over the run's orders); the
    value does not change."""
    rows, width = ops.shape(keys)
    # Flat positions p = row * width + j where entry j + 1 continues the run of entry j; p is
    # never a row's last entry, so runs cannot join across rows. Key 0 (error 0, label 0: phi
    # underflowed to 0, pixels left out, padding) sorts after every positive, where every
    # step is exactly 0: that run, often most of a row, is left as it is.
    previous = keys[:, :-1]
    pair_rows, pair_cols = ops.nonzero(ops.logical_and(ops.equal(keys[:, 1:], previous), previous > 0))
    if int(ops.shape(pair_rows)[0]) == 0:
        return steps
    tied = ops.cast(pair_rows, "int32") * width + ops.cast(pair_cols, "int32")  # ascending
    starts = ops.concatenate([ops.ones((1,), "bool"), ops.not_equal(tied[1:], tied[:-1] + 1)], axis=0)
    ends = ops.concatenate([starts[1:], ops.ones((1,), "bool")], axis=0)
    run = ops.cumsum(ops.cast(starts, "int32")) - 1
    runs = int(run[-1]) + 1
    last = tied[ends] + 1  # the entry that closes each run
    flat_steps = ops.reshape(steps, (-1,))
    sums = segment_sum(gather_rows(flat_steps, tied), run, runs) + gather_rows(flat_steps, last)
    sizes = segment_sum(ops.ones_like(run), run, runs) + 1
    means = sums / ops.cast(sizes, steps.dtype)
    at = ops.expand_dims(ops.concatenate([tied, last], axis=0), -1)
    values = ops.concatenate([gather_rows(means, run), means], axis=0)
    return ops.reshape(ops.scatter_update(flat_steps, at, values), ops.shape(steps))


def _per_image(logits, labels):
    logits = ops.convert_to_tensor(logits)
    labels = ops.cast(ops.convert_to_tensor(labels), logits.dtype)
    rank = len(logits.shape)
    if rank not in (4, 5) or len(labels.shape) != rank:
        raise ValueError(
            "Expected logits and labels of shape (batch, height, width, K), or volumes' (batch, depth, height, "
            f"width, K). Received: logits.shape={tuple(logits.shape)}, labels.shape={tuple(labels.shape)}"
        )
    if logits.shape[-1] is not None and labels.shape[-1] is not None and logits.shape[-1] != labels.shape[-1]:
        raise ValueError(
            f"logits and labels disagree on K: logits.shape={tuple(logits.shape)}, labels.shape={tuple(labels.shape)}"
        )
    shape = ops.shape(logits)
    batch, channels = shape[0], shape[-1]
    # rows = (image, channel), columns = pixels (voxels)
    order = (0, rank - 1, *range(1, rank - 1))
    logits = ops.reshape(ops.transpose(logits, order), (batch * channels, -1))
    labels = ops.reshape(ops.transpose(labels, order), (batch * channels, -1))
    valid = ops.greater_equal(labels, 0)
    binary = ops.cast(ops.greater(labels, 0.5), logits.dtype)
    errors = 1.0 - logits * (2.0 * binary - 1.0)
    per_row = lovasz_hinge_rows(errors, binary, valid)
    return ops.mean(ops.reshape(per_row, (batch, channels)), axis=-1)


def lovasz_hinge(logits, labels):
    """Binary Lovasz hinge of every image and channel over its pixels, averaged.

    Args:
        logits: `(batch, height, width, K)` real scores (> 0 means inside); volumes
            `(batch, depth, height, width, K)`, the hinge over each volume's voxels.
        labels: the same shape, 0/1; negative values mark ignored pixels.

    Returns:
        A scalar.
    """
    return ops.mean(_per_image(logits, labels))


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class LovaszHingeLoss(PixelLoss):
    """Binary Lovasz hinge loss (Berman et al. 2018), a convex surrogate of the Jaccard loss.

    `y_true (batch, h, w, K)` 0/1 (negative = ignored pixel), `y_pred (batch, h, w, K)` logits.
    Each image's value is the mean over its K channels of the Lovasz hinge over the h * w
    pixels; Keras' reduction then averages the images. Volumes `(batch, d, h, w, K)` take the
    hinge over the d * h * w voxels.

    Example:

    ```python
    model.compile(optimizer="adam", loss=LovaszHingeLoss())
    ```
    """

    def __init__(self, reduction: str = "sum_over_batch_size", name: str | None = "lovasz_hinge", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        return _per_image(y_pred, y_true)
