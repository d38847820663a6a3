"""Synthetic scenes: two generators.

`randomized_scene` (generator "randomized", what the bundled models train on) randomizes the
domain: object families (`OBJECT_FAMILIES`), shapes, backgrounds (`BACKGROUNDS`), object
diameters of 8-60 px, occlusion, touching neighbours, illumination, blur, grey, gamma and
noise, so that a left-out family can be used to measure generalization.

`synthetic_scene` (generator "classic") draws the objects that color-only grouping gets wrong:

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
GENERATORS = ("classic", "randomized")
PATTERNS = ("stripes", "sectors", "spots")


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a coarse `(gh, gw, c)` grid to `(h, w, c)`, corners on corners."""
    gh, gw = grid.shape[:2]
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth color field (bilinear from a coarse grid) plus a fine texture."""
    gh, gw = 4 + rng.integers(0, 4), 4 + rng.integers(0, 4)
    base = rng.uniform(0.15, 0.85, 3)
    grid = np.clip(base + rng.normal(0, 0.12, (gh, gw, 3)), 0, 1)
    field = _upsample(grid, h, w)
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
    part = _part_map(rng, pattern, n_parts, mask, rows - cy, cols - cx)
    image[mask] = colors[part[mask]]


def _part_map(rng, pattern, n_parts, mask, dy, dx):
    """Which of `n_parts` colors each pixel of `mask` takes: stripes, sectors or spots.
    `dy, dx` are the pixels' offsets from the object's center (spots are centred on the
    mask's own pixels)."""
    if pattern == "stripes":
        angle = rng.uniform(0, np.pi)
        proj = dy * np.cos(angle) + dx * np.sin(angle)
        extent = np.abs(proj[mask]).max() + 1e-6
        return np.clip(((proj + extent) / (2 * extent) * n_parts).astype(int), 0, n_parts - 1)
    if pattern == "sectors":
        part = (((np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi)) % (2 * np.pi)) / (2 * np.pi) * n_parts).astype(int)
        return np.clip(part, 0, n_parts - 1)
    part = np.zeros(mask.shape, int)
    ys, xs = np.nonzero(mask)
    size = np.sqrt(ys.size)
    for _ in range(int(rng.integers(2, 6))):
        i = rng.integers(0, ys.size)  # a spot centred on one of the mask's pixels
        radius = rng.uniform(0.12, 0.3) * size
        spot = (dy - dy[ys[i], xs[i]]) ** 2 + (dx - dx[ys[i], xs[i]]) ** 2 <= radius**2
        part[spot] = rng.integers(1, n_parts)
    return part


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


# --- the domain-randomized generator -------------------------------------------------------

OBJECT_FAMILIES = ("flat", "gradient", "textured", "stripes", "sectors", "spots")
BACKGROUNDS = ("smooth", "noise", "photo")
SHAPES = ("ellipse", "blob", "polygon", "star", "superellipse", "crescent")
DIAMETER = (8.0, 60.0)  # longest object diameter in pixels, at the image's own scale
_LUMA = np.array([0.299, 0.587, 0.114])


def _value_noise(rng, h, w, channels, cell, octaves=3):
    """Smooth random field in [0, 1]: a few octaves of bilinearly upsampled random grids."""
    field, total = np.zeros((h, w, channels)), 0.0
    for o in range(octaves):
        size = max(cell / 2**o, 1.5)
        grid = rng.uniform(0, 1, (int(h / size) + 2, int(w / size) + 2, channels))
        field += 0.5**o * _upsample(grid, h, w)
        total += 0.5**o
    field /= total
    lo, hi = field.min(axis=(0, 1)), field.max(axis=(0, 1))
    return (field - lo) / np.maximum(hi - lo, 1e-6)


