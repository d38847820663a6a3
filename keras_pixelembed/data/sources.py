"""Sources of images and their mask sets: folders, COCO, arrays, synthetic scenes.

A source is a small indexable object: `len(source)`, `source.load(i)` returns
`(image (h, w, 3) float32 in [0, 1], masks (M, h, w) uint8, ignore (h, w) bool)`, and
`source.name(i)` names the item in errors; `data.make_dataset` turns a source into batches
for `fit`. Everything that can be checked without decoding pixels is checked when the source is built.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from keras_pixelembed.data.convert import label_map_to_masks, masks_to_label_map
from keras_pixelembed.data.io import image_size, list_images, read_image, read_label_image, stem, to_rgb_float
from keras_pixelembed.data.synthetic import (
    BACKGROUNDS,
    FAMILIES,
    GENERATORS,
    OBJECT_FAMILIES,
    randomized_scene,
    synthetic_scene,
)


class Source:
    """Base class: subclasses implement `__len__`, `load(i)`, `name(i)` and may give `size(i)`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int):
        raise NotImplementedError

    def name(self, index: int) -> str:
        return f"item {index}"

    def size(self, index: int) -> tuple[int, int] | None:
        """(height, width) of item `index` when known without decoding, else None."""
        return None

    def load_labels(self, index: int):
        """`(image, label map)`: item `index` with its masks as an int32 label map (0 background,
        -1 ignored pixels and overlaps), the form the evaluation compares against."""
        image, masks, ignore = self.load(index)
        return image, masks_to_label_map(masks, ignore=ignore)


def _check_masks(masks: np.ndarray, shape, what: str) -> np.ndarray:
    m = np.asarray(masks)
    if m.ndim != 3 or m.shape[1:] != tuple(shape):
        raise ValueError(f"{what}: masks of shape {m.shape} do not match the image size {tuple(shape)}")
    return (m > 0).astype(np.uint8)


class Subset(Source):
    """Some items of a source (for example the train / validation split of a user's folder)."""

    def __init__(self, source: Source, indices):
        self.source, self.indices = source, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load_labels(self, index: int):
        return self.source.load_labels(self.indices[index])

    def load(self, index: int):
        return self.source.load(self.indices[index])

    def name(self, index: int) -> str:
        return self.source.name(self.indices[index])

    def size(self, index: int):
        return self.source.size(self.indices[index])

    def shape(self, index: int):
        """A volume source's `(d, h, w)` of the item (None when it does not say)."""
        shape = getattr(self.source, "shape", None)
        return shape(self.indices[index]) if shape else None


