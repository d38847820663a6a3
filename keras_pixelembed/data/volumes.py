"""Volumes `(depth, height, width, channels)` with label volumes `(depth, height, width)`: a
synthetic generator of 3D objects, TIFF stacks, and the random crops, flips and rotations of
training.

Everything is numpy. `synthetic_volume(rng, ...)` is deterministic for a seed; `load_volume_pair`
reads a TIFF stack `(z, y, x)` or `(z, y, x, c)` and its label stack, and names both files when
they disagree.
"""

from __future__ import annotations

import os

import numpy as np

from keras_pixelembed.validation import check_integer, check_number, require


def _smooth_noise(rng: np.random.Generator, shape, cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1] (trilinear from a coarse grid)."""
    coarse = rng.random([cells + 1] * 3)
    axes = [np.linspace(0, cells, n) for n in shape]
    field = coarse
    for axis, at in enumerate(axes):
        low = np.minimum(np.floor(at).astype(int), cells - 1)
        frac = (at - low).reshape([-1 if a == axis else 1 for a in range(3)])
        field = np.take(field, low, axis=axis) * (1 - frac) + np.take(field, low + 1, axis=axis) * frac
    return field


def synthetic_volume(
    rng: np.random.Generator,
    shape=(32, 64, 64),
    n_objects=(4, 10),
    radius=(4.0, 10.0),
    z_spacing: float = 1.0,
    touching: float = 0.5,
    noise: float = 0.05,
    min_voxels: int = 20,
):
    """One grey volume `(d, h, w, 1)` float32 in [0, 1] of textured ellipsoids (nuclei-like) on a
    smooth background, and its label volume `(d, h, w)` int32 (0 background).

    Objects are randomly oriented ellipsoids with semi-axes `radius` (pixels, in-plane; along z
    divided by `z_spacing`, so that they are round in physical space), each with its own
    brightness, an inner texture and a dimmer rim; with probability `touching` an object is
    placed against the previous one (touching, partly covering it; later objects cover earlier
    ones). Then blur-free Gaussian noise. Objects left with fewer than `min_voxels` visible voxels
    are dropped from the labels (and stay in the image as clutter).
    """
    d, h, w = (check_integer("shape", s, minimum=1) for s in shape)
    z_spacing = check_number("z_spacing", z_spacing, minimum=0.0, strict=True)
    zz, yy, xx = np.meshgrid(np.arange(d) * z_spacing, np.arange(h), np.arange(w), indexing="ij")
    background = 0.1 + 0.15 * _smooth_noise(rng, (d, h, w))
    image = background.copy()
    labels = np.zeros((d, h, w), np.int32)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    previous = None
    for k in range(1, n + 1):
        radii = rng.uniform(radius[0], radius[1], 3)
        if previous is not None and rng.random() < touching:
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction) + 1e-9
            center = previous[0] + direction * (previous[1] + 0.8 * radii.max())
        else:
            center = np.array([rng.uniform(0, d * z_spacing), rng.uniform(0, h), rng.uniform(0, w)])
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        offsets = np.stack([zz - center[0], yy - center[1], xx - center[2]], -1) @ rotation
        r = np.sqrt(np.sum((offsets / radii) ** 2, axis=-1))
        mask = r <= 1.0
        if not mask.any():
            continue
        brightness = rng.uniform(0.45, 1.0)
        texture = 0.12 * (_smooth_noise(rng, (d, h, w), cells=6) - 0.5)
        image[mask] = (brightness * (1.0 - 0.35 * r**4) + texture)[mask]
        labels[mask] = k
        previous = (center, radii.max())
    image = np.clip(image + rng.normal(0, noise, image.shape), 0, 1).astype(np.float32)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    labels[np.isin(labels, ids[counts < min_voxels])] = 0
    _, labels = np.unique(labels, return_inverse=True)  # ids 1..K in order
    return image[..., None], labels.reshape(d, h, w).astype(np.int32)


def synthetic_volumes(num: int, seed: int = 0, **kwargs):
    """`num` volumes and label volumes, volume `i` depending only on `(seed, i)`: arrays
    `(num, d, h, w, 1)` float32 and `(num, d, h, w)` int32."""
    pairs = [synthetic_volume(np.random.default_rng([seed, i]), **kwargs) for i in range(num)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def load_volume_pair(image_path: str, label_path: str | None = None):
    """A TIFF stack `(z, y, x)` or `(z, y, x, c)` as float32 `(z, y, x, c)` scaled to [0, 1] by its
    dtype (8 and 16 bits; floats kept), and its label stack `(z, y, x)` int32 (or None).

    Raises:
        ValueError: a stack that is not 3-D or 4-D, or labels whose shape is not the image's
            `(z, y, x)`: the message names both files.
    """
    tifffile = _tifffile()
    raw = np.asarray(tifffile.imread(image_path))
    if raw.ndim not in (3, 4):
        raise ValueError(f"Expected a volume (z, y, x) or (z, y, x, c) in {image_path!r}. Received shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.integer):
        image = raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)
    else:
        image = raw.astype(np.float32)
    if image.ndim == 3:
        image = image[..., None]
    if label_path is None:
        return image, None
    labels = np.asarray(tifffile.imread(label_path))
    if labels.shape != image.shape[:3]:
        raise ValueError(
            f"The labels {label_path!r} (shape {labels.shape}) do not match the volume {image_path!r} "
            f"(shape (z, y, x) {image.shape[:3]})"
        )
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(np.mod(labels, 1) == 0):
        raise ValueError(f"Expected integer labels in {label_path!r}. Received dtype {labels.dtype}")
    return image, labels.astype(np.int32)


def save_label_volume(path: str, labels) -> str:
    """Writes a label volume `(z, y, x)` as a uint16 TIFF (uint32 above 65535 labels), atomically
    (a temporary file beside it, renamed: never a half-written file)."""
    tifffile = _tifffile()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"Expected a label volume (z, y, x). Received: labels.shape={labels.shape}")
    dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.partial")
    try:
        tifffile.imwrite(temporary, labels.astype(dtype))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def random_crop_and_flip(rng: np.random.Generator, image, labels, size, z_flip: bool = True):
    """A random crop `size (d, h, w)` of a volume and its labels (padded with zeros / background
    when the volume is smaller), then random flips of each axis (z only with `z_flip`) and a
    random 90-degree rotation in the yx plane (when height equals width)."""
    size = tuple(check_integer("size", s, minimum=1) for s in size)
    pad = [(0, max(0, s - n)) for s, n in zip(size, labels.shape)]
    image = np.pad(image, pad + [(0, 0)])
    labels = np.pad(labels, pad)
    start = [int(rng.integers(0, n - s + 1)) for s, n in zip(size, labels.shape)]
    window = tuple(slice(a, a + s) for a, s in zip(start, size))
    image, labels = image[window], labels[window]
    for axis in range(3):
        if (axis > 0 or z_flip) and rng.random() < 0.5:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    if size[1] == size[2]:
        turns = int(rng.integers(0, 4))
        image, labels = np.rot90(image, turns, axes=(1, 2)), np.rot90(labels, turns, axes=(1, 2))
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def _tifffile():
    return require("tifffile", "Reading and writing volumes (TIFF stacks)")
