"""Sources, converters and make_dataset: exact round trips, aligned augmentation, fit, bad input."""

from __future__ import annotations

import json
import logging
import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_pixelembed import DiscriminativeLoss, SpatialEmbeddingHead, SpatialEmbeddingLoss, data
from tests.helpers import tiny_model


def _partition(labels: np.ndarray) -> set:
    """The instances as sets of pixel indices, whatever their ids (labels >= 1)."""
    flat = np.asarray(labels).ravel()
    return {frozenset(np.flatnonzero(flat == k)) for k in np.unique(flat[flat > 0])}


def _scene(rng, h, w, n):
    labels = np.zeros((h, w), np.int32)
    for k in range(1, n + 1):
        r, c = rng.integers(0, h - 5), rng.integers(0, w - 5)
        labels[r : r + rng.integers(3, 6), c : c + rng.integers(3, 6)] = k * 7  # ids need not be 1..K
    return labels


def _write_folder(tmp_path, n=3, h=20, w=24):
    rng = np.random.default_rng(0)
    images_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    images_dir.mkdir()
    labels_dir.mkdir()
    expected = []
    for i in range(n):
        labels = _scene(rng, h, w, 3)
        if i == 0:  # 8-bit RGB PNG
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images_dir / f"img{i}.png")
            want = pixels / 255.0
        elif i == 1:  # 8-bit grayscale JPEG is lossy: use a 16-bit grayscale PNG instead
            pixels = rng.integers(0, 65536, (h, w), dtype=np.uint16)
            Image.fromarray(pixels).save(images_dir / f"img{i}.png")
            want = np.repeat((pixels / 65535.0)[..., None], 3, -1)
        else:  # RGBA
            pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
            Image.fromarray(pixels, "RGBA").save(images_dir / f"img{i}.png")
            want = pixels[..., :3] / 255.0
        Image.fromarray(labels.astype(np.uint16)).save(labels_dir / f"img{i}.png")
        expected.append((want, labels))
    return str(images_dir), str(labels_dir), expected


def test_folder_round_trip_is_exact(tmp_path):
    images_dir, labels_dir, expected = _write_folder(tmp_path)
    source = data.from_folder(images_dir, labels_dir=labels_dir)
    assert len(source) == 3
    for i, (want_image, want_labels) in enumerate(expected):
        image, masks, ignore = source.load(i)
        assert image.dtype == np.float32 and image.shape == want_image.shape
        np.testing.assert_allclose(image, want_image, atol=1e-6)
        assert not ignore.any()
        assert _partition(data.masks_to_label_map(masks)) == _partition(want_labels)
    # through the pipeline, native size, in order
    ds = data.make_dataset(source, batch_size=1)
    for (x, y), (want_image, want_labels) in zip(ds, expected):
        np.testing.assert_allclose(x.numpy()[0], want_image, atol=1e-6)
        assert set(np.unique(y.numpy())) == set(range(len(_partition(want_labels)) + 1))
        assert _partition(y.numpy()[0]) == _partition(want_labels)


def test_tiff_16_bit_and_mask_folders(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    (tmp_path / "im").mkdir()
    rgb16 = rng.integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "im" / "a.tif", rgb16)
    masks_dir = tmp_path / "masks" / "a"
    masks_dir.mkdir(parents=True)
    m1 = np.zeros((10, 12), np.uint8)
    m1[2:6, 2:6] = 255
    m2 = np.zeros((10, 12), np.uint8)
    m2[4:9, 4:10] = 255  # overlaps m1
    Image.fromarray(m1).save(masks_dir / "0.png")
    Image.fromarray(m2).save(masks_dir / "1.png")
    source = data.from_folder(str(tmp_path / "im"), masks_dir=str(tmp_path / "masks"))
    image, masks, _ = source.load(0)
    np.testing.assert_allclose(image, rgb16 / 65535.0, atol=1e-6)
    assert masks.shape == (2, 10, 12) and masks[0].sum() == 16 and masks[1].sum() == 30
    x, y = next(iter(data.make_dataset(source, 1, output="masks", max_instances=4)))
    assert y.shape == (1, 10, 12, 4)
    np.testing.assert_array_equal(y.numpy()[0, ..., 0], m1 > 0)
    np.testing.assert_array_equal(y.numpy()[0, ..., 1], m2 > 0)
    # a label map cannot hold the overlap: it is ignored, not given to either mask
    _, labels = next(iter(data.make_dataset(source, 1, output="labels")))
    assert np.all(labels.numpy()[0][(m1 > 0) & (m2 > 0)] == -1)


