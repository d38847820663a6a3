"""Connected components and merging of small segments (numpy + scikit-image)."""

from __future__ import annotations

import numpy as np

from keras_pixelembed.validation import check_integer, require


def _label(image, connectivity=1):
    label = require("skimage.measure", "connected components").label
    return label(image, background=-1, connectivity=connectivity)


def connected_components(labels, background: int | None = 0) -> np.ndarray:
    """Splits every label into its 4-connected pieces; returns int32 ids 1..N.

    Pixels equal to `background` stay 0 (pass `None` to split every value, 0 included).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"Expected `labels` of shape (height, width). Received: labels.shape={labels.shape}")
    shifted = labels.astype(np.int64)
    if background is not None:
        keep = shifted != background
        shifted = np.where(keep, shifted - shifted.min() + 1, 0)
        pieces = _label(shifted, 1) * keep  # background pixels form their own pieces: drop them
        ids, inverse = np.unique(pieces, return_inverse=True)
        out = inverse.reshape(labels.shape).astype(np.int32)
        return out if ids[0] == 0 else out + 1
    return _label(shifted - shifted.min(), 1).astype(np.int32) + 1


def _neighbour_pairs(labels: np.ndarray):
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    differ = a != b
    a, b = a[differ], b[differ]
    return np.concatenate([a, b]), np.concatenate([b, a])


def merge_small(labels, min_size: int, background: int | None = 0, max_rounds: int = 10) -> np.ndarray:
    """Merges every segment smaller than `min_size` pixels into the neighbour with which it shares
    the longest border (not into `background`); returns int32 ids 1..N (background stays 0).

    A small segment without any neighbour but the background is kept (nothing to merge into).
    """
    min_size = check_integer("min_size", min_size, minimum=0)
    out = np.asarray(labels).astype(np.int64)
    for _ in range(max_rounds):
        ids, inverse, sizes = np.unique(out, return_inverse=True, return_counts=True)
        dense = inverse.reshape(out.shape)
        small = sizes < min_size
        if background is not None:
            small &= ids != background
        if not small.any():
            break
        a, b = _neighbour_pairs(dense)
        ok = small[a]
        if background is not None:
            ok &= ids[b] != background
        a, b = a[ok], b[ok]
        if a.size == 0:
            break
        n = ids.size
        pair, count = np.unique(a * n + b, return_counts=True)
        src, dst = pair // n, pair % n
        # for each small segment the neighbour with the longest border (ties: the larger one)
        order = np.lexsort((-sizes[dst], -count, src))
        src, dst = src[order], dst[order]
        first = np.r_[True, src[1:] != src[:-1]]
        target = np.arange(n)
        target[src[first]] = dst[first]
        # two small segments pointing at each other: the larger (then higher id) one stays put
        mutual = (target[target] == np.arange(n)) & (target != np.arange(n))
        stays = mutual & ((sizes > sizes[target]) | ((sizes == sizes[target]) & (np.arange(n) > target)))
        target[stays] = np.flatnonzero(stays)
        for _ in range(32):  # follow chains of small segments to their final target
            nxt = target[target]
            if np.array_equal(nxt, target):
                break
            target = nxt
        out = ids[target[dense]]
    ids, inverse = np.unique(out, return_inverse=True)
    result = inverse.reshape(out.shape).astype(np.int32)
    if background is not None and background in ids:
        bg = int(np.searchsorted(ids, background))
        result = np.where(result == bg, 0, np.where(result < bg, result + 1, result)).astype(np.int32)
    else:
        result += 1
    return result
