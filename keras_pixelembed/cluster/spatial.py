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


def _n_sigma(pred, dims: int = 2) -> int:
    """Bandwidth channels of a head output `(h, w, 2 + n_sigma + 1)` (volumes, `dims=3`:
    `(d, h, w, 3 + n_sigma + 1)`), 1 or `dims`, or a ValueError."""
    n_sigma = pred.shape[-1] - dims - 1
    if n_sigma not in (1, dims):
        raise ValueError(
            f"Expected `pred` with {dims} + n_sigma + 1 channels, n_sigma 1 or {dims}. Received: pred.shape={pred.shape}"
        )
    return n_sigma


class _Foreground:
    """The foreground pixels of one image, gathered band by band of rows (volumes: of slices), so
    that memory follows the foreground, not the image: flat indices, embeddings `(F, dims)` and
    seeds `(F,)`, and the bandwidths of the start pixels only (seed >= `seed_threshold`: only
    centers need one), float32 as the graph computes them (`decode_spatial`)."""

    def __init__(
        self, plane: int, pixel_size, sigma_scale, fg_threshold, seed_threshold, check=True, dims=2, z_spacing=1.0
    ):
        """`plane`: pixels per row (images) or per slice (volumes)."""
        self.plane, self.pixel_size, self.sigma_scale = plane, pixel_size, sigma_scale
        self.fg_threshold, self.seed_threshold, self.check = fg_threshold, seed_threshold, check
        self.dims, self.z_spacing = dims, z_spacing
        self.parts = {"indices": [], "embeddings": [], "seeds": [], "start_bandwidths": []}

    def add(self, top: int, band) -> None:
        """Rows `top .. top + len(band)` of the image's head output `(rows, width, channels)`
        (volumes: slices, `(slices, height, width, channels)`)."""
        band = np.asarray(band, np.float32)
        if self.check:
            check_finite("pred", band)
        dims = self.dims
        origin = (top,) + (0,) * (dims - 1)
        parts = decode_spatial(
            ops.convert_to_tensor(band),
            self.pixel_size,
            _n_sigma(band, dims),
            origin=origin,
            dims=dims,
            z_spacing=self.z_spacing,
        )
        seeds = ops.convert_to_numpy(parts.seeds).ravel()
        keep = np.flatnonzero(seeds > self.fg_threshold)
        kept_seeds = seeds[keep]
        starts = keep[kept_seeds >= self.seed_threshold]
        bandwidths = ops.convert_to_numpy(bandwidth(parts.sigma, self.sigma_scale, dims)).reshape(-1, dims)
        self.parts["indices"].append((keep + top * self.plane).astype(np.int64 if dims == 3 else np.int32))
        self.parts["embeddings"].append(ops.convert_to_numpy(parts.embeddings).reshape(-1, dims)[keep])
        self.parts["seeds"].append(kept_seeds)
        self.parts["start_bandwidths"].append(bandwidths[starts])

    def finish(self) -> dict:
        """The arrays, each concatenated once its parts are dropped (one array's size extra)."""
        d = self.dims
        empty = {"indices": (0,), "embeddings": (0, d), "seeds": (0,), "start_bandwidths": (0, d)}
        done = {}
        for name, shape in empty.items():
            parts = self.parts.pop(name)
            done[name] = (
                np.concatenate(parts) if parts else np.zeros(shape, np.int32 if name == "indices" else np.float32)
            )
            del parts
        return done


def _check_thresholds(seed_threshold, fg_threshold, min_size, pixel_size, sigma_scale, max_instances) -> tuple:
    return (
        check_fraction("seed_threshold", seed_threshold),
        check_fraction("fg_threshold", fg_threshold),
        check_integer("min_size", min_size, minimum=0),
        check_number("pixel_size", pixel_size, minimum=0.0, strict=True),
        check_number("sigma_scale", sigma_scale),
        check_integer("max_instances", max_instances, minimum=1, allow_none=True),
    )


