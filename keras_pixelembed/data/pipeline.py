"""`make_dataset`: a source -> a batched `tf.data.Dataset` ready for `model.fit` on any backend."""

from __future__ import annotations

import logging

import numpy as np

from keras_pixelembed.data.convert import masks_to_label_map
from keras_pixelembed.data.sources import Source
from keras_pixelembed.validation import check_choice, check_integer, require

logger = logging.getLogger("keras_pixelembed")

OUTPUTS = ("labels", "masks")
OVERFLOW = ("error", "drop_smallest", "merge")


def require_tensorflow():
    """TensorFlow, which the tf.data pipelines need on every Keras backend."""
    return require("tensorflow", "keras_pixelembed.data builds tf.data pipelines and on every backend")


def resolve_overflow(
    masks: np.ndarray, ignore: np.ndarray, max_instances: int, on_overflow: str, name: str, reserved: int = 0
):
    """Applies `on_overflow` to one item's masks `(M, h, w)`; returns `(masks, ignore)`.

    `reserved` slots of `max_instances` are taken by something else (the background instance),
    so at most `max_instances - reserved` masks are kept.
    """
    count = masks.shape[0]
    limit = max_instances - reserved
    if count <= limit:
        return masks, ignore
    if on_overflow == "error":
        taken = f" less {reserved} slot for the background" if reserved else ""
        raise ValueError(
            f"{name} has {count} masks, above max_instances={max_instances}{taken}. Raise `max_instances`, or pass "
            "on_overflow='drop_smallest' (their pixels become ignored) or 'merge'."
        )
    max_instances = limit
    order = np.argsort(-masks.reshape(count, -1).sum(1), kind="stable")
    if on_overflow == "drop_smallest":
        keep, drop = order[:max_instances], order[max_instances:]
        logger.warning(
            "%s: dropped the %d smallest of %d masks (max_instances=%d); their pixels are ignored",
            name,
            drop.size,
            count,
            max_instances,
        )
        ignore = ignore | (masks[drop].max(0) > 0) & (masks[keep].max(0) == 0)
        return masks[np.sort(keep)], ignore
    keep, rest = order[: max_instances - 1], order[max_instances - 1 :]
    merged = masks[rest].max(0, keepdims=True)
    logger.warning(
        "%s: merged the %d smallest of %d masks into one (max_instances=%d)", name, rest.size, count, max_instances
    )
    return np.concatenate([masks[np.sort(keep)], merged]), ignore


def _loader(tf, source, output: str, max_instances: int | None, on_overflow: str, reserved: int = 0):
    """A tf function `index -> (image (h, w, 3) float32, stack)` decoding one item in numpy.

    The stack is what the geometry augmentation moves along with the image: for `"labels"`
    the label map `(h, w, 1)` int32 (`masks_to_label_map`: overlaps and ignored pixels -1),
    for `"masks"` the masks and the ignore map as channels `(h, w, M + 1)` uint8.
    """

    def load(index):
        i = int(index)
        image, masks, ignore = source.load(i)
        if max_instances is not None:
            masks, ignore = resolve_overflow(masks, ignore, max_instances, on_overflow, source.name(i), reserved)
        image = np.asarray(image, np.float32)
        masks = np.asarray(masks, np.uint8).reshape(-1, *image.shape[:2])
        if output == "labels":
            return image, masks_to_label_map(masks, ignore=ignore)[..., None]
        return image, np.concatenate([masks, np.asarray(ignore, np.uint8)[None]]).transpose(1, 2, 0)

    dtype = tf.int32 if output == "labels" else tf.uint8

    def tf_load(index):
        image, stack = tf.numpy_function(load, [index], (tf.float32, dtype), stateful=False)
        image.set_shape((None, None, 3))
        stack.set_shape((None, None, None))
        return image, stack

    return tf_load


