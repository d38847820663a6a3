"""Seed clustering of spatial embeddings (Neven et al. 2019), vectorized per proposal."""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from keras_pixelembed.ops.spatial import LN2, bandwidth, decode_spatial
from keras_pixelembed.validation import check_finite, check_fraction, check_integer, check_map, check_number


def spatial_embedding_parts(pred, pixel_size: float = 1.0 / 1024, sigma_scale: float = 10.0):
    """Embeddings `(h, w, 2)`, bandwidths `exp(sigma_scale * sigma)` `(h, w, 2)` and seeds `(h, w)`
    of one image's raw head output `(h, w, 2 + n_sigma + 1)`, as numpy arrays (decoded by
    `keras_pixelembed.ops.spatial.decode_spatial`, the loss's own decoding)."""
    pred = check_map("pred", pred, 3, min_channels=4)
    n_sigma = _n_sigma(pred)
    parts = decode_spatial(ops.convert_to_tensor(pred), pixel_size, n_sigma)
    bandwidths = bandwidth(parts.sigma, sigma_scale)
    return tuple(ops.convert_to_numpy(x) for x in (parts.embeddings, bandwidths, parts.seeds))


def _n_sigma(pred) -> int:
    """Bandwidth channels of a head output `(h, w, 2 + n_sigma + 1)`, 1 or 2, or a ValueError."""
    n_sigma = pred.shape[-1] - 3
    if n_sigma not in (1, 2):
        raise ValueError(
            f"Expected `pred` with 2 + n_sigma + 1 channels, n_sigma 1 or 2. Received: pred.shape={pred.shape}"
        )
    return n_sigma


def _foreground(pred, pixel_size, sigma_scale, fg_threshold, band_pixels: int = 1 << 20):
    """The foreground pixels' flat indices, embeddings `(F, 2)`, bandwidths `(F, 2)` and seeds
    `(F,)` (float32, the graph's arithmetic), decoded by `decode_spatial` in bands of rows so
    that memory follows the foreground, not the image."""
    pred = check_map("pred", pred, 3, min_channels=4, finite=False)  # checked band by band: no full-size mask
    h, w = pred.shape[:2]
    n_sigma = _n_sigma(pred)
    rows = max(1, band_pixels // max(w, 1))
    for top in range(0, h, rows):
        check_finite("pred", pred[top : top + rows])
    indices, embeddings, bandwidths, seeds = [], [], [], []
    for top in range(0, h, rows):  # pred is float32 (check_map), so is everything decoded from it
        band = decode_spatial(ops.convert_to_tensor(pred[top : top + rows]), pixel_size, n_sigma, origin=(top, 0))
        band_seeds = ops.convert_to_numpy(band.seeds).ravel()
        keep = np.flatnonzero(band_seeds > fg_threshold)
        indices.append((keep + top * w).astype(np.int32))
        embeddings.append(ops.convert_to_numpy(band.embeddings).reshape(-1, 2)[keep])
        bandwidths.append(ops.convert_to_numpy(bandwidth(band.sigma, sigma_scale)).reshape(-1, 2)[keep])
        seeds.append(band_seeds[keep])
    if not indices:  # an image of height 0
        return np.zeros(0, np.int32), np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0), (h, w)
    return (*(np.concatenate(parts) for parts in (indices, embeddings, bandwidths, seeds)), (h, w))


def spatial_embedding_instances(
    pred,
    seed_threshold: float = 0.9,
    fg_threshold: float = 0.5,
    min_size: int = 10,
    pixel_size: float = 1.0 / 1024,
    sigma_scale: float = 10.0,
    max_instances: int | None = None,
) -> np.ndarray:
    """Instances from one image's spatial-embedding output, greedily by seed (as in the paper).

    Foreground is `seed > fg_threshold`. While the unassigned foreground pixel with the highest
    seed exceeds `seed_threshold`, it becomes a center with its own embedding and bandwidth;
    the proposal is every foreground pixel with `phi > 0.5`, i.e.
    `sum_c bw_c (e_c - center_c)^2 < ln 2`. The proposal becomes a new instance when it has
    more than `min_size` pixels and more than half of them are unassigned; its pixels are
    marked either way, so the loop ends.

    Each proposal only looks at the pixels whose row embedding lies within the bandwidth's
    reach (`|dy| < sqrt(ln 2 / bw_y)`, a binary search in the pixels sorted once), so the cost
    is that of the objects, not of the image times the objects.

    Args:
        pred: `(height, width, 2 + n_sigma + 1)` raw output of `SpatialEmbeddingHead`.
        seed_threshold: smallest seed that starts an instance. Defaults to `0.9`.
        fg_threshold: seed above which a pixel is foreground. Defaults to `0.5`.
        min_size: proposals of at most this many pixels are dropped. Defaults to `10`.
        pixel_size, sigma_scale: as in `SpatialEmbeddingLoss`.
        max_instances: stop after this many instances (the bound of the in-graph
            `layers.SeedClustering`); the pixels not in an instance by then stay 0. Defaults to
            `None`, no bound.

    Returns:
        `(height, width)` int32 label map, 0 = background, instances 1..N by decreasing seed.
    """
    seed_threshold = check_fraction("seed_threshold", seed_threshold)
    fg_threshold = check_fraction("fg_threshold", fg_threshold)
    min_size = check_integer("min_size", min_size, minimum=0)
    pixel_size = check_number("pixel_size", pixel_size, minimum=0.0, strict=True)
    sigma_scale = check_number("sigma_scale", sigma_scale)
    max_instances = check_integer("max_instances", max_instances, minimum=1, allow_none=True)
    fg, emb, bw, seed, (h, w) = _foreground(pred, pixel_size, sigma_scale, fg_threshold)
    labels = np.zeros(h * w, np.int32)
    if fg.size == 0:
        return labels.reshape(h, w)
    by_seed = np.argsort(-seed, kind="stable").astype(np.int32)
    n_start = int(np.searchsorted(-seed[by_seed], -seed_threshold, side="right"))
    by_row = np.argsort(emb[:, 0], kind="stable").astype(np.int32)
    rows_sorted = emb[by_row, 0]
    unassigned = np.ones(fg.size, bool)
    fg_labels = np.zeros(fg.size, np.int32)
    count, pointer = 0, 0
    while pointer < n_start and (max_instances is None or count < max_instances):
        ahead = unassigned[by_seed[pointer:n_start]]
        if not ahead.any():
            break
        pointer += int(np.argmax(ahead))
        center = by_seed[pointer]
        pointer += 1
        cy, cx = emb[center]
        by, bx = bw[center]
        reach = math.sqrt(LN2 / by) if by > 0 else math.inf
        lo = int(np.searchsorted(rows_sorted, cy - reach, side="left"))
        hi = int(np.searchsorted(rows_sorted, cy + reach, side="right"))
        candidates = by_row[lo:hi]
        d = by * (emb[candidates, 0] - cy) ** 2 + bx * (emb[candidates, 1] - cx) ** 2
        proposal = candidates[d < LN2]  # holds the center itself (d = 0)
        free = int(np.count_nonzero(unassigned[proposal]))
        unassigned[center] = False
        if proposal.size > min_size and 2 * free > proposal.size:
            count += 1
            fg_labels[proposal] = count
        unassigned[proposal] = False
    labels[fg] = fg_labels
    return labels.reshape(h, w)