def test_palette_png_reads_as_colours_for_images_and_as_indices_for_labels(tmp_path):
    from keras_pixelembed.data.io import read_image, read_label_image

    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    colours = np.array([[10, 20, 30], [200, 0, 0], [0, 255, 128]], np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(colours.reshape(-1).tolist())
    path = str(tmp_path / "palette.png")
    img.save(path)
    np.testing.assert_allclose(read_image(path), colours[indices] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(read_label_image(path), indices)
    img.save(path, transparency=0)  # a transparent palette entry: RGBA, alpha dropped
    np.testing.assert_allclose(read_image(path), colours[indices] / 255.0, atol=1e-6)


def test_converters_round_trip():
    rng = np.random.default_rng(2)
    labels = _scene(rng, 12, 12, 4)
    labels[0, 0] = -1
    masks, ignore = data.label_map_to_masks(labels, return_ignore=True)
    assert masks.dtype == np.uint8 and masks.shape[0] == len(np.unique(labels[labels > 0]))
    back = data.masks_to_label_map(masks, ignore=ignore)
    assert _partition(back) == _partition(labels) and back[0, 0] == -1
    overlap = np.zeros((2, 3, 3), np.uint8)
    overlap[0, :2] = 1
    overlap[1, 1:] = 1
    assert data.masks_to_label_map(overlap)[1, 0] == -1
    assert data.masks_to_label_map(overlap, overlap="last")[1, 0] == 2


def test_from_arrays_accepts_label_maps_and_mask_lists():
    rng = np.random.default_rng(3)
    images = [rng.random((8, 8, 3)).astype(np.float32), (rng.random((8, 8)) * 255).astype(np.uint8)]
    labels = _scene(rng, 8, 8, 2)
    mask_list = np.stack([labels == labels.max(), labels == 0]).astype(np.uint8)
    source = data.from_arrays(images, [labels, mask_list])
    assert _partition(data.masks_to_label_map(source.load(0)[1])) == _partition(labels)
    assert source.load(1)[1].shape == (2, 8, 8) and source.load(1)[0].shape == (8, 8, 3)
    with pytest.raises(ValueError, match="2 items.*1"):
        data.from_arrays(images, [labels])


def test_synthetic_is_deterministic_and_has_objects():
    a = data.synthetic(3, (64, 64), seed=5)
    b = data.synthetic(3, (64, 64), seed=5)
    for i in range(3):
        (ia, ma, _), (ib, mb, _) = a.load(i), b.load(i)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
        assert ia.shape == (64, 64, 3) and ia.min() >= 0 and ia.max() <= 1
        assert ma.shape[0] >= 1 and ma.max(0).sum() > 0
        assert np.all(ma.sum(0) <= 1)  # visible masks do not overlap
    assert not np.array_equal(data.synthetic(1, (64, 64), seed=6).load(0)[0], a.load(0)[0])
    # a multicolor object holds several clearly different colors
    image, masks, _ = data.synthetic(1, (96, 96), families=("multicolor",), seed=1).load(0)
    spreads = [image[m > 0].std(0).max() for m in masks if m.sum() > 50]
    assert max(spreads) > 0.15
    with pytest.raises(ValueError, match="families"):
        data.synthetic(2, families=("plaid",))


def test_augmentation_keeps_masks_aligned():
    """Each instance has its own color: after any augmentation every instance's inner pixels
    keep one color, distinct from the others (jitter is one global map of colors)."""
    rng = np.random.default_rng(4)
    h, w = 40, 48
    labels = np.zeros((h, w), np.int32)
    palette = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32) * 0.8 + 0.1
    for k in range(1, 6):
        r, c = rng.integers(0, h - 12), rng.integers(0, w - 12)
        labels[r : r + 12, c : c + 12] = k
    images = [palette[labels]] * 6
    source = data.from_arrays(images, [labels] * 6)
    for output in ("labels", "masks"):
        ds = data.make_dataset(source, 3, image_size=(32, 32), augment=True, seed=7, output=output, max_instances=8)
        for x, y in ds:
            for b in range(x.shape[0]):
                image = x.numpy()[b]
                lab = y.numpy()[b] if output == "labels" else data.masks_to_label_map(np.moveaxis(y.numpy()[b], -1, 0))
                ids = np.unique(lab[lab > 0])
                assert set(ids) == set(range(1, len(ids) + 1))  # relabelled 1..K, no new ids
                padded = np.pad(lab, 1, mode="edge")
                inner = np.ones_like(lab, bool)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        inner &= padded[1 + dy : 1 + dy + lab.shape[0], 1 + dx : 1 + dx + lab.shape[1]] == lab
                means = []
                for k in ids:
                    pixels = image[inner & (lab == k)]
                    if len(pixels):
                        assert pixels.std(0).max() < 0.02, (k, pixels.std(0))
                        means.append(pixels.mean(0))
                for i in range(len(means)):
                    for j in range(i):
                        assert np.abs(means[i] - means[j]).max() > 0.1


def test_seeded_pipelines_repeat_and_shuffle():
    source = data.synthetic(6, (32, 32), seed=0)
    kwargs = dict(batch_size=2, image_size=(24, 24), augment=True, shuffle=True, seed=3)
    first = [x.numpy() for x, _ in data.make_dataset(source, **kwargs)]
    second = [x.numpy() for x, _ in data.make_dataset(source, **kwargs)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    cached = data.make_dataset(source, cache=True, repeat=True, **kwargs)
    batches = [x.numpy() for x, _ in cached.take(6)]
    assert len(batches) == 6 and not np.array_equal(batches[0], batches[3])  # a new epoch, new draws


@pytest.mark.parametrize("output", ["labels", "masks"])
def test_fit_from_make_dataset(output):
    source = data.synthetic(8, (32, 32), seed=0, n_objects=(2, 4))
    ds = data.make_dataset(source, batch_size=4, output=output, max_instances=8, augment=True, seed=0)
    model = tiny_model(channels=4, h=32, w=32)
    model.compile(optimizer="adam", loss=DiscriminativeLoss(max_instances=8))
    history = model.fit(ds, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))


def test_fit_spatial_embedding_model_from_make_dataset():
    source = data.synthetic(4, (32, 32), seed=1, n_objects=(2, 4))
    ds = data.make_dataset(source, batch_size=2, output="labels", max_instances=8)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, SpatialEmbeddingHead()(keras.layers.Conv2D(8, 3, padding="same")(inputs)))
    model.compile(optimizer="adam", loss=SpatialEmbeddingLoss(max_instances=8))
    assert np.all(np.isfinite(model.fit(ds, epochs=1, verbose=0).history["loss"]))