class Tiles(Source):
    """A source's images cut into tiles of `tile_size` `(h, w)` at their native scale, covering
    each image (the last tile of a row or column aligned to the edge, so tiles may overlap); an
    image smaller than the tile on either side stays one item. Masks are cropped with the image
    and the masks left empty by a crop dropped. What `train` validates on: the fit's validation
    loss then sees objects at the scale of the training crops, not whole images squashed to the
    crop size."""

    def __init__(self, source: Source, tile_size):
        if len(tile_size) != 2 or any(int(t) < 1 for t in tile_size):
            raise ValueError(f"Invalid value for argument `tile_size`. Expected (h, w) >= 1. Received: {tile_size!r}")
        self.source, self.tile_size = source, (int(tile_size[0]), int(tile_size[1]))
        self.items = []  # (item of source, top, left) or (item, None, None) for a whole image
        for i in range(len(source)):
            size = source.size(i) or source.load(i)[0].shape[:2]
            h, w = int(size[0]), int(size[1])
            th, tw = self.tile_size
            if h < th or w < tw:
                self.items.append((i, None, None))
                continue
            tops = np.unique(np.round(np.linspace(0, h - th, -(-h // th))).astype(int))
            lefts = np.unique(np.round(np.linspace(0, w - tw, -(-w // tw))).astype(int))
            self.items.extend((i, int(t), int(left)) for t in tops for left in lefts)
        self._last = (None, None)  # the tiles of an image come in a row: decode it once

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int):
        i, top, left = self.items[index]
        if self._last[0] != i:
            self._last = (i, self.source.load(i))
        image, masks, ignore = self._last[1]
        if top is None:
            return image, masks, ignore
        th, tw = self.tile_size
        crop = (slice(top, top + th), slice(left, left + tw))
        masks = masks[:, crop[0], crop[1]]
        return image[crop], masks[masks.reshape(len(masks), -1).any(axis=1)], ignore[crop]

    def name(self, index: int) -> str:
        i, top, left = self.items[index]
        name = self.source.name(i)
        return name if top is None else f"{name} (tile at row {top}, column {left})"

    def size(self, index: int):
        i, top, _ = self.items[index]
        return self.source.size(i) if top is None else self.tile_size


def train_validation_split(source: Source, validation_fraction: float, seed: int):
    """A shuffled `(train, validation)` split of `source` into two `Subset`s, at least one image
    on each side; with a single image both sides are that image (the overfit-one-image first
    step of debugging a loss)."""
    n = len(source)
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(round(validation_fraction * n)))) if n > 1 else 0
    if n_val == 0:
        return source, source
    return Subset(source, order[n_val:]), Subset(source, order[:n_val])


class FolderSource(Source):
    """Images in a folder with label images (same stem) or folders of binary masks per image."""

    list_files = staticmethod(list_images)  # the files of a folder it reads

    def __init__(self, images_dir: str, labels_dir: str | None = None, masks_dir: str | None = None):
        if (labels_dir is None) == (masks_dir is None):
            raise ValueError(
                "Give exactly one of `labels_dir` (label images) and `masks_dir` (a folder of masks per image)"
            )
        self.images = list_images(images_dir)
        if not self.images:
            raise ValueError(f"No images (.png, .jpg, .jpeg, .tif, .tiff, .bmp) in folder {images_dir}")
        self.labels_dir, self.masks_dir = labels_dir, masks_dir
        self.targets: list = []
        if labels_dir is not None:
            by_stem = {stem(p): p for p in list_images(labels_dir)}
            for path in self.images:
                if stem(path) not in by_stem:
                    raise FileNotFoundError(
                        f"No label image for {path}: expected {os.path.join(labels_dir, stem(path))}.png (or .tif)"
                    )
                self.targets.append(by_stem[stem(path)])
        else:
            if not os.path.isdir(masks_dir):
                raise FileNotFoundError(f"No such folder: {masks_dir}")
            for path in self.images:
                folder = os.path.join(masks_dir, stem(path))
                if not os.path.isdir(folder):
                    raise FileNotFoundError(f"No mask folder for {path}: expected {folder}/")
                self.targets.append(list_images(folder))
        self._sizes = []
        for path, target in zip(self.images, self.targets):
            size = image_size(path)
            for other in [target] if isinstance(target, str) else target:
                other_size = image_size(other)
                if other_size != size:
                    raise ValueError(
                        f"Image {path} is {size[0]}x{size[1]} (h x w) but {other} is {other_size[0]}x{other_size[1]}"
                    )
            self._sizes.append(size)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return self.images[index]

    def size(self, index: int):
        return self._sizes[index]

    def load(self, index: int):
        path, target = self.images[index], self.targets[index]
        image = read_image(path)
        if isinstance(target, str):
            labels = read_label_image(target)
            if labels.shape != image.shape[:2]:
                raise ValueError(f"Image {path} has shape {image.shape[:2]} but label {target} has {labels.shape}")
            masks, ignore = label_map_to_masks(labels, return_ignore=True)
            return image, masks, ignore
        masks = []
        for mask_path in target:
            m = read_label_image(mask_path)
            if m.shape != image.shape[:2]:
                raise ValueError(f"Image {path} has shape {image.shape[:2]} but mask {mask_path} has {m.shape}")
            masks.append(m > 0)
        masks = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, *image.shape[:2]), np.uint8)
        return image, masks, np.zeros(image.shape[:2], bool)


def from_folder(images_dir: str, labels_dir: str | None = None, masks_dir: str | None = None) -> FolderSource:
    """Images (PNG/JPEG/TIFF; gray, RGB or RGBA; 8 or 16 bit) with their instance annotations.

    Args:
        images_dir: folder of images.
        labels_dir: folder of integer label images with the same file stem (0 = background,
            k >= 1 = instance k, negative = ignored).
        masks_dir: alternatively, `masks_dir/<stem>/*.png` binary masks (may overlap).

    Raises:
        FileNotFoundError / ValueError naming the files: missing label, sizes that differ, an
        unreadable file, an empty folder.
    """
    return FolderSource(images_dir, labels_dir, masks_dir)


class ArraySource(Source):
    """In-memory images with their annotations (`from_arrays`).

    Args:
        images: a sequence of images, each `(h, w)`, `(h, w, 1)`, `(h, w, 3)` or `(h, w, 4)`;
            uint8, uint16 or float in [0, 1] (converted as `read_image` converts files).
        targets: one per image: a label map `(h, w)` or `(h, w, 1)` (0 background, k >= 1
            instance k, negative ignored), or masks `(M, h, w)` (0/1, may overlap).

    `load(i)` returns `(image (h, w, 3) float32, masks (M, h, w) uint8, ignore (h, w) bool)`.
    """

    def __init__(self, images, targets):
        if len(images) != len(targets):
            raise ValueError(f"`images` has {len(images)} items but `labels_or_mask_lists` has {len(targets)}")
        if len(images) == 0:
            raise ValueError("`images` is empty")
        self.images, self.targets = [], []
        for i, (image, target) in enumerate(zip(images, targets)):
            image = to_rgb_float(image, f"images[{i}]")
            target = np.asarray(target)
            if target.ndim == 2 or (target.ndim == 3 and target.shape[-1] == 1 and target.shape[:2] == image.shape[:2]):
                labels = target.reshape(image.shape[:2]) if target.shape[:2] == image.shape[:2] else target
                if labels.shape != image.shape[:2]:
                    raise ValueError(f"images[{i}] has shape {image.shape[:2]} but its label map has {labels.shape}")
                masks, ignore = label_map_to_masks(labels, return_ignore=True)
            else:
                masks, ignore = _check_masks(target, image.shape[:2], f"item {i}"), np.zeros(image.shape[:2], bool)
            self.images.append(image)
            self.targets.append((masks, ignore))

    def __len__(self) -> int:
        return len(self.images)

    def size(self, index: int):
        return self.images[index].shape[:2]

    def load(self, index: int):
        masks, ignore = self.targets[index]
        return self.images[index], masks, ignore


def from_arrays(images: Sequence, labels_or_mask_lists: Sequence) -> ArraySource:
    """Images (each `(h, w[, c])`) with either a label map `(h, w)` or masks `(M, h, w)` each."""
    return ArraySource(images, labels_or_mask_lists)


class SyntheticSource(Source):
    """Generated scenes (`synthetic`): image i depends on `(seed, i)` only, so any subset
    repeats exactly.

    Args:
        num_images: number of images.
        image_size: `(h, w)`, each at least 16.
        families: the object families drawn from (default: all of the generator's).
            `generator="classic"`: some of `"multicolor"` (objects of two or three unrelated
            colors) and `"touching"` (touching objects of almost the same color).
            `generator="randomized"`: some of `synthetic.OBJECT_FAMILIES` (`"flat"`,
            `"gradient"`, `"textured"`, `"stripes"`, `"sectors"`, `"spots"`).
        seed: seed of the whole set.
        n_objects: `(low, high)` objects per image (classic: drawn before occlusion;
            randomized: bounds of the count that fills the image; default (1, 20)).
        noise: classic only: standard deviation of the Gaussian pixel noise.
        generator: `"classic"` (`synthetic_scene`: the color-only grouping failure cases at
            diameters of 18-41 px on 128 x 128) or `"randomized"` (`randomized_scene`: domain
            randomization over families, shapes, backgrounds, blur, light, grey, 8-60 px).
        backgrounds: randomized only: some of `synthetic.BACKGROUNDS` (`"smooth"`, `"noise"`,
            `"photo"`; default all).

    `load(i)` returns `(image (h, w, 3) float32 in [0, 1], masks (M, h, w) uint8, ignore
    (h, w) bool all False)`; masks are the visible parts of the objects, in drawing order.
    """

    def __init__(
        self,
        num_images: int,
        image_size=(128, 128),
        families=None,
        seed: int = 0,
        n_objects=None,
        noise: float = 0.03,
        generator: str = "classic",
        backgrounds=None,
    ):
        from keras_pixelembed.validation import check_choice, check_integer

        self.num_images = check_integer("num_images", num_images, minimum=1)
        if len(image_size) != 2 or min(image_size) < 16:
            raise ValueError(
                f"Invalid value for argument `image_size`. Expected (h, w) >= 16. Received: {image_size!r}"
            )
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.generator = check_choice("generator", generator, GENERATORS)
        randomized = generator == "randomized"
        self.families = _some_of("families", families, OBJECT_FAMILIES if randomized else FAMILIES)
        self.backgrounds = _some_of("backgrounds", backgrounds, BACKGROUNDS) if randomized else None
        if backgrounds is not None and not randomized:
            raise ValueError("Invalid argument `backgrounds`: only generator='randomized' draws backgrounds")
        if n_objects is None:
            n_objects = (1, 20) if randomized else (3, 8)
        self.seed, self.n_objects, self.noise = int(seed), tuple(n_objects), float(noise)

    def __len__(self) -> int:
        return self.num_images

    def name(self, index: int) -> str:
        return f"synthetic image {index} (seed {self.seed})"

    def size(self, index: int):
        return self.image_size

    def load(self, index: int):
        rng = np.random.default_rng([self.seed, int(index)])
        if self.generator == "randomized":
            image, masks = randomized_scene(rng, self.image_size, self.families, self.backgrounds, self.n_objects)
        else:
            image, masks = synthetic_scene(rng, self.image_size, self.families, self.n_objects, self.noise)
        return image, masks, np.zeros(self.image_size, bool)


def _some_of(argument: str, values, choices: tuple) -> tuple:
    """`values` (a name or several; None: all of `choices`) as a tuple, each one of `choices`."""
    if values is None:
        return tuple(choices)
    values = (values,) if isinstance(values, str) else tuple(values)
    unknown = [v for v in values if v not in choices]
    if unknown or not values:
        raise ValueError(f"Invalid value for argument `{argument}`. Expected some of {choices}. Received: {values!r}")
    return values


def synthetic(num_images: int, image_size=(128, 128), **kwargs) -> SyntheticSource:
    """Synthetic scenes (see `keras_pixelembed.data.synthetic`); image i depends on (seed, i) only.
    `kwargs` are `SyntheticSource`'s (`families`, `seed`, `n_objects`, `noise`, `generator`,
    `backgrounds`); `generator="randomized"` is the domain-randomized generator the bundled
    models train on."""
    return SyntheticSource(num_images, image_size, **kwargs)


def drawn_from(config, held_out: bool = False) -> dict:
    """The `synthetic` keyword arguments of what a synthetic run draws: the `generator`,
    `families` and `backgrounds` of a `TrainConfig` or its config.json dict (one without a
    generator is classic). `held_out=True`: what the run is tested on: fresh images of the same
    for a randomized run, the classic generator's multicolor objects (where SLIC fails) for a
    classic one."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    generator = get("generator") or "classic"
    if held_out and generator == "classic":
        return dict(families=("multicolor",))
    return dict(generator=generator, families=get("families"), backgrounds=get("backgrounds"))


class CocoSource(Source):
    """COCO instance annotations (`from_coco`): polygons, RLE and uncompressed RLE, decoded
    with pycocotools.

    Args:
        annotation_json: a COCO instances file (`images` and `annotations` lists).
        images_dir: the folder the `file_name` entries are relative to.

    `load(i)` returns `(image (h, w, 3) float32, masks (M, h, w) uint8, ignore (h, w) bool)`:
    one mask per non-crowd annotation; `iscrowd` regions are the ignored pixels. Every image
    file is checked to exist when the source is built.
    """

    def __init__(self, annotation_json: str, images_dir: str):
        try:
            from pycocotools import mask as mask_utils  # noqa: F401
        except ImportError as error:
            raise ImportError("from_coco needs pycocotools: pip install 'keras-pixelembed[coco]'") from error
        if not os.path.isfile(annotation_json):
            raise FileNotFoundError(f"No such file: {annotation_json}")
        try:
            with open(annotation_json) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read COCO annotations {annotation_json}: {error}") from error
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"{annotation_json} is not a COCO instance file (no 'images' or 'annotations')")
        self.entries = []
        by_image: dict = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for info in sorted(data["images"], key=lambda d: d["id"]):
            path = os.path.join(images_dir, info["file_name"])
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{annotation_json} refers to image id {info['id']} at {path}, which does not exist"
                )
            self.entries.append((path, int(info["height"]), int(info["width"]), by_image.get(info["id"], [])))
        if not self.entries:
            raise ValueError(f"{annotation_json} lists no images")
        self.annotation_json = annotation_json

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, index: int) -> str:
        return self.entries[index][0]

    def size(self, index: int):
        return self.entries[index][1:3]

    def load(self, index: int):
        from pycocotools import mask as mask_utils

        path, h, w, anns = self.entries[index]
        image = read_image(path)
        if image.shape[:2] != (h, w):
            raise ValueError(f"Image {path} is {image.shape[:2]} but {self.annotation_json} says ({h}, {w})")
        masks, ignore = [], np.zeros((h, w), bool)
        for ann in anns:
            seg = ann["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if seg else None
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = seg
            if rle is None:
                continue
            m = mask_utils.decode(rle).astype(bool)
            if ann.get("iscrowd", 0):
                ignore |= m
            elif m.any():
                masks.append(m)
        masks = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, h, w), np.uint8)
        return image, masks, ignore


def from_coco(annotation_json: str, images_dir: str) -> CocoSource:
    """COCO instance annotations (polygons and RLE, via pycocotools); `iscrowd` regions become
    ignored pixels."""
    return CocoSource(annotation_json, images_dir)


def _image_paths(source: Source) -> dict:
    """{real path: name} of a folder or COCO source's image files (through subsets)."""
    if isinstance(source, Subset):
        return _image_paths(source.source)
    if isinstance(source, FolderSource):
        return {os.path.realpath(p): p for p in source.images}
    if isinstance(source, CocoSource):
        return {os.path.realpath(e[0]): e[0] for e in source.entries}
    if hasattr(source, "list_files"):  # a folder of volumes (`data.volumes.VolumeFolder`)
        return {os.path.realpath(p): p for p in source.images}
    return {}


def check_test_source(test_source: Source, *seen: Source) -> None:
    """Refuses a held-out set that cannot give honest figures, before anything is written:
    label images in a test folder with no image of the same stem, an item with no labelled
    object (its scores would be undefined), and an image file that is also in one of the `seen`
    sources (training or validation). Errors name the file."""
    folder = hasattr(test_source, "list_files")  # folders of images and of volumes
    if folder and test_source.labels_dir is not None:
        images = {stem(p) for p in test_source.images}
        orphans = [p for p in test_source.list_files(test_source.labels_dir) if stem(p) not in images]
        if orphans:
            raise ValueError(
                f"Test label {orphans[0]} has no image of the same stem in the test images folder "
                f"({len(orphans)} unmatched label file(s)); test images and labels must pair up"
            )
    seen_paths = {}
    for source in seen:
        seen_paths.update(_image_paths(source))
    for path, name in _image_paths(test_source).items():
        if path in seen_paths:
            raise ValueError(
                f"Test image {name} is also a training or validation image ({seen_paths[path]}): held-out "
                "figures need images the model and the tuning never saw"
            )
    for i in range(len(test_source)):
        _, labels = test_source.load_labels(i)
        if not (labels > 0).any():
            target = ""
            if folder:
                target = f" ({test_source.targets[i] if isinstance(test_source.targets[i], str) else 'no masks'})"
            raise ValueError(
                f"Test image {test_source.name(i)} has no labelled object{target}: a held-out image needs "
                "labelled objects to be scored"
            )
