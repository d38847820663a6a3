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
from keras.utils import PyDataset

from keras_pixelembed.data.sources import Source
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
    dtype (8 and 16 bits; floats kept), and its label stack `(z, y, x)` int32 (or None). A
    stack whose TIFF axes name the channels (an ImageJ hyperstack `ZCYX`, RGB samples) has
    them moved last; a 4-D stack without that information is read as `(z, y, x, c)`.

    Raises:
        ValueError: a stack that is not 3-D or 4-D, or labels whose shape is not the image's
            `(z, y, x)`: the message names both files.
    """
    raw = _read_stack(image_path)
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
    labels = _read_stack(label_path)
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


def random_crop_and_flip(rng: np.random.Generator, image, labels, size, z_flip: bool = True, flip: bool = True):
    """A random crop `size (d, h, w)` of a volume and its labels (padded with zeros / background
    when the volume is smaller), then (with `flip`) random flips of each axis (z only with
    `z_flip`) and a random 90-degree rotation in the yx plane (when height equals width)."""
    size = tuple(check_integer("size", s, minimum=1) for s in size)
    pad = [(0, max(0, s - n)) for s, n in zip(size, labels.shape)]
    image = np.pad(image, pad + [(0, 0)])
    labels = np.pad(labels, pad)
    start = [int(rng.integers(0, n - s + 1)) for s, n in zip(size, labels.shape)]
    window = tuple(slice(a, a + s) for a, s in zip(start, size))
    image, labels = image[window], labels[window]
    if not flip:
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)
    for axis in range(3):
        if (axis > 0 or z_flip) and rng.random() < 0.5:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    if size[1] == size[2]:
        turns = int(rng.integers(0, 4))
        image, labels = np.rot90(image, turns, axes=(1, 2)), np.rot90(labels, turns, axes=(1, 2))
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def _channel_axis(axes: str) -> int | None:
    """Where the channels are in a TIFF series' axes (tifffile's letters: `C` channel, `S`
    samples such as RGB), or None."""
    for letter in "CS":
        if letter in axes:
            return axes.index(letter)
    return None


def _read_stack(path: str, header_only: bool = False):
    """A TIFF stack as an array with its channel axis last (an ImageJ hyperstack `ZCYX`
    becomes `(z, y, x, c)`), or with `header_only` its shape in that order, from the header.
    An unreadable file is a ValueError naming it."""
    tifffile = _tifffile()
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), str(series.axes)
            channel = _channel_axis(axes) if len(shape) == 4 else None
            if header_only:
                if channel is None:
                    return shape
                return tuple(n for i, n in enumerate(shape) if i != channel) + (shape[channel],)
            data = np.asarray(series.asarray())
    except Exception as error:  # noqa: BLE001  (any reader failure names the file)
        raise ValueError(f"Cannot read the TIFF stack {path}: {error}") from error
    return np.moveaxis(data, channel, -1) if channel is not None else data


def _tifffile():
    return require("tifffile", "Reading and writing volumes (TIFF stacks)")


VOLUME_EXTENSIONS = (".tif", ".tiff")


class VolumeSource(Source):
    """Volumes with label volumes: `len(source)`, `source.load_labels(i)` -> `(volume (d, h, w, c)
    float32, labels (d, h, w) int32)` (0 background, -1 ignored), `source.name(i)`. What
    `train` with `ndim=3` and the evaluation read; `data.train_validation_split` splits it."""

    def load(self, index: int):
        raise TypeError("A volume source gives `load_labels(i)` (volume, label volume), not mask sets")

    def shape(self, index: int) -> tuple | None:
        """`(d, h, w)` of volume `index` when known without decoding, else None."""
        return None


class VolumeFolder(VolumeSource):
    """TIFF stacks in a folder with label stacks of the same stem in another (`load_volume_pair`).
    Stems, shapes (read from the TIFF headers) and the folders are checked when it is built."""

    list_files = staticmethod(lambda folder: list_volumes(folder))  # the files of a folder it reads

    def __init__(self, images_dir: str, labels_dir: str):
        from keras_pixelembed.data.io import stem

        self.images_dir, self.labels_dir = images_dir, labels_dir
        self.images = list_volumes(images_dir)
        if not self.images:
            raise ValueError(f"No volumes ({', '.join(VOLUME_EXTENSIONS)} stacks) in folder {images_dir}")
        by_stem = {stem(p): p for p in list_volumes(labels_dir)}
        self.targets, self._shapes = [], []
        for path in self.images:
            if stem(path) not in by_stem:
                raise FileNotFoundError(
                    f"No label volume for {path}: expected {os.path.join(labels_dir, stem(path))}.tif"
                )
            target = by_stem[stem(path)]
            shapes = []
            for file in (path, target):
                shapes.append(_read_stack(file, header_only=True))
            image_shape, label_shape = shapes
            if len(image_shape) not in (3, 4):
                raise ValueError(f"Expected a volume (z, y, x) or (z, y, x, c) in {path}. Received shape {image_shape}")
            if label_shape != image_shape[:3]:
                raise ValueError(
                    f"The labels {target} (shape {label_shape}) do not match the volume {path} "
                    f"(shape (z, y, x) {image_shape[:3]})"
                )
            channels = image_shape[3] if len(image_shape) == 4 else 1
            if self.images[0] != path and channels != self._channels:
                raise ValueError(
                    f"The volume {path} has {channels} channel(s) but {self.images[0]} has {self._channels}: "
                    "every volume of a folder needs the same channels"
                )
            self._channels = channels
            self.targets.append(target)
            self._shapes.append(image_shape[:3])

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return self.images[index]

    def shape(self, index: int):
        return self._shapes[index]

    def load_labels(self, index: int):
        return load_volume_pair(self.images[index], self.targets[index])


class VolumeArrays(VolumeSource):
    """Volumes and label volumes given as arrays (`(d, h, w)` or `(d, h, w, c)`, and `(d, h, w)`)."""

    def __init__(self, volumes, labels):
        if len(volumes) != len(labels):
            raise ValueError(f"Got {len(volumes)} volumes but {len(labels)} label volumes")
        self.volumes, self.labels = [], []
        for i, (v, y) in enumerate(zip(volumes, labels)):
            v = np.asarray(v, np.float32)
            v = v[..., None] if v.ndim == 3 else v
            y = np.asarray(y)
            if v.ndim != 4 or y.shape != v.shape[:3]:
                raise ValueError(
                    f"Volume {i}: expected a volume (d, h, w) or (d, h, w, c) and labels (d, h, w) of the same size. "
                    f"Received shapes {np.shape(volumes[i])} and {y.shape}"
                )
            self.volumes.append(v)
            self.labels.append(y.astype(np.int32))

    def __len__(self) -> int:
        return len(self.volumes)

    def name(self, index: int) -> str:
        return f"volume {index}"

    def shape(self, index: int):
        return self.labels[index].shape

    def load_labels(self, index: int):
        return self.volumes[index], self.labels[index]


class SyntheticVolumes(VolumeSource):
    """`num` volumes of `synthetic_volume`, volume `i` depending only on `(seed, i)`, made when read."""

    def __init__(self, num: int, shape=(16, 64, 64), seed: int = 0, **kwargs):
        self.num = check_integer("num", num, minimum=0)
        self.volume_shape = tuple(check_integer("shape", s, minimum=1) for s in shape)
        self.seed, self.kwargs = int(seed), kwargs

    def __len__(self) -> int:
        return self.num

    def name(self, index: int) -> str:
        return f"synthetic volume {index} (seed {self.seed})"

    def shape(self, index: int):
        return self.volume_shape

    def load_labels(self, index: int):
        if not 0 <= index < self.num:
            raise IndexError(f"volume {index} of {self.num}")
        return synthetic_volume(np.random.default_rng([self.seed, index]), shape=self.volume_shape, **self.kwargs)


def is_volume_source(source) -> bool:
    """A `VolumeSource`, or a subset of one (`data.train_validation_split`)."""
    from keras_pixelembed.data.sources import Subset

    while isinstance(source, Subset):
        source = source.source
    return isinstance(source, VolumeSource)


def list_volumes(folder: str) -> list[str]:
    """The TIFF stacks of a folder, sorted (hidden files left out)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No such folder: {folder}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(VOLUME_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


def volumes_from_folder(images_dir: str, labels_dir: str) -> VolumeFolder:
    """TIFF stacks `(z, y, x)` or `(z, y, x, c)` with label stacks `(z, y, x)` of the same stem.

    Raises:
        FileNotFoundError / ValueError naming the files: a missing label stack, shapes that
        differ, an unreadable file, an empty folder.
    """
    return VolumeFolder(images_dir, labels_dir)


def volumes_from_arrays(volumes, labels) -> VolumeArrays:
    """A volume source of arrays: volumes `(d, h, w)` / `(d, h, w, c)`, label volumes `(d, h, w)`."""
    return VolumeArrays(volumes, labels)


def relabel_crop(labels: np.ndarray, max_instances: int | None) -> np.ndarray:
    """A crop's label volume with its ids renumbered 1..K in order (0 and -1 kept); above
    `max_instances` ids, the smallest become ignored (-1), as `on_overflow="drop_smallest"` does
    for images (ties keep the lower id)."""
    labels = np.asarray(labels, np.int32)
    positive = labels > 0
    ids = np.unique(labels[positive])
    out = labels.copy()
    out[positive] = np.searchsorted(ids, labels[positive]).astype(np.int32) + 1
    k = ids.size
    if max_instances is None or k <= max_instances:
        return out
    sizes = np.bincount(out[out > 0], minlength=k + 1)[1:]
    keep = np.sort(np.argsort(-sizes, kind="stable")[:max_instances]) + 1
    mapping = np.full(k + 1, -1, np.int32)
    mapping[keep] = np.arange(1, keep.size + 1)
    return np.where(out > 0, mapping[np.maximum(out, 0)], out).astype(np.int32)


class VolumeBatches(PyDataset):
    """Batches of volume crops for `model.fit` on any backend: `(x (b, d, h, w, c) float32,
    labels (b, d, h, w) float32)`, the labels renumbered per crop (`relabel_crop`).

    With `random`, each step draws `batch_size` random volumes and a random crop of `size` from
    each, with random flips / yx rotations when `flip` (`random_crop_and_flip`, z flips with
    `z_flip`), new every epoch, `steps` batches an epoch. Without, every volume once, cropped at
    its centre (padded when smaller): the same batches every epoch (validation). `percentiles`
    normalizes each whole volume first (`normalize_percentiles`), as `Segmenter` does.
    """

    def __init__(
        self,
        source,
        size,
        batch_size: int,
        max_instances: int | None = None,
        random: bool = True,
        steps: int | None = None,
        seed: int = 0,
        flip: bool = True,
        z_flip: bool = True,
        percentiles=None,
    ):
        super().__init__()
        if len(source) == 0:
            raise ValueError("The volume source has no volumes")
        self.source, self.size = source, tuple(check_integer("image_size", s, minimum=1) for s in size)
        self.batch_size = check_integer("batch_size", batch_size, minimum=1)
        self.max_instances, self.random, self.seed = max_instances, bool(random), int(seed)
        self.flip, self.z_flip = bool(flip), bool(z_flip)
        if self.random:
            self.steps = check_integer("steps", steps, minimum=1)
        else:
            self.steps = -(-len(source) // self.batch_size)
        self.percentiles, self.epoch = percentiles, 0

    def __len__(self) -> int:
        return int(self.steps)

    def on_epoch_end(self):
        self.epoch += 1

    def _item(self, rng, index: int):
        volume, labels = self.source.load_labels(index)
        if self.percentiles is not None:
            from keras_pixelembed.data.normalize import normalize_percentiles

            volume = normalize_percentiles(volume, self.percentiles)
        if self.random:
            volume, labels = random_crop_and_flip(rng, volume, labels, self.size, z_flip=self.z_flip, flip=self.flip)
        else:
            pad = [(0, max(0, s - n)) for s, n in zip(self.size, labels.shape)]
            volume, labels = np.pad(volume, pad + [(0, 0)]), np.pad(labels, pad)
            start = [(n - s) // 2 for s, n in zip(self.size, labels.shape)]
            window = tuple(slice(a, a + s) for a, s in zip(start, self.size))
            volume, labels = volume[window], labels[window]
        return volume.astype(np.float32), relabel_crop(labels, self.max_instances).astype(np.float32)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch if self.random else 0, index])
        if self.random:
            picks = rng.integers(0, len(self.source), self.batch_size)
        else:
            picks = range(index * self.batch_size, min(len(self.source), (index + 1) * self.batch_size))
        items = [self._item(rng, int(i)) for i in picks]
        return np.stack([v for v, _ in items]), np.stack([y for _, y in items])
