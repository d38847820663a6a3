"""Converters between label maps and mask stacks (numpy)."""

from __future__ import annotations

import numpy as np


def label_map_to_masks(label_map, return_ignore: bool = False):
    """`(h, w)` integer label map -> `(M, h, w)` uint8 masks, one per id >= 1 in increasing order.

    Negative values (ignored pixels) are in no mask; with `return_ignore=True` the function also
    returns the `(h, w)` bool map of those pixels.
    """
    labels = np.asarray(label_map)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise ValueError(f"Expected `label_map` of shape (h, w). Received: label_map.shape={labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError(f"Expected integer ids in `label_map`. Received dtype {labels.dtype} with fractions")
        labels = labels.astype(np.int64)
    ids = np.unique(labels[labels > 0])
    masks = (labels[None] == ids[:, None, None]).astype(np.uint8)
    if return_ignore:
        return masks, labels < 0
    return masks


def masks_to_label_map(masks, ignore=None, overlap: str = "ignore") -> np.ndarray:
    """`(M, h, w)` masks -> `(h, w)` int32 label map, mask j becoming id j + 1.

    A label map cannot hold overlaps: `overlap="ignore"` (default) marks pixels in two or more
    masks -1 (ignored, so no loss is told a wrong id), `"last"` gives them the last mask's id.
    Pixels of `ignore` become -1. Empty masks keep their id (no relabelling here).
    """
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"Expected `masks` of shape (M, h, w). Received: masks.shape={m.shape}")
    if overlap not in ("ignore", "last"):
        raise ValueError(
            f"Invalid value for argument `overlap`. Expected 'ignore' or 'last'. Received: overlap={overlap!r}"
        )
    m = m > 0
    count = m.sum(0)
    if m.shape[0] == 0:
        labels = np.zeros(m.shape[1:], np.int32)
    else:
        last = m.shape[0] - np.argmax(m[::-1], axis=0)  # 1-based index of the last mask covering the pixel
        labels = np.where(count > 0, last, 0).astype(np.int32)
        if overlap == "ignore":
            labels[count > 1] = -1
    if ignore is not None:
        labels[np.asarray(ignore, bool)] = -1
    return labels