def source_dataset(
    source,
    indices=None,
    output: str = "masks",
    max_instances: int | None = None,
    on_overflow: str = "error",
    shuffle: bool = False,
    seed: int | None = None,
    deterministic: bool = True,
    reserved: int = 0,
):
    """Items of `source` (at `indices`, default all) decoded in parallel, one element per item:
    `(image (h, w, 3) float32, stack)`, the stack as `_loader` describes it. With `shuffle`,
    the indices are shuffled (each iteration anew) before decoding, which costs no memory."""
    tf = require_tensorflow()
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    ds = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    if shuffle:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    return ds.map(
        _loader(tf, source, output, max_instances, on_overflow, reserved),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def _augment(tf, image, stack, seed, image_size, rotate_90: bool):
    """Joint random scale-crop, flips, 90-degree rotations (image and masks) and color jitter."""
    seeds = tf.random.experimental.stateless_split(seed, 9)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    if image_size is None:
        out_h, out_w = h, w
        zoom = tf.random.stateless_uniform((), seeds[0], 1.0, 1.5)
    else:
        out_h, out_w = image_size
        zoom = tf.random.stateless_uniform((), seeds[0], 0.75, 1.5)
    target_h = tf.cast(out_h, tf.float32) if image_size is not None else hf
    target_w = tf.cast(out_w, tf.float32) if image_size is not None else wf
    # crop a window of the output's aspect, 1 / zoom of the output size in source pixels
    crop_h = tf.cast(tf.clip_by_value(tf.round(target_h / zoom), 1.0, hf), tf.int32)
    crop_w = tf.cast(tf.clip_by_value(tf.round(target_w / zoom), 1.0, wf), tf.int32)
    top = tf.random.stateless_uniform((), seeds[1], 0, h - crop_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform((), seeds[2], 0, w - crop_w + 1, dtype=tf.int32)
    image = image[top : top + crop_h, left : left + crop_w]
    stack = stack[top : top + crop_h, left : left + crop_w]
    image = tf.image.resize(image, (out_h, out_w), method="bilinear")
    stack = tf.image.resize(stack, (out_h, out_w), method="nearest")
    if tf.random.stateless_uniform((), seeds[3]) < 0.5:
        image, stack = tf.reverse(image, [1]), tf.reverse(stack, [1])
    if tf.random.stateless_uniform((), seeds[4]) < 0.5:
        image, stack = tf.reverse(image, [0]), tf.reverse(stack, [0])
    if rotate_90:
        k = tf.random.stateless_uniform((), seeds[5], 0, 4, dtype=tf.int32)
        image, stack = tf.image.rot90(image, k), tf.image.rot90(stack, k)
    image = tf.image.stateless_random_brightness(image, 0.08, seeds[6])
    image = tf.image.stateless_random_contrast(image, 0.85, 1.15, seeds[7])
    image = tf.image.stateless_random_saturation(image, 0.85, 1.15, seeds[8])
    return tf.clip_by_value(image, 0.0, 1.0), stack


def _relabel(tf, labels):
    """Ids of a label map `(h, w)` renumbered 1..K in increasing order (ids cropped away are
    gone); 0 and -1 stay."""
    ids = tf.sort(tf.unique(tf.boolean_mask(labels, labels > 0))[0])
    new = tf.searchsorted(ids, tf.reshape(labels, [-1]), side="left", out_type=tf.int32) + 1
    return tf.where(labels > 0, tf.reshape(new, tf.shape(labels)), labels), tf.size(ids)


def _overflow_after_crop(tf, labels, limit: int, on_overflow: str):
    """`resolve_overflow` for a label map `(h, w)` int32, in the graph, on the crop the model
    sees: above `limit` ids, the smallest become ignored (-1, `"drop_smallest"`) or one id
    (`"merge"`); ids renumbered 1..K in their order. Ties keep the lower id."""
    labels, count = _relabel(tf, labels)
    flat = tf.reshape(labels, [-1])
    sizes = tf.math.bincount(tf.boolean_mask(flat, flat > 0), minlength=count + 1, maxlength=count + 1)[1:]
    order = tf.argsort(-sizes, stable=True)  # largest first
    kept = limit if on_overflow == "drop_smallest" else limit - 1
    keep = tf.scatter_nd(order[:kept, None], tf.ones_like(order[:kept], tf.bool), [count])
    new_id = tf.cumsum(tf.cast(keep, tf.int32))
    keep, new_id = tf.concat([keep, [False]], 0), tf.concat([new_id, [0]], 0)  # a crop with no object
    rest = -1 if on_overflow == "drop_smallest" else kept + 1  # the merged id comes after the kept ones
    index = tf.maximum(labels - 1, 0)
    mapped = tf.where(tf.gather(keep, index), tf.gather(new_id, index), rest)
    return tf.where((labels > 0) & (count > limit), mapped, labels)


def _to_target(tf, stack, output: str, max_instances: int, background_as_instance: bool):
    """The decoded, augmented stack -> a label map (ids 1..K) or a padded mask stack."""
    if output == "labels":
        labels, count = _relabel(tf, stack[..., 0])
        if background_as_instance:
            labels = tf.where(tf.equal(labels, 0), count + 1, labels)
        return labels
    masks, ignore = stack[..., :-1], stack[..., -1] > 0
    present = tf.reduce_any(masks > 0, axis=[0, 1])
    masks = tf.cast(tf.boolean_mask(masks, present, axis=2) > 0, tf.int8)  # masks cropped away are gone
    if background_as_instance:
        in_none = tf.logical_not(tf.reduce_any(masks > 0, axis=-1))
        masks = tf.concat([masks, tf.cast(in_none, tf.int8)[..., None]], axis=-1)
    stack = tf.pad(masks, [[0, 0], [0, 0], [0, max_instances - tf.shape(masks)[-1]]])
    stack = tf.where(ignore[..., None], tf.constant(-1, tf.int8), stack)
    return tf.ensure_shape(stack, (None, None, max_instances))


def make_dataset(
    source,
    batch_size: int,
    image_size=None,
    max_instances: int = 64,
    output: str = "labels",
    augment: bool = False,
    shuffle: bool = False,
    cache: bool = False,
    repeat: bool = False,
    seed: int | None = None,
    on_overflow: str = "error",
    background_as_instance: bool = False,
):
    """Batches of `(images (B, h, w, 3) float32, y_true)` for `model.fit`, on any backend.

    Args:
        source: a source from `from_folder`, `from_coco`, `from_arrays` or `synthetic`.
        batch_size: images per batch.
        image_size: `(h, w)` of the output; `None` keeps the native size (the images of a batch
            must then agree). Without `augment`, images are resized (bilinear) and masks follow
            (nearest neighbour).
        max_instances: the loss's `max_instances`; more masks in an image are handled by
            `on_overflow`.
        output: `"labels"`: int32 label maps `(B, h, w)`, ids 1..K per image, 0 background, -1
            ignored (iscrowd regions, overlaps of masks, masks dropped on overflow).
            `"masks"`: int8 mask stacks `(B, h, w, max_instances)`, 0/1, zero channels for
            padding, -1 in every channel at ignored pixels. Overlapping masks need `"masks"`.
        augment: random scale-crop, flips, 90-degree rotations (square outputs), color jitter;
            masks follow the geometry exactly (nearest neighbour, no new ids).
        shuffle: shuffle the items (each epoch anew).
        cache: keep the decoded items in memory after the first epoch.
        repeat: repeat forever (give `steps_per_epoch` to `fit`).
        seed: makes shuffling and augmentation deterministic. Without `shuffle` the order is
            always the source's; with `shuffle` and no seed, parallel decoding may reorder.
        on_overflow: `"error"` (default; names the image and the count), `"drop_smallest"`
            (logged; the dropped masks' pixels become ignored) or `"merge"` (the smallest masks
            become one, logged). With `augment` and `output="labels"`, `"drop_smallest"` and
            `"merge"` apply to each crop, after the geometry (in the graph, not logged): a
            crop of a large image holds far fewer objects than the whole image.
        background_as_instance: the valid pixels in no mask become one more instance (id K + 1
            of each label map, or the channel after the masks), so that an embedding head
            learns a background cluster. It takes one of the `max_instances` slots.
    """
    tf = require_tensorflow()
    if not isinstance(source, Source):
        raise TypeError(
            f"`source` must come from from_folder, from_coco, from_arrays or synthetic. Received: {type(source).__name__}"
        )
    batch_size = check_integer("batch_size", batch_size, minimum=1)
    max_instances = check_integer("max_instances", max_instances, minimum=2 if background_as_instance else 1)
    check_choice("output", output, OUTPUTS)
    check_choice("on_overflow", on_overflow, OVERFLOW)
    if image_size is not None:
        if len(image_size) != 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in image_size):
            raise ValueError(
                f"Invalid value for argument `image_size`. Expected (h, w) positive integers or None. Received: {image_size!r}"
            )
        image_size = (int(image_size[0]), int(image_size[1]))
    elif batch_size > 1:
        _check_same_size(source)
    n = len(source)
    # a seed, or no shuffling, asks for a reproducible order; otherwise parallel work may reorder
    deterministic = seed is not None or not shuffle
    # a crop of a large image holds far fewer objects than the image: the label maps of an
    # augmented pipeline resolve an overflow on the crop (in the graph, not logged)
    after_crop = augment and output == "labels" and on_overflow != "error"
    decode = dict(
        output=output,
        max_instances=None if after_crop else max_instances,
        on_overflow=on_overflow,
        reserved=int(background_as_instance),
    )
    if cache:
        # decode once (in order), keep the items, shuffle the decoded items
        ds = source_dataset(source, deterministic=True, **decode).cache()
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    else:
        ds = source_dataset(source, shuffle=shuffle, seed=seed, deterministic=deterministic, **decode)
    if repeat:
        ds = ds.repeat()

    rotate_90 = image_size is not None and image_size[0] == image_size[1]

    def prepare(item, aug_seed):
        image, stack = item
        if augment:
            image, stack = _augment(tf, image, stack, aug_seed, image_size, rotate_90)
        elif image_size is not None:
            image = tf.image.resize(image, image_size, method="bilinear")
            stack = tf.image.resize(stack, image_size, method="nearest")
        image = tf.ensure_shape(image, (None, None, 3) if image_size is None else (*image_size, 3))
        if after_crop:
            stack = _overflow_after_crop(tf, stack[..., 0], max_instances - int(background_as_instance), on_overflow)
            stack = stack[..., None]
        return image, _to_target(tf, stack, output, max_instances, background_as_instance)

    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _check_same_size(source) -> None:
    """Native sizes batch together only when they agree; the error names two that differ."""
    sizes = {}
    for i in range(len(source)):
        size = source.size(i)
        if size is not None:
            sizes.setdefault(tuple(size), source.name(i))
    if len(sizes) > 1:
        (s1, n1), (s2, n2) = list(sizes.items())[:2]
        raise ValueError(
            f"image_size=None keeps native sizes, but the images differ: {n1} is {s1[0]}x{s1[1]} and {n2} is "
            f"{s2[0]}x{s2[1]}. Give `image_size=(h, w)` or batch_size=1."
        )
