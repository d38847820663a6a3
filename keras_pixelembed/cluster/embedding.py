"""Clustering of per-pixel embeddings: greedy balls, mean shift, SLIC in the learned space."""

from __future__ import annotations

import math

import numpy as np

from keras_pixelembed.cluster.postprocess import connected_components, merge_small
from keras_pixelembed.validation import check_choice, check_integer, check_map, check_number, require

GOLDEN = 0.618034


def _flat(embeddings) -> tuple[np.ndarray, tuple[int, int]]:
    z = check_map("embeddings", embeddings, 3)
    return np.ascontiguousarray(z.reshape(-1, z.shape[-1])), z.shape[:2]


def _finish(labels: np.ndarray, shape, min_size: int, connected: bool) -> np.ndarray:
    labels = labels.reshape(shape)
    if connected:
        labels = connected_components(labels, background=None)
    if min_size > 1:
        labels = merge_small(labels, min_size, background=None)
    return labels.astype(np.int32)


def spread_order(n: int) -> np.ndarray:
    """Priorities `frac(i * 0.618034)` (float32) of pixels `i = 0..n-1`: the golden-ratio
    sequence, a fixed order that spreads over the image like a random one (ball starts in this
    order cluster as well as random starts, and the graph computes the same numbers)."""
    x = np.arange(n).astype(np.float32) * np.float32(GOLDEN)
    return x - np.floor(x)


def greedy_ball(
    embeddings,
    radius: float,
    min_size: int = 10,
    connected: bool = True,
    seed: int = 0,
    start: str = "random",
    max_instances: int | None = None,
) -> np.ndarray:
    """The discriminative-loss paper's clustering: balls of `radius` around local means.

    Repeatedly: pick an unassigned pixel (at random, `seed`; or with `start="spread"` the one
    first in a fixed quasi-random order, `spread_order`, as the in-graph
    `layers.BallClustering` does), take the unassigned pixels within
    `radius` of its embedding, and make the unassigned pixels within `radius` of their mean a
    segment. Then (`connected=True`) each segment is split into its 4-connected pieces, and
    pieces smaller than `min_size` are merged into the neighbour with the longest shared border.
    `radius` is `delta_v` (or the discriminative paper's `delta_d`-based bandwidth) of the loss.

    Args:
        embeddings: `(height, width, channels)`.
        radius: ball radius in embedding units.
        min_size: smallest segment kept. Defaults to `10`.
        connected: split segments into connected pieces. Defaults to `True`.
        seed: order in which starting pixels are picked.
        start: `"random"` (default) or `"spread"`.
        max_instances: stop after this many balls; pixels left over get 0 (the bound of the
            in-graph layer). Defaults to `None`, no bound.

    Returns:
        `(height, width)` int32 labels 1..N (every pixel gets a segment).
    """
    radius = check_number("radius", radius, minimum=0.0, strict=True)
    min_size = check_integer("min_size", min_size, minimum=0)
    max_instances = check_integer("max_instances", max_instances, minimum=1, allow_none=True)
    check_choice("start", start, ("random", "spread"))
    z, shape = _flat(embeddings)
    n = z.shape[0]
    labels = np.zeros(n, np.int64)
    remaining = np.arange(n)
    rng = np.random.default_rng(seed)
    r2 = radius * radius
    count = 0
    priority = spread_order(n) if start == "spread" else None
    while remaining.size and (max_instances is None or count < max_instances):
        zr = z[remaining]
        if priority is None:
            first = zr[rng.integers(0, remaining.size)]
        else:
            first = zr[np.argmax(priority[remaining])]
        near = np.einsum("pc,pc->p", zr - first, zr - first) <= r2
        center = zr[near].mean(0)
        inside = np.einsum("pc,pc->p", zr - center, zr - center) <= r2
        if not inside.any():
            inside = near
        count += 1
        labels[remaining[inside]] = count
        remaining = remaining[~inside]
    return _finish(labels, shape, min_size, connected)