def _texture(rng, dy, dx):
    """A texture in [0, 1] on the offsets `dy, dx`: a grating, a checkerboard or fine value noise."""
    kind = rng.integers(0, 3)
    if kind == 0:
        angle, period = rng.uniform(0, np.pi), rng.uniform(2.5, 10)
        wave = np.sin((dy * np.cos(angle) + dx * np.sin(angle)) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi))
        return (wave > 0).astype(float) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    if kind == 1:
        period, angle = rng.uniform(3, 10), rng.uniform(0, np.pi / 2)
        u, v = dy * np.cos(angle) + dx * np.sin(angle), -dy * np.sin(angle) + dx * np.cos(angle)
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(float)
    h, w = dy.shape
    return _value_noise(rng, h, w, 1, rng.uniform(2, 6), octaves=2)[..., 0]


def _smooth_noise_background(rng, h, w):
    """Colourful smooth noise: saturated random colours varying over 10-60 px."""
    field = _value_noise(rng, h, w, 3, rng.uniform(10, 60))
    lo = rng.uniform(0, 0.4, 3)
    return lo + field * rng.uniform(0.3, 1.0, 3) * (1 - lo)


def _photo_background(rng, h, w):
    """Photo-like clutter: the image cut into a few large regions by straight or wavy lines,
    each with its own colour and texture (or gradient), over multi-scale noise. Regions reach
    the image border, unlike objects."""
    rows, cols = np.mgrid[:h, :w].astype(float)
    region = np.zeros((h, w), int)
    for k in range(int(rng.integers(1, 5))):
        angle = rng.uniform(0, 2 * np.pi)
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        side = (rows - y0) * np.cos(angle) + (cols - x0) * np.sin(angle)
        if rng.random() < 0.5:
            side = side + rng.uniform(2, 12) * np.sin(
                ((cols - x0) * np.cos(angle) - (rows - y0) * np.sin(angle)) / rng.uniform(8, 40)
            )
        region = np.where(side > 0, region + (1 << k), region)
    image = np.empty((h, w, 3))
    for r in np.unique(region):
        inside = region == r
        base, other = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        mix = rng.uniform(0.1, 0.6)
        if rng.random() < 0.6:
            t = _texture(rng, rows - h / 2, cols - w / 2)
        else:
            angle = rng.uniform(0, 2 * np.pi)
            t = ((rows * np.cos(angle) + cols * np.sin(angle)) / max(h, w)) % 1.0
        image[inside] = base * (1 - mix * t[inside, None]) + other * (mix * t[inside, None])
    noise = _value_noise(rng, h, w, 3, rng.uniform(4, 30)) - 0.5
    image = image + rng.uniform(0.05, 0.25) * noise
    for _ in range(int(rng.integers(0, 4))):  # thin unlabelled lines (wires, edges)
        angle = rng.uniform(0, np.pi)
        dist = np.abs((rows - rng.uniform(0, h)) * np.cos(angle) + (cols - rng.uniform(0, w)) * np.sin(angle))
        image[dist < rng.uniform(0.5, 2)] = rng.uniform(0, 1, 3)
    return image


def _shape(rng, dy, dx, ry, rx):
    """A bool mask of one of `SHAPES` on the offsets `dy, dx` from its center, half-axes `ry, rx`."""
    theta = rng.uniform(0, np.pi)
    u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
    v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
    radius, angle = np.hypot(u, v), np.arctan2(v, u)
    kind = SHAPES[rng.integers(0, len(SHAPES))]
    if kind == "ellipse":
        return radius <= 1.0
    if kind in ("blob", "star"):
        amplitude = rng.uniform(0.1, 0.25) if kind == "blob" else rng.uniform(0.3, 0.45)
        k = rng.integers(3, 6) if kind == "blob" else rng.integers(5, 9)
        return radius <= (1 - amplitude) + amplitude * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        corners = np.sort(rng.uniform(0, 2 * np.pi, n) * 0.5 + np.arange(n) * 2 * np.pi / n)
        reach = rng.uniform(0.75, 1.0, n)
        a = angle % (2 * np.pi)
        i = (np.searchsorted(corners, a) - 1) % n
        j = (i + 1) % n
        span = (corners[j] - corners[i]) % (2 * np.pi)
        off = (a - corners[i]) % (2 * np.pi)
        edge = reach[i] * reach[j] * np.sin(span) / (reach[i] * np.sin(off) + reach[j] * np.sin(span - off) + 1e-9)
        return radius <= np.abs(edge)
    if kind == "superellipse":
        p = rng.uniform(3, 8)
        return np.abs(u) ** p + np.abs(v) ** p <= 1.0
    bite = rng.uniform(0.5, 0.8)  # crescent: an ellipse with an offset ellipse cut away
    phi = rng.uniform(0, 2 * np.pi)
    return (radius <= 1.0) & (np.hypot(u - bite * np.cos(phi), v - bite * np.sin(phi)) > rng.uniform(0.6, 0.9))


