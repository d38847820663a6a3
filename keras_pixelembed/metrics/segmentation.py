"""Instance-segmentation metrics on label maps (0 = background), of images `(height, width)` or
of volumes `(depth, height, width)` (every metric counts voxels as it counts pixels)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from keras_pixelembed.validation import require


def _label_map(name: str, labels) -> np.ndarray:
    out = np.asarray(labels)
    if out.ndim not in (2, 3):
        raise ValueError(
            f"Expected `{name}` to be a label map (height, width) or a label volume (depth, height, width). "
            f"Received: {name}.shape={out.shape}"
        )
    is_integer = np.issubdtype(out.dtype, np.integer) or np.issubdtype(out.dtype, np.bool_)
    if not is_integer and (not np.issubdtype(out.dtype, np.floating) or not np.all(np.equal(np.mod(out, 1), 0))):
        raise ValueError(f"Expected `{name}` to hold integer labels. Received dtype {out.dtype}")
    return out.astype(np.int64)


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _label_map("pred", pred), _label_map("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"`pred` and `gt` differ in shape: pred.shape={pred.shape}, gt.shape={gt.shape}")
    return pred, gt


def _contingency(a: np.ndarray, b: np.ndarray):
    """Joint counts of two label arrays of the same shape: `(table, a_ids, b_ids, a_sizes, b_sizes)`,
    `table[i, j]` the number of positions holding `a_ids[i]` in `a` and `b_ids[j]` in `b`."""
    a_ids, a_inv, a_sizes = np.unique(np.ravel(a), return_inverse=True, return_counts=True)
    b_ids, b_inv, b_sizes = np.unique(np.ravel(b), return_inverse=True, return_counts=True)
    flat = np.bincount(a_inv.ravel() * b_ids.size + b_inv.ravel(), minlength=a_ids.size * b_ids.size)
    return flat.reshape(a_ids.size, b_ids.size).astype(np.int64), a_ids, b_ids, a_sizes, b_sizes


def overlaps(pred, gt) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table of the labels >= 1 of both maps.

    Returns:
        `(table, pred_ids, gt_ids, pred_sizes, gt_sizes)`, `table[i, j]` the number of pixels in
        pred segment `pred_ids[i]` and gt segment `gt_ids[j]`; sizes count all pixels of a label.
    """
    table, pred_ids, gt_ids, pred_sizes, gt_sizes = _contingency(*_pair(pred, gt))
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


def _safe(x: float, y: float, empty: float = 1.0) -> float:
    return float(x) / float(y) if y else empty


@dataclass(frozen=True)
class Matching:
    """Instance matching at one IoU threshold (pairs with IoU >= thresh, one-to-one).

    `accuracy` is TP / (TP + FP + FN), the Data Science Bowl's "AP" at that threshold.
    When both maps are empty every ratio is 1 (nothing to find, nothing found).
    """

    thresh: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    mean_matched_iou: float
    panoptic_quality: float

    def as_dict(self) -> dict:
        return asdict(self)


def iou_table(pred, gt):
    """IoU of every pred segment (rows) with every gt segment (columns), labels >= 1."""
    table, _, _, pred_sizes, gt_sizes = overlaps(pred, gt)
    union = pred_sizes[:, None] + gt_sizes[None, :] - table
    return np.where(union > 0, table / np.maximum(union, 1), 0.0)


def _match(iou: np.ndarray, thresh: float) -> np.ndarray:
    """IoUs of the matched pairs: optimal one-to-one assignment among pairs with IoU >= thresh."""
    if iou.size == 0:
        return np.zeros(0)
    if thresh >= 0.5:  # IoU > 0.5 pairs are unique: no assignment problem
        hits = iou >= thresh
        if thresh == 0.5:
            hits &= iou > 0.5
        return iou[hits]
    linear_sum_assignment = require("scipy.optimize", "matching at IoU < 0.5").linear_sum_assignment

    cost = np.where(iou >= thresh, -iou, 0.0)
    rows, cols = linear_sum_assignment(cost)
    ok = iou[rows, cols] >= thresh
    return iou[rows[ok], cols[ok]]


def matching(pred, gt, thresh: float = 0.5) -> Matching:
    """TP / FP / FN and the derived scores of the instances (labels >= 1) of `pred` against `gt`.

    A pred and a gt instance match when their IoU is above `thresh` (strictly above at 0.5,
    which makes matches unique; an optimal assignment below 0.5).
    """
    if isinstance(thresh, bool) or not isinstance(thresh, (int, float)) or not 0 <= thresh <= 1:
        raise ValueError(
            f"Invalid value for argument `thresh`. Expected a number in [0, 1]. Received: thresh={thresh!r}"
        )
    iou = iou_table(pred, gt)
    matched = _match(iou, float(thresh))
    n_pred, n_gt = iou.shape
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_gt - tp
    return Matching(
        thresh=float(thresh),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_safe(tp, tp + fp),
        recall=_safe(tp, tp + fn),
        f1=_safe(2 * tp, 2 * tp + fp + fn),
        accuracy=_safe(tp, tp + fp + fn),
        mean_matched_iou=float(matched.mean()) if tp else (1.0 if n_pred == n_gt == 0 else 0.0),
        panoptic_quality=_safe(matched.sum(), tp + fp / 2 + fn / 2),
    )