def spatial_embedding_instances(
    pred,
    seed_threshold: float = 0.9,
    fg_threshold: float = 0.5,
    min_size: int = 10,
    pixel_size: float = 1.0 / 1024,
    sigma_scale: float = 10.0,
    max_instances: int | None = None,
    z_spacing: float = 1.0,
) -> np.ndarray:
    """Instances from one image's (or volume's) spatial-embedding output, greedily by seed (as
    in the paper).

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
        pred: `(height, width, 2 + n_sigma + 1)` raw output of `SpatialEmbeddingHead`, or a
            volume's `(depth, height, width, 3 + n_sigma + 1)`.
        seed_threshold: smallest seed that starts an instance. Defaults to `0.9`.
        fg_threshold: seed above which a pixel is foreground. Defaults to `0.5`.
        min_size: proposals of at most this many pixels are dropped. Defaults to `10`.
        pixel_size, sigma_scale: as in `SpatialEmbeddingLoss`.
        max_instances: stop after this many instances (the bound of the in-graph
            `layers.SeedClustering`); the pixels not in an instance by then stay 0. Defaults to
            `None`, no bound.
        z_spacing: volumes: the slice spacing in units of the pixel spacing (as in the loss).

    Returns:
        `(height, width)` int32 label map (volumes: `(depth, height, width)`), 0 = background,
        instances 1..N by decreasing seed.
    """
    thresholds = _check_thresholds(seed_threshold, fg_threshold, min_size, pixel_size, sigma_scale, max_instances)
    volume = np.ndim(pred) == 4
    if volume and np.shape(pred)[-1] < 5:
        raise ValueError(
            "Expected `pred` of shape (height, width, 2 + n_sigma + 1), one image without a batch axis, or a "
            f"volume's (depth, height, width, 3 + n_sigma + 1). Received: pred.shape={np.shape(pred)}"
        )
    # checked band by band: no full-size mask
    pred = check_map("pred", pred, 4 if volume else 3, min_channels=5 if volume else 4, finite=False)
    _n_sigma(pred, 3 if volume else 2)
    shape = pred.shape[:-1]
    plane = math.prod(shape[1:])
    rows = max(1, (1 << 20) // max(plane, 1))
    for top in range(0, shape[0], rows):  # the whole map is checked before any work (so not again per band)
        check_finite("pred", pred[top : top + rows])
    bands = ((top, pred[top : top + rows]) for top in range(0, shape[0], rows))
    return _from_bands(bands, shape, thresholds, check=False, z_spacing=z_spacing)


def instances_from_bands(
    bands,
    shape,
    seed_threshold: float = 0.9,
    fg_threshold: float = 0.5,
    min_size: int = 10,
    pixel_size: float = 1.0 / 1024,
    sigma_scale: float = 10.0,
    max_instances: int | None = None,
    z_spacing: float = 1.0,
) -> np.ndarray:
    """`spatial_embedding_instances` of an image whose head output comes as bands of rows:
    `bands` yields `(top, rows x width x channels)` in order, covering `shape (height, width)`
    (the tiled path of `Segmenter` predicts them tile by tile, so the whole output never
    exists); a volume's as bands of slices `(top, slices x height x width x channels)` covering
    `shape (depth, height, width)`. Only the foreground is kept: memory follows it, not the
    image."""
    thresholds = _check_thresholds(seed_threshold, fg_threshold, min_size, pixel_size, sigma_scale, max_instances)
    return _from_bands(bands, shape, thresholds, check=True, z_spacing=z_spacing)


def _from_bands(bands, shape, thresholds: tuple, check: bool, z_spacing: float = 1.0) -> np.ndarray:
    """`instances_from_bands` with checked thresholds; `check`: each band's finiteness."""
    seed_threshold, fg_threshold, min_size, pixel_size, sigma_scale, max_instances = thresholds
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"Expected `shape` (height, width) or (depth, height, width). Received: shape={shape}")
    dims = len(shape)
    z_spacing = check_number("z_spacing", z_spacing, minimum=0.0, strict=True)
    gathered = _Foreground(
        math.prod(shape[1:]), pixel_size, sigma_scale, fg_threshold, seed_threshold, check, dims, z_spacing
    )
    unit = "rows" if dims == 2 else "slices"
    expected = 0
    for top, band in bands:
        band = np.asarray(band)
        if top != expected or band.ndim != dims + 1 or band.shape[1:dims] != shape[1:]:
            raise ValueError(
                f"Expected bands of {unit} in order covering an image of {' x '.join(map(str, shape))}; received "
                f"{unit} from {top} of shape {tuple(band.shape)} where {unit[:-1]} {expected} was next"
            )
        gathered.add(top, band)
        expected += band.shape[0]
    if expected != shape[0]:
        raise ValueError(f"Expected bands covering {shape[0]} {unit}. Received: {expected}")
    fg = gathered.finish()
    return _greedy(fg, shape, seed_threshold, min_size, max_instances)


def _greedy(fg: dict, shape, seed_threshold: float, min_size: int, max_instances) -> np.ndarray:
    """The greedy loop of `spatial_embedding_instances` on the gathered foreground."""
    emb, seed = fg["embeddings"], fg["seeds"]
    labels = np.zeros(math.prod(shape), np.int32)
    if seed.size == 0:
        return labels.reshape(shape)
    # the start pixels (in image order, as their bandwidths were kept) by decreasing seed, ties
    # in image order: the prefix of a stable sort of every pixel by decreasing seed
    starts = np.flatnonzero(seed >= seed_threshold)
    order = np.argsort(-seed[starts], kind="stable")
    by_seed, start_bw = starts[order].astype(np.int32), fg["start_bandwidths"][order]
    del starts, order
    n_start = by_seed.size
    by_row = np.argsort(emb[:, 0], kind="stable").astype(np.int32)
    rows_sorted = emb[by_row, 0]
    unassigned = np.ones(seed.size, bool)
    fg_labels = np.zeros(seed.size, np.int32)
    count, pointer = 0, 0
    while pointer < n_start and (max_instances is None or count < max_instances):
        # the next unassigned start pixel, looked for in growing chunks (each pixel is passed once)
        chunk, found = 256, False
        while pointer < n_start:
            ahead = unassigned[by_seed[pointer : pointer + chunk]]
            if ahead.any():
                pointer += int(np.argmax(ahead))
                found = True
                break
            pointer += ahead.size
            chunk = min(2 * chunk, 1 << 16)
        if not found:
            break
        center = by_seed[pointer]
        bw = start_bw[pointer]
        pointer += 1
        c = emb[center]
        reach = math.sqrt(LN2 / bw[0]) if bw[0] > 0 else math.inf
        lo = int(np.searchsorted(rows_sorted, c[0] - reach, side="left"))
        hi = int(np.searchsorted(rows_sorted, c[0] + reach, side="right"))
        candidates = by_row[lo:hi]
        d = bw[0] * (emb[candidates, 0] - c[0]) ** 2
        for a in range(1, emb.shape[1]):
            d = d + bw[a] * (emb[candidates, a] - c[a]) ** 2
        proposal = candidates[d < LN2]  # holds the center itself (d = 0)
        free = int(np.count_nonzero(unassigned[proposal]))
        unassigned[center] = False
        if proposal.size > min_size and 2 * free > proposal.size:
            count += 1
            fg_labels[proposal] = count
        unassigned[proposal] = False
    labels[fg["indices"]] = fg_labels
    return labels.reshape(shape)