# ---- overflow ---------------------------------------------------------------------------


def _many_masks(n=6):
    labels = np.zeros((12, 12), np.int32)
    for k in range(n):
        labels[k * 2 : k * 2 + 2, : k + 2] = k + 1  # mask k has 2 (k + 2) pixels
    return data.from_arrays([np.zeros((12, 12, 3), np.float32)], [labels]), labels


def test_overflow_error_names_the_image_and_count():
    source, _ = _many_masks()
    with pytest.raises(Exception, match=r"item 0 has 6 masks, above max_instances=4"):
        list(data.make_dataset(source, 1, max_instances=4))


def test_overflow_drop_smallest_logs_and_ignores(caplog):
    source, labels = _many_masks()
    with caplog.at_level(logging.WARNING, logger="keras_pixelembed"):
        _, y = next(iter(data.make_dataset(source, 1, max_instances=4, on_overflow="drop_smallest")))
    assert "dropped the 2 smallest of 6 masks" in caplog.text
    y = y.numpy()[0]
    assert y.max() == 4
    assert np.all(y[(labels == 1) | (labels == 2)] == -1)  # the two smallest: ignored, not background


def test_overflow_merge():
    source, labels = _many_masks()
    _, y = next(iter(data.make_dataset(source, 1, max_instances=4, on_overflow="merge")))
    y = y.numpy()[0]
    assert y.max() == 4 and len(np.unique(y[(labels >= 1) & (labels <= 3)])) == 1