def _contrasting_color(rng, against, grey, tries=12):
    """A colour that stands out against the mean colour `against` (in luma when `grey`)."""
    color = rng.uniform(0, 1, 3)
    for _ in range(tries):
        if grey and abs(_LUMA @ (color - against)) >= 0.15:
            break
        if not grey and np.linalg.norm(color - against) >= 0.35:
            break
        color = rng.uniform(0, 1, 3)
    return color


def _paint(rng, family, box, mask, dy, dx, grey):
    """Paints one object of `family` into the image window `box` (a view) where `mask`."""
    against = box[mask].mean(axis=0)
    first = _contrasting_color(rng, against, grey)
    if family == "flat":
        box[mask] = first
        return first
    if family == "gradient":
        second = _contrasting_color(rng, against, grey)
        if rng.random() < 0.5:
            angle = rng.uniform(0, 2 * np.pi)
            proj = dy * np.cos(angle) + dx * np.sin(angle)
        else:
            ys, xs = np.nonzero(mask)
            i = rng.integers(0, ys.size)
            proj = np.hypot(dy - dy[ys[i], xs[i]], dx - dx[ys[i], xs[i]])
        lo, hi = proj[mask].min(), proj[mask].max()
        t = ((proj - lo) / max(hi - lo, 1e-6))[mask, None]
        box[mask] = first * (1 - t) + second * t
        return None
    if family == "textured":
        second = (
            _contrasting_color(rng, first, grey) if rng.random() < 0.5 else np.clip(first + rng.normal(0, 0.2, 3), 0, 1)
        )
        t = _texture(rng, dy, dx)[mask, None]
        box[mask] = first * (1 - t) + second * t
        return None
    n_parts = int(rng.integers(2, 4))
    colors = np.array([first] + [_contrasting_color(rng, first, grey) for _ in range(n_parts - 1)])
    part = _part_map(rng, family, n_parts, mask, dy, dx)
    box[mask] = colors[part[mask]]
    return None


