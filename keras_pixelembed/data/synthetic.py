"""Synthetic scenes of the objects that color-only grouping gets wrong.

* `multicolor`: objects cut into two or three parts of unrelated colors (stripes, sectors or
  spots): SLIC splits them, a learned embedding can hold them together.
* `touching`: single-colored objects touching a neighbour of almost the same color: SLIC
  merges them.

Both come with occlusion (later objects cover earlier ones; the masks are what stays visible),
textured backgrounds and noise. Everything is numpy, deterministic for a seed, and per image
independent of the others (image i depends only on (seed, i)).
"""

from __future__ import annotations

import numpy as np

from keras_pixelembed.data.convert import label_map_to_masks

FAMILIES = ("multicolor", "touching")
PATTERNS = ("stripes", "sectors", "spots")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth color field (bilinear from a coarse grid) plus a fine texture."""
    gh, gw = 4 + rng.integers(0, 4), 4 + rng.integers(0, 4)
    base = rng.uniform(0.15, 0.85, 3)
    grid = np.clip(base + rng.normal(0, 0.12, (gh, gw, 3)), 0, 1)
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    field = top * (1 - fy) + bottom * fy
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    angle, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
    texture = np.sin((rows * np.cos(angle) + cols * np.sin(angle)) * 2 * np.pi / period)
    return field + rng.uniform(0.0, 0.05) * texture[..., None]


def _distinct_colors(rng: np.random.Generator, n: int, min_distance: float = 0.45) -> np.ndarray:
    colors = [rng.uniform(0, 1, 3)]
    while len(colors) < n:
        c = rng.uniform(0, 1, 3)
        if min(np.linalg.norm(c - o) for o in colors) >= min_distance or rng.random() < 0.02:
            colors.append(c)
    return np.array(colors)


def _shape_mask(rng, rows, cols, cy, cx, ry, rx):
    """An ellipse or a rounded blob (ellipse with a wobbly radius), as a bool mask."""
    theta = rng.uniform(0, np.pi)
    dy, dx = rows - cy, cols - cx
    u = dy * np.cos(theta) + dx * np.sin(theta)
    v = -dy * np.sin(theta) + dx * np.cos(theta)
    r = (u / ry) ** 2 + (v / rx) ** 2
    if rng.random() < 0.5:
        phase, k = rng.uniform(0, 2 * np.pi), rng.integers(3, 6)
        wobble = 1 + 0.18 * np.sin(k * np.arctan2(v, u) + phase)
        return r <= wobble**2
    return r <= 1.0


def _paint_multicolor(rng, image, mask, rows, cols, cy, cx):
    n_parts = int(rng.integers(2, 4))
    colors = _distinct_colors(rng, n_parts)
    pattern = PATTERNS[rng.integers(0, len(PATTERNS))]
    dy, dx = rows - cy, cols - cx
    if pattern == "stripes":
        angle = rng.uniform(0, np.pi)
        proj = dy * np.cos(angle) + dx * np.sin(angle)
        extent = np.abs(proj[mask]).max() + 1e-6
        part = np.clip(((proj + extent) / (2 * extent) * n_parts).astype(int), 0, n_parts - 1)
    elif pattern == "sectors":
        part = (((np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi)) % (2 * np.pi)) / (2 * np.pi) * n_parts).astype(int)
        part = np.clip(part, 0, n_parts - 1)
    else:
        part = np.zeros(mask.shape, int)
        ys, xs = np.nonzero(mask)
        size = np.sqrt(ys.size)
        for _ in range(int(rng.integers(2, 6))):
            i = rng.integers(0, ys.size)
            radius = rng.uniform(0.12, 0.3) * size
            spot = (rows - ys[i]) ** 2 + (cols - xs[i]) ** 2 <= radius**2
            part[spot] = rng.integers(1, n_parts)
    image[mask] = colors[part[mask]]


def synthetic_scene(
    rng: np.random.Generator,
    image_size=(128, 128),
    families=FAMILIES,
    n_objects=(3, 8),
    noise: float = 0.03,
    min_pixels: int = 12,
):
    """One image `(h, w, 3)` float32 in [0, 1] and its visible instance masks `(M, h, w)` uint8."""
    h, w = image_size
    image = _background(rng, h, w)
    labels = np.zeros((h, w), np.int32)
    rows, cols = np.mgrid[:h, :w].astype(np.float32)
    scale = min(h, w)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    previous = None  # (cy, cx, radius, color) of the last single-colored object
    for k in range(1, n + 1):
        family = families[rng.integers(0, len(families))]
        ry, rx = rng.uniform(0.07, 0.16, 2) * scale
        if family == "touching" and previous is not None:
            # next to the previous object, its border just touching (and partly covering) it
            angle = rng.uniform(0, 2 * np.pi)
            reach = previous[2] + 0.8 * max(ry, rx)
            cy = np.clip(previous[0] + reach * np.sin(angle), 0, h - 1)
            cx = np.clip(previous[1] + reach * np.cos(angle), 0, w - 1)
        else:
            cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        mask = _shape_mask(rng, rows, cols, cy, cx, ry, rx)
        if not mask.any():
            continue
        if family == "multicolor":
            _paint_multicolor(rng, image, mask, rows, cols, cy, cx)
            previous = None
        else:
            if previous is not None:
                color = np.clip(previous[3] + rng.normal(0, 0.04, 3), 0, 1)
            else:
                color = rng.uniform(0, 1, 3)
            image[mask] = color
            previous = (cy, cx, max(ry, rx), color)
        labels[mask] = k
    image = image + rng.normal(0, noise, image.shape)
    image = np.clip(image, 0, 1).astype(np.float32)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    small = ids[counts < min_pixels]  # objects almost fully covered are not objects any more
    return image, label_map_to_masks(np.where(np.isin(labels, small), 0, labels))