@pytest.mark.parametrize("mode", ["drop_smallest", "merge"])
def test_overflow_after_crop_matches_the_numpy_rule(mode):
    import tensorflow as tf

    from keras_pixelembed.data.pipeline import _overflow_after_crop, resolve_overflow

    _, labels = _many_masks()
    labels = np.where(labels > 0, labels * 7, labels)  # ids not 1..K: renumbered
    labels[11, 11] = -1
    got = _overflow_after_crop(tf, tf.constant(labels), 4, mode).numpy()
    masks = np.stack([labels == i for i in np.unique(labels[labels > 0])]).astype(np.uint8)
    kept, ignore = resolve_overflow(masks, labels < 0, 4, mode, "x")
    want = data.masks_to_label_map(kept, ignore=ignore)
    np.testing.assert_array_equal(got, want)
    few = np.where(labels > 21, 0, labels)  # 3 objects: below the limit, only renumbered
    np.testing.assert_array_equal(_overflow_after_crop(tf, tf.constant(few), 4, mode).numpy()[few > 0] > 0, True)
    empty = np.zeros((5, 5), np.int32)
    np.testing.assert_array_equal(_overflow_after_crop(tf, tf.constant(empty), 4, mode).numpy(), empty)


def test_augmented_labels_resolve_overflow_per_crop():
    # 40 one-pixel-apart objects in a 64 x 64 image, max_instances 8: each 16 x 16 crop holds
    # few enough that nothing is dropped, which the whole-image rule would have (32 of 40)
    labels = np.zeros((64, 64), np.int32)
    for k in range(40):
        r, c = divmod(k, 8)
        labels[r * 12 + 2 : r * 12 + 5, c * 8 + 2 : c * 8 + 5] = k + 1
    source = data.from_arrays([np.zeros((64, 64, 3), np.float32)], [labels])
    ds = data.make_dataset(
        source, 1, image_size=(16, 16), max_instances=8, augment=True, on_overflow="drop_smallest", seed=1, repeat=True
    )
    seen = [y.numpy()[0] for _, y in ds.take(20)]
    assert all(y.max() <= 8 for y in seen)
    assert any(y.max() >= 2 for y in seen) and not any((y == -1).any() for y in seen)


@pytest.mark.parametrize("output", ["labels", "masks"])
def test_background_as_instance_takes_one_slot(output):
    labels = np.zeros((12, 12), np.int32)
    labels[1:4, 1:4], labels[6:10, 6:10], labels[0, 11] = 3, 5, -1
    source = data.from_arrays([np.zeros((12, 12, 3), np.float32)], [labels])
    _, y = next(iter(data.make_dataset(source, 1, max_instances=3, output=output, background_as_instance=True)))
    y = y.numpy()[0]
    if output == "labels":
        want = np.where(labels == 0, 3, np.where(labels == 3, 1, np.where(labels == 5, 2, -1)))
        np.testing.assert_array_equal(y, want)
    else:
        assert y.shape == (12, 12, 3)
        np.testing.assert_array_equal(y[..., 2], np.where(labels == 0, 1, np.where(labels < 0, -1, 0)))
        assert np.all(y[0, 11] == -1)
    with pytest.raises(Exception, match="above max_instances=2"):  # two objects + background > 3 slots - 1
        list(data.make_dataset(source, 1, max_instances=2, output=output, background_as_instance=True))


# ---- bad input --------------------------------------------------------------------------


def test_missing_label_names_both_paths(tmp_path):
    images_dir, labels_dir, _ = _write_folder(tmp_path)
    os.remove(os.path.join(labels_dir, "img1.png"))
    with pytest.raises(FileNotFoundError, match=r"img1\.png.*labels.*img1"):
        data.from_folder(images_dir, labels_dir=labels_dir)


def test_size_mismatch_names_both_shapes(tmp_path):
    images_dir, labels_dir, _ = _write_folder(tmp_path)
    Image.fromarray(np.zeros((5, 7), np.uint16)).save(os.path.join(labels_dir, "img2.png"))
    with pytest.raises(ValueError, match=r"img2\.png is 20x24.*img2\.png is 5x7"):
        data.from_folder(images_dir, labels_dir=labels_dir)