def _blur(image, sigma):
    """Separable Gaussian blur of an `(h, w, c)` image, edges repeated (numpy only)."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(image, pad, mode="edge")
        n = image.shape[axis]
        image = sum(t * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))
    return image


def _illumination(rng, h, w):
    """A smooth multiplicative light field: a ramp, a vignette or slow noise, about 0.5-1.3."""
    rows, cols = np.mgrid[:h, :w].astype(float)
    kind = rng.integers(0, 3)
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        t = (rows - h / 2) * np.cos(angle) + (cols - w / 2) * np.sin(angle)
        t = t / (np.abs(t).max() + 1e-6)
    elif kind == 1:
        t = np.hypot(rows - rng.uniform(0, h), cols - rng.uniform(0, w)) / np.hypot(h, w)
        t = 1 - 2 * t
    else:
        t = 2 * _value_noise(rng, h, w, 1, max(h, w) / 2, octaves=1)[..., 0] - 1
    return (1 + rng.uniform(0.1, 0.4) * t)[..., None]


def randomized_scene(
    rng: np.random.Generator,
    image_size=(128, 128),
    families=OBJECT_FAMILIES,
    backgrounds=BACKGROUNDS,
    n_objects=(1, 20),
    diameter=DIAMETER,
    grey: float = 0.25,
    min_pixels: int = 12,
):
    """One domain-randomized image `(h, w, 3)` float32 in [0, 1] and its visible instance masks
    `(M, h, w)` uint8.

    Each object takes one of `families` (`OBJECT_FAMILIES`: flat colour, linear or radial
    colour gradient, texture (grating, checkerboard or fine noise), stripes, sectors or spots
    of two or three colours) and one of `SHAPES`, on a background of one of `backgrounds`
    (`BACKGROUNDS`: smooth colour field, colourful smooth noise, photo-like textured regions).
    Object diameters are drawn log-uniformly within `diameter` pixels around a per-image
    size; flat objects sometimes touch a neighbour of almost the same colour; later objects
    occlude earlier ones (the masks are what stays visible; under `min_pixels` an object is
    dropped). Then, at random: an illumination field, Gaussian blur, grey (with probability
    `grey`; the channels stay three), gamma and noise.
    """
    h, w = image_size
    is_grey = rng.random() < grey
    paint_background = {"smooth": _background, "noise": _smooth_noise_background, "photo": _photo_background}
    image = np.clip(paint_background[backgrounds[rng.integers(0, len(backgrounds))]](rng, h, w), 0, 1)
    lo, hi = np.log(diameter[0]), np.log(min(diameter[1], 0.8 * min(h, w)))
    typical = np.exp(rng.uniform(lo, hi))
    fill = rng.uniform(0.15, 0.55)
    n = int(np.clip(round(fill * h * w / (0.6 * typical**2)), n_objects[0], n_objects[1]))
    labels = np.zeros((h, w), np.int32)
    last_flat = None  # (cy, cx, radius, colour) of the last object, when it was flat
    for k in range(1, n + 1):
        d = float(np.exp(np.clip(np.log(typical) + rng.uniform(-0.35, 0.35), lo, hi)))
        ry = d / 2
        rx = ry * rng.uniform(0.45, 1.0)
        if rng.random() < 0.5:
            ry, rx = rx, ry
        family = families[rng.integers(0, len(families))]
        # a flat object sometimes touches the last one, when that was flat too
        touching = family == "flat" and last_flat is not None and rng.random() < 0.5
        if touching:
            angle = rng.uniform(0, 2 * np.pi)
            reach = last_flat[2] + 0.8 * max(ry, rx)
            cy = np.clip(last_flat[0] + reach * np.sin(angle), 0, h - 1)
            cx = np.clip(last_flat[1] + reach * np.cos(angle), 0, w - 1)
        else:
            last_flat = None  # placed anywhere: the next object has nothing to touch
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = int(np.ceil(max(ry, rx))) + 1
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h)
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, w)
        dy, dx = np.mgrid[y0:y1, x0:x1].astype(float)
        dy, dx = dy - cy, dx - cx
        mask = _shape(rng, dy, dx, ry, rx)
        if not mask.any():
            continue
        box = image[y0:y1, x0:x1]
        if touching:  # almost the colour of the neighbour it touches
            box[mask] = np.clip(last_flat[3] + rng.normal(0, 0.04, 3), 0, 1)
            color = box[mask][0]
        else:
            color = _paint(rng, family, box, mask, dy, dx, is_grey)
        last_flat = (cy, cx, max(ry, rx), color) if family == "flat" else None
        labels[y0:y1, x0:x1][mask] = k
    if rng.random() < 0.5:
        image = image * _illumination(rng, h, w)
    if rng.random() < 0.4:
        image = _blur(image, rng.uniform(0.4, 1.5))
    if is_grey:
        image = np.repeat((image @ _LUMA)[..., None], 3, axis=-1)
    image = np.clip(image, 0, 1) ** np.exp(rng.uniform(-0.35, 0.35))
    image = image + rng.normal(0, rng.uniform(0.0, 0.06), image.shape[:2] + ((1,) if is_grey else (3,)))
    image = np.clip(image, 0, 1).astype(np.float32)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    small = ids[counts < min_pixels]
    return image, label_map_to_masks(np.where(np.isin(labels, small), 0, labels))
