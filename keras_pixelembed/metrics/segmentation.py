"""Instance-segmentation metrics on label maps (0 = background)."""

from __future__ import annotations

import numpy as np


def _label_map(name: str, labels) -> np.ndarray:
    out = np.asarray(labels)
    if out.ndim != 2:
        raise ValueError(f"Expected `{name}` to be a label map (height, width). Received: {name}.shape={out.shape}")
    if not (np.issubdtype(out.dtype, np.integer) or np.issubdtype(out.dtype, np.bool_)):
        if not np.issubdtype(out.dtype, np.floating) or not np.all(np.equal(np.mod(out, 1), 0)):
            raise ValueError(f"Expected `{name}` to hold integer labels. Received dtype {out.dtype}")
    return out.astype(np.int64)


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _label_map("pred", pred), _label_map("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"`pred` and `gt` differ in shape: pred.shape={pred.shape}, gt.shape={gt.shape}")
    return pred, gt


def overlaps(pred, gt) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table of the labels >= 1 of both maps.

    Returns:
        `(table, pred_ids, gt_ids, pred_sizes, gt_sizes)`, `table[i, j]` the number of pixels in
        pred segment `pred_ids[i]` and gt segment `gt_ids[j]`; sizes count all pixels of a label.
    """
    pred, gt = _pair(pred, gt)
    pred_ids, pred_inv, pred_sizes = np.unique(pred.ravel(), return_inverse=True, return_counts=True)
    gt_ids, gt_inv, gt_sizes = np.unique(gt.ravel(), return_inverse=True, return_counts=True)
    table = np.zeros((pred_ids.size, gt_ids.size), np.int64)
    np.add.at(table, (pred_inv, gt_inv), 1)
    keep_p, keep_g = pred_ids >= 1, gt_ids >= 1
    return table[keep_p][:, keep_g], pred_ids[keep_p], gt_ids[keep_g], pred_sizes[keep_p], gt_sizes[keep_g]


def _best_dice(table: np.ndarray, sizes_a: np.ndarray, sizes_b: np.ndarray) -> float:
    """Mean over the segments of A of the best Dice with any segment of B (rows of `table`)."""
    if sizes_a.size == 0:
        return 1.0 if sizes_b.size == 0 else 0.0
    if sizes_b.size == 0:
        return 0.0
    dice = 2.0 * table / (sizes_a[:, None] + sizes_b[None, :])
    return float(dice.max(axis=1).mean())


def sbd(pred, gt) -> float:
    """Symmetric best Dice (CVPPP leaf segmentation): min(BD(pred, gt), BD(gt, pred)).

    BD(A, B) is the mean over the segments of A (labels >= 1) of their best Dice with a segment
    of B. Both empty: 1. One empty: 0.
    """
    table, _, _, pred_sizes, gt_sizes = overlaps(pred, gt)
    return min(_best_dice(table, pred_sizes, gt_sizes), _best_dice(table.T, gt_sizes, pred_sizes))


def dic(pred, gt) -> int:
    """Difference in count: number of pred segments minus number of gt segments (labels >= 1)."""
    _, pred_ids, gt_ids, _, _ = overlaps(pred, gt)
    return int(pred_ids.size - gt_ids.size)