def mean_shift(
    embeddings,
    bandwidth: float,
    max_points: int = 20000,
    max_seeds: int = 500,
    max_iter: int = 30,
    min_size: int = 10,
    connected: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Flat-kernel mean shift on a sub-sample, then every pixel to its nearest mode.

    Seeds are the centres of occupied bins of side `bandwidth` (at most `max_seeds`); each seed
    moves to the mean of the sample points within `bandwidth` until it stops; modes closer
    than `bandwidth` are merged (the one with more points wins). A 512 x 512 image costs about
    `max_seeds x max_points` distance evaluations per iteration, whatever its size.

    Returns:
        `(height, width)` int32 labels 1..N.
    """
    bandwidth = check_number("bandwidth", bandwidth, minimum=0.0, strict=True)
    z, shape = _flat(embeddings)
    rng = np.random.default_rng(seed)
    sample = z if z.shape[0] <= max_points else z[rng.choice(z.shape[0], max_points, replace=False)]
    bins, counts = np.unique(np.floor(sample / bandwidth).astype(np.int64), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_seeds]
    seeds = (bins[order] + 0.5) * bandwidth
    b2 = bandwidth * bandwidth
    s_sq = np.einsum("pc,pc->p", sample, sample)
    for _ in range(max_iter):
        d2 = np.einsum("kc,kc->k", seeds, seeds)[:, None] - 2.0 * seeds @ sample.T + s_sq[None]
        within = d2 <= b2
        n_in = within.sum(1)
        moved = np.where(n_in[:, None] > 0, (within @ sample) / np.maximum(n_in, 1)[:, None], seeds)
        shift = np.abs(moved - seeds).max()
        seeds = moved
        if shift < 1e-3 * bandwidth:
            break
    strength = n_in
    modes = []
    for k in np.argsort(-strength, kind="stable"):
        if strength[k] == 0:
            continue
        if all(np.sum((seeds[k] - m) ** 2) > b2 for m in modes):
            modes.append(seeds[k])
    modes = np.array(modes) if modes else z.mean(0, keepdims=True)
    d2 = np.einsum("kc,kc->k", modes, modes)[None] - 2.0 * z @ modes.T
    labels = np.argmin(d2, axis=1) + 1
    return _finish(labels, shape, min_size, connected)


def embedding_slic(
    embeddings,
    n_segments: int = 100,
    compactness: float = 10.0,
    max_iter: int = 10,
    min_size: int | None = None,
    enforce_connectivity: bool = True,
) -> np.ndarray:
    """SLIC in the learned space: k-means on [embedding, position] with a limited spatial window.

    Centres start on a regular grid of step `S = sqrt(h w / n_segments)`; each pixel compares
    itself only with the centres of its own and the 8 neighbouring grid cells, with the SLIC
    distance `D^2 = |e - e_k|^2 + (compactness / S)^2 |xy - xy_k|^2` (positions in pixels).
    With embeddings equal to the CIELAB color (what a zero network gives in the residual
    formulation, up to the color space) this is ordinary SLIC. Vectorized per grid cell: the
    pixels of a cell against its 9 candidate centres are one batched matrix product.

    Args:
        embeddings: `(height, width, channels)`.
        n_segments: approximate number of superpixels.
        compactness: weight of position against embedding.
        max_iter: k-means iterations.
        min_size: segments smaller than this are merged into a neighbour (default `S^2 / 4`).
        enforce_connectivity: split segments into connected pieces before merging.

    Returns:
        `(height, width)` int32 labels 1..N.
    """
    sparse = require("scipy.sparse", "embedding_slic")

    n_segments = check_integer("n_segments", n_segments, minimum=1)
    compactness = check_number("compactness", compactness, minimum=0.0)
    z = check_map("embeddings", embeddings, 3)
    h, w, c = z.shape
    step = max(1, int(round(math.sqrt(h * w / n_segments))))
    gh, gw = -(-h // step), -(-w // step)
    ph, pw = gh * step, gw * step
    rows, cols = np.mgrid[:ph, :pw].astype(np.float32)
    weight = np.float32(compactness / step)
    feats = np.concatenate(
        [
            np.pad(z, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge"),
            (rows * weight)[..., None],
            (cols * weight)[..., None],
        ],
        axis=-1,
    )
    valid = np.zeros((ph, pw), bool)
    valid[:h, :w] = True
    # blocks: (gh, gw, step * step, c + 2)
    blocks = feats.reshape(gh, step, gw, step, c + 2).transpose(0, 2, 1, 3, 4).reshape(gh, gw, step * step, c + 2)
    block_valid = valid.reshape(gh, step, gw, step).transpose(0, 2, 1, 3).reshape(gh, gw, step * step)
    # initial centres: the mean of each cell's valid pixels
    vsum = block_valid.sum(-1, keepdims=True)
    centres = (blocks * block_valid[..., None]).sum(2) / np.maximum(vsum, 1)
    cell_id = np.arange(gh * gw).reshape(gh, gw)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    # candidate centre ids of each cell (-1 outside the grid)
    padded_ids = np.pad(cell_id, 1, constant_values=-1)
    cand = np.stack([padded_ids[1 + dy : 1 + dy + gh, 1 + dx : 1 + dx + gw] for dy, dx in offsets], -1)
    b_sq = np.einsum("ijpc,ijpc->ijp", blocks, blocks)
    flat_valid = block_valid.reshape(-1)
    valid_feats = blocks.reshape(-1, c + 2)[flat_valid]
    n_valid = valid_feats.shape[0]
    centres = centres.astype(np.float32)
    for _ in range(max_iter):
        flat_centres = centres.reshape(-1, c + 2)
        cc = flat_centres[np.maximum(cand, 0)]  # (gh, gw, 9, c + 2)
        d2 = (
            b_sq[..., None]
            - 2.0 * np.matmul(blocks, cc.transpose(0, 1, 3, 2))
            + np.einsum("ijkc,ijkc->ijk", cc, cc)[:, :, None, :]
        )
        d2 = np.where((cand < 0)[:, :, None, :], np.inf, d2)
        assign = np.take_along_axis(cand[:, :, None, :], np.argmin(d2, -1)[..., None], -1)[..., 0].reshape(-1)
        a = assign[flat_valid]
        members = sparse.csr_matrix((np.ones(n_valid, np.float32), (a, np.arange(n_valid))), shape=(gh * gw, n_valid))
        sums = members @ valid_feats
        n_in = np.bincount(a, minlength=gh * gw)
        new = np.where(n_in[:, None] > 0, sums / np.maximum(n_in, 1)[:, None], flat_centres).astype(np.float32)
        moved = np.abs(new - flat_centres).max()
        centres = new.reshape(gh, gw, c + 2)
        if moved < 1e-4:
            break
    labels = assign.reshape(gh, gw, step, step).transpose(0, 2, 1, 3).reshape(ph, pw)[:h, :w] + 1
    if min_size is None:
        min_size = max(1, step * step // 4)
    return _finish(labels, (h, w), min_size, enforce_connectivity)
