"""The mask-set convention shared by every loss.

`y_true` is either

* a **label map** `(batch, height, width)` or `(batch, height, width, 1)`: value `k >= 1`
  marks the pixels of mask `k`, `0` marks pixels in no mask, negative values mark ignored
  pixels (left out of Omega and of every term); or
* a **mask stack** `(batch, height, width, M)` with `M >= 2`: channel `j` is mask `j`, values
  0/1, masks may overlap, an all-zero channel is padding; a pixel with a negative value in any
  channel is ignored (`make_dataset(output="masks")` writes -1 in every channel there).

Volumes are the same with a depth axis: label maps `(batch, depth, height, width[, 1])`, mask
stacks `(batch, depth, height, width, M)`, beside `y_pred (batch, depth, height, width, channels)`;
`y_pred`'s rank says which.

Keras casts `y_true` to the loss dtype, so the two are told apart by shape only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from keras import ops

from keras_pixelembed.ops._backend import is_concrete
from keras_pixelembed.validation import check_integer


class MaskSet(NamedTuple):
    """Masks of a batch, flattened over pixels. Exactly one of `labels` and `masks` is set.

    Attributes:
        labels: `(batch, pixels)` int32 for a label map: -1 ignored, 0 in no mask,
            `1..num_slots` the mask id. `None` for a mask stack.
        masks: `(batch, pixels, num_slots)` float 0/1 for a mask stack. `None` for a label map.
        valid: `(batch, pixels)` float 0/1, the pixels of Omega.
        num_slots: K, the static number of mask slots.
    """

    labels: object
    masks: object
    valid: object
    num_slots: int


def validate_max_instances(max_instances) -> int:
    return check_integer("max_instances", max_instances, minimum=1)


def spatial_rank(y_pred) -> int:
    """2 for images `(batch, height, width, channels)`, 3 for volumes `(batch, depth, height,
    width, channels)`; anything else is an error naming the shape."""
    rank = len(y_pred.shape)
    if rank not in (4, 5):
        raise ValueError(
            "Expected `y_pred` of shape (batch, height, width, channels) or, for volumes, (batch, depth, height, "
            f"width, channels). Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    return rank - 2


def _check_shapes(y_true, y_pred) -> int:
    dims = spatial_rank(y_pred)
    axes = ("height", "width") if dims == 2 else ("depth", "height", "width")
    spatial = ", ".join(axes)
    if len(y_true.shape) not in (dims + 1, dims + 2):
        raise ValueError(
            f"Expected `y_true` to be a label map (batch, {spatial}[, 1]) or a mask stack "
            f"(batch, {spatial}, M) for y_pred.shape={tuple(y_pred.shape)}. Received: y_true.shape={tuple(y_true.shape)}"
        )
    for axis, name in enumerate(axes, start=1):
        a, b = y_true.shape[axis], y_pred.shape[axis]
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"`y_true` and `y_pred` disagree on {name}: y_true.shape={tuple(y_true.shape)}, "
                f"y_pred.shape={tuple(y_pred.shape)}"
            )
    return dims


def is_label_map(y_true, dims: int = 2) -> bool:
    """A `y_true` of rank `dims + 1` or with one channel is a label map; two or more channels
    are a mask stack (`dims`: 2 for images, 3 for volumes)."""
    return len(y_true.shape) == dims + 1 or y_true.shape[-1] == 1


def parse_mask_set(y_true, y_pred, max_instances: int, dtype="float32") -> MaskSet:
    """Turns `y_true` (label map or mask stack) into dense masks over flattened pixels.

    Args:
        y_true: label map `(batch, height, width[, 1])` or mask stack `(batch, height, width, M)`
            (volumes: with a depth axis after the batch).
        y_pred: `(batch, height, width, channels)` or `(batch, depth, height, width, channels)`,
            used for shape checks only.
        max_instances: number of mask slots of a label map (ids `1..max_instances`), and the
            largest number of channels accepted in a mask stack.
        dtype: float dtype of the returned masks.

    Returns:
        A `MaskSet`. A label map keeps its ids (`labels (batch, height * width)`, nothing of
        size pixels x masks is built for it); a mask stack gives `masks (batch, pixels, M)`.

    Raises:
        ValueError: on bad shapes, a mask stack with more than `max_instances` channels, or
            (when values are known, i.e. outside `jit`) a label id above `max_instances`.
    """
    max_instances = validate_max_instances(max_instances)
    dims = _check_shapes(y_true, y_pred)
    batch = ops.shape(y_true)[0]
    if is_label_map(y_true, dims):
        labels = y_true[..., 0] if len(y_true.shape) == dims + 2 else y_true
        labels = ops.cast(ops.round(ops.cast(labels, "float32")), "int32")
        labels = ops.reshape(labels, (batch, -1))
        num_slots = max_instances
        concrete = is_concrete(labels)
        if concrete:
            largest = int(ops.max(labels)) if math.prod(labels.shape) else 0
            if largest > max_instances:
                raise ValueError(
                    f"`y_true` holds label id {largest}, above `max_instances={max_instances}`. "
                    "Ids above the bound would be dropped: raise `max_instances`, or relabel "
                    "the ids to 1..K (the data pipeline does this)."
                )
            # Eager calls only pay for the slots in use (a multiple of 8, to limit distinct shapes);
            # under jit every call has `max_instances` slots.
            num_slots = min(max_instances, 8 * max(1, -(-largest // 8)))
        # Under jit a value check cannot raise: ids above the bound are left out of Omega
        # (ignored) rather than counted as background. `make_dataset` checks before batching.
        # (Eager calls have checked that no id is above `num_slots`.)
        labels = ops.maximum(labels, -1)
        if not concrete:
            labels = ops.where(ops.greater(labels, num_slots), -1, labels)
        valid = ops.cast(ops.greater_equal(labels, 0), dtype)
        return MaskSet(labels=labels, masks=None, valid=valid, num_slots=num_slots)

    channels = y_true.shape[-1]
    if channels is None:
        raise ValueError(
            f"The number of channels of `y_true` must be static. Received: y_true.shape={tuple(y_true.shape)}"
        )
    if channels > max_instances:
        raise ValueError(
            f"`y_true` is a mask stack of {channels} channels, above `max_instances={max_instances}`. "
            "Raise `max_instances` so that no mask is dropped."
        )
    y_float = ops.reshape(ops.cast(y_true, "float32"), (batch, -1, channels))
    valid = ops.cast(ops.logical_not(ops.any(ops.less(y_float, 0), axis=-1)), dtype)
    masks = ops.cast(ops.greater(y_float, 0.5), dtype) * ops.expand_dims(valid, -1)
    return MaskSet(labels=None, masks=masks, valid=valid, num_slots=channels)
