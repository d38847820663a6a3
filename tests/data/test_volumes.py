"""Volumes as data: the synthetic 3D generator, TIFF stacks (reading, writing, mismatches), crops,
flips and rotations."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from keras_pixelembed.data import (
    load_volume_pair,
    random_crop_and_flip,
    save_label_volume,
    synthetic_volume,
    synthetic_volumes,
)


def test_synthetic_volumes_are_deterministic_labelled_and_touching():
    a, la = synthetic_volumes(3, seed=4, shape=(16, 32, 32))
    b, lb = synthetic_volumes(3, seed=4, shape=(16, 32, 32))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert a.shape == (3, 16, 32, 32, 1) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert la.shape == (3, 16, 32, 32) and la.dtype == np.int32
    for labels in la:
        ids = np.unique(labels[labels > 0])
        np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))  # ids 1..K
        assert ids.size >= 2
    # objects are brighter than the background on average
    assert a[la > 0].mean() > a[la == 0].mean() + 0.2
    # anisotropic: objects are flatter along z in voxels
    image, labels = synthetic_volume(np.random.default_rng(0), shape=(16, 48, 48), z_spacing=3.0, n_objects=(3, 3))
    for k in np.unique(labels[labels > 0]):
        z, y, _ = np.nonzero(labels == k)
        assert np.ptp(z) <= np.ptp(y)


def test_tiff_stacks_round_trip_and_mismatches_name_both_files(tmp_path):
    image, labels = synthetic_volume(np.random.default_rng(1), shape=(6, 16, 20))
    raw = (image[..., 0] * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "vol.tif", raw)
    path = save_label_volume(str(tmp_path / "vol_labels.tif"), labels)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".partial")]
    read, read_labels = load_volume_pair(str(tmp_path / "vol.tif"), path)
    assert read.shape == (6, 16, 20, 1)
    np.testing.assert_allclose(read[..., 0], raw / 65535.0, rtol=1e-6)
    np.testing.assert_array_equal(read_labels, labels)
    assert tifffile.imread(path).dtype == np.uint16
    tifffile.imwrite(tmp_path / "short.tif", labels[:4].astype(np.uint16))
    with pytest.raises(ValueError, match=r"short\.tif.*vol\.tif"):
        load_volume_pair(str(tmp_path / "vol.tif"), str(tmp_path / "short.tif"))
    tifffile.imwrite(tmp_path / "flat.tif", raw[0])
    with pytest.raises(ValueError, match=r"flat\.tif"):
        load_volume_pair(str(tmp_path / "flat.tif"))
    with pytest.raises(ValueError, match="label volume"):
        save_label_volume(str(tmp_path / "bad.tif"), labels[0])
    assert not (tmp_path / "bad.tif").exists()


def test_crops_flips_and_rotations_keep_image_and_labels_together():
    rng = np.random.default_rng(2)
    image, labels = synthetic_volume(rng, shape=(8, 24, 24))
    image = np.concatenate([image, labels[..., None].astype(np.float32)], -1)  # channel 1 = the labels
    for _ in range(10):
        crop, crop_labels = random_crop_and_flip(rng, image, labels, (4, 16, 16))
        assert crop.shape == (4, 16, 16, 2) and crop_labels.shape == (4, 16, 16)
        np.testing.assert_array_equal(crop[..., 1], crop_labels)
    small, small_labels = random_crop_and_flip(rng, image, labels, (12, 16, 16))  # deeper than the volume: padded
    assert small.shape == (12, 16, 16, 2)
    np.testing.assert_array_equal(small[..., 1], small_labels)


def test_an_imagej_hyperstack_has_its_channels_moved_last(tmp_path):
    from keras_pixelembed.data import volumes_from_folder

    image, labels = synthetic_volume(np.random.default_rng(2), shape=(5, 12, 14))
    two = np.stack([image[..., 0], 1 - image[..., 0]], axis=1)  # (z, c, y, x)
    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "im" / "h.tif", (two * 255).astype(np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    save_label_volume(str(tmp_path / "lab" / "h.tif"), labels)
    read, read_labels = load_volume_pair(str(tmp_path / "im" / "h.tif"), str(tmp_path / "lab" / "h.tif"))
    assert read.shape == (5, 12, 14, 2)
    np.testing.assert_allclose(read[..., 1], 1 - image[..., 0], atol=1 / 255)  # the second channel, last
    np.testing.assert_array_equal(read_labels, labels)
    assert volumes_from_folder(str(tmp_path / "im"), str(tmp_path / "lab")).shape(0) == (5, 12, 14)
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match=r"bad\.tif"):
        load_volume_pair(str(tmp_path / "bad.tif"))