def test_corrupt_file_names_its_path(tmp_path):
    images_dir, labels_dir, _ = _write_folder(tmp_path)
    with open(os.path.join(images_dir, "img0.png"), "wb") as f:
        f.write(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"Cannot read image file .*img0\.png"):
        data.from_folder(images_dir, labels_dir=labels_dir)


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images.*empty"):
        data.from_folder(str(tmp_path / "empty"), labels_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.from_folder(str(tmp_path / "nowhere"), labels_dir=str(tmp_path))


def test_label_image_that_is_not_integer(tmp_path):
    import tifffile

    images_dir, labels_dir, _ = _write_folder(tmp_path, n=1)
    os.remove(os.path.join(labels_dir, "img0.png"))
    tifffile.imwrite(os.path.join(labels_dir, "img0.tif"), np.full((20, 24), 0.5, np.float32))
    source = data.from_folder(images_dir, labels_dir=labels_dir)
    with pytest.raises(ValueError, match=r"img0\.tif holds float32"):
        source.load(0)


def test_native_sizes_that_differ_need_image_size():
    source = data.from_arrays(
        [np.zeros((8, 8, 3)), np.zeros((9, 8, 3))], [np.zeros((8, 8), int), np.zeros((9, 8), int)]
    )
    with pytest.raises(ValueError, match=r"item 0 is 8x8 and item 1 is 9x8"):
        data.make_dataset(source, batch_size=2)
    x, _ = next(iter(data.make_dataset(source, batch_size=2, image_size=(6, 6))))
    assert x.shape == (2, 6, 6, 3)


def test_bad_arguments_name_the_argument():
    source = data.synthetic(2, (32, 32))
    for kwargs, name in (
        ({"output": "boxes"}, "output"),
        ({"on_overflow": "skip"}, "on_overflow"),
        ({"batch_size": 0}, "batch_size"),
        ({"image_size": (0, 4)}, "image_size"),
    ):
        args = {"batch_size": 1, **kwargs}
        with pytest.raises(ValueError, match=name):
            data.make_dataset(source, **args)


# ---- COCO -------------------------------------------------------------------------------


def _write_coco(tmp_path, missing=False):
    from pycocotools import mask as mask_utils

    (tmp_path / "coco").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "coco" / "a.png")
    rle_mask = np.zeros((20, 30), np.uint8, order="F")
    rle_mask[10:15, 20:28] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()
    crowd = np.zeros((20, 30), np.uint8, order="F")
    crowd[0:4, 0:30] = 1
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    doc = {
        "images": [{"id": 1, "file_name": "b.png" if missing else "a.png", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "iscrowd": 0, "segmentation": [[2, 5, 12, 5, 12, 15, 2, 15]]},
            {"id": 2, "image_id": 1, "iscrowd": 0, "segmentation": rle},
            {"id": 3, "image_id": 1, "iscrowd": 1, "segmentation": crowd_rle},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "coco" / "ann.json"
    path.write_text(json.dumps(doc))
    return str(path), str(tmp_path / "coco"), rle_mask


def test_coco_polygons_rle_and_crowd(tmp_path):
    pytest.importorskip("pycocotools")
    ann, images_dir, rle_mask = _write_coco(tmp_path)
    source = data.from_coco(ann, images_dir)
    image, masks, ignore = source.load(0)
    assert masks.shape == (2, 20, 30)
    np.testing.assert_array_equal(masks[1], rle_mask)
    assert masks[0][6:14, 3:11].all() and masks[0].sum() < 150
    assert ignore[0:4].all() and not ignore[5:].any()
    _, y = next(iter(data.make_dataset(source, 1)))
    assert np.all(y.numpy()[0, 0:4] == -1)


def test_coco_missing_image_names_it(tmp_path):
    pytest.importorskip("pycocotools")
    ann, images_dir, _ = _write_coco(tmp_path, missing=True)
    with pytest.raises(FileNotFoundError, match=r"image id 1 .*b\.png"):
        data.from_coco(ann, images_dir)