def average_precision(pred, gt, thresholds=None) -> float:
    """Mean over IoU thresholds (default 0.5, 0.55, ..., 0.95) of TP / (TP + FP + FN)."""
    if thresholds is None:
        thresholds = np.round(np.arange(0.5, 1.0, 0.05), 2)
    iou = iou_table(pred, gt)
    n_pred, n_gt = iou.shape
    scores = []
    for t in thresholds:
        tp = _match(iou, float(t)).size
        scores.append(_safe(tp, n_pred + n_gt - tp))
    return float(np.mean(scores))


# ---- superpixel metrics (over the gt pixels with label >= 1) ---------------------------


def _labeled(pred, gt):
    pred, gt = _pair(pred, gt)
    keep = gt >= 1
    return pred[keep], gt[keep]


def asa(pred, gt) -> float:
    """Achievable segmentation accuracy: each segment labelled with its best gt object, the
    fraction of the gt pixels (label >= 1) labelled right. 1 when gt has no labelled pixel."""
    p, g = _labeled(pred, gt)
    if p.size == 0:
        return 1.0
    return float(_contingency(p, g)[0].max(axis=1).sum() / p.size)


def undersegmentation_error(pred, gt) -> float:
    """Neubert and Protzel's corrected undersegmentation error over the gt pixels with label >= 1:
    `1/N sum_g sum_{s meets g} min(|s & g|, |s - g|)` (the smaller leak of each segment)."""
    p, g = _labeled(pred, gt)
    if p.size == 0:
        return 0.0
    table = _contingency(p, g)[0]
    sizes = table.sum(axis=1, keepdims=True)
    return float(np.minimum(table, sizes - table)[table > 0].sum() / p.size)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour (volumes: a 6-neighbour) of another label."""
    b = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        ahead = [slice(None)] * labels.ndim
        behind = [slice(None)] * labels.ndim
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        differ = labels[tuple(ahead)] != labels[tuple(behind)]
        b[tuple(ahead)] |= differ
        b[tuple(behind)] |= differ
    return b


def boundary_recall(pred, gt, tolerance: int = 2) -> float:
    """Fraction of the gt boundary pixels (of objects, label >= 1) that have a pred boundary pixel
    within `tolerance` pixels (Chebyshev distance). 1 when gt has no boundary."""
    pred, gt = _pair(pred, gt)
    tolerance = int(tolerance)
    gt_b = _boundaries(gt) & (gt >= 1)
    if not gt_b.any():
        return 1.0
    maximum_filter = require("scipy.ndimage", "boundary_recall").maximum_filter

    near = maximum_filter(_boundaries(pred).astype(np.uint8), size=2 * tolerance + 1) > 0
    return float((near & gt_b).sum() / gt_b.sum())


def n_segments(labels) -> int:
    """Number of distinct labels >= 1."""
    labels = _label_map("labels", labels)
    return int(np.unique(labels[labels >= 1]).size)


def _domain(pred, gt, labeled_only: bool):
    pred, gt = _pair(pred, gt)
    keep = gt >= (1 if labeled_only else 0)
    return pred[keep], gt[keep]


def adjusted_rand_index(pred, gt, labeled_only: bool = False) -> float:
    """Adjusted Rand index of the two partitions over the gt pixels >= 0 (>= 1 if `labeled_only`)."""
    p, g = _domain(pred, gt, labeled_only)
    n = p.size
    if n < 2:
        return 1.0
    table = _contingency(p, g)[0].astype(np.float64)
    comb = lambda x: x * (x - 1) / 2.0  # noqa: E731
    index = comb(table).sum()
    a, b = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = a * b / comb(n)
    top = (a + b) / 2.0
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))


def variation_of_information(pred, gt, labeled_only: bool = False) -> float:
    """Variation of information H(P|G) + H(G|P) in nats, over the gt pixels >= 0 (or >= 1)."""
    p, g = _domain(pred, gt, labeled_only)
    if p.size == 0:
        return 0.0
    joint = _contingency(p, g)[0] / p.size
    pp, pg = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    rows, cols = np.nonzero(joint)
    j = joint[rows, cols]
    return float(-(j * (np.log(j / pp[rows, 0]) + np.log(j / pg[0, cols]))).sum())
