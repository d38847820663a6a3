"""Volumes end to end: `Segmenter` on volumes (whole, tiled in z, y and x, the graph against
the numpy clustering), volume sources and batches, `train` with `ndim=3`, the command line
(`train folder --ndim 3`, `segment vol.tif`, `evaluate`) and the exports of a volume model."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tifffile

from keras_pixelembed import data
from keras_pixelembed.cli import main
from keras_pixelembed.layers import CoordinateGrid
from keras_pixelembed.run_dir import read_json
from keras_pixelembed.segmenter import Segmenter
from keras_pixelembed.training import TrainConfig
from tests.helpers import BACKEND, THROUGH_TENSORFLOW_ONCE

THRESHOLDS = dict(seed_threshold=0.5, fg_threshold=0.45, min_size=3)


def _pointwise_volume_model():
    """A 3D model whose output at a voxel depends only on that voxel and its position (a 1x1x1
    convolution of the intensity and `CoordinateGrid`): tiling must give exactly the whole
    volume's output. Bright voxels are seeds, offsets shift a little with the position, the
    bandwidth keeps proposals a few voxels wide: several instances per volume."""
    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Concatenate()([inputs, CoordinateGrid(1.0 / 16, z_spacing=2.0)(inputs)])
    head = keras.layers.Conv3D(5, 1)
    model = keras.Model(inputs, head(x))
    kernel = np.zeros((1, 1, 1, 4, 5), np.float32)
    kernel[0, 0, 0, 1:, :3] = 0.002 * np.random.default_rng(3).normal(size=(3, 3))  # offsets from positions
    kernel[0, 0, 0, 0, 3] = 0.05  # sigma
    kernel[0, 0, 0, 0, 4] = 20.0  # seed logit from the intensity
    head.set_weights([kernel, np.array([0, 0, 0, 1.0, -8.0], np.float32)])
    return model


def _volume(seed=0, shape=(10, 21, 26)):
    return data.synthetic_volume(np.random.default_rng(seed), shape, z_spacing=2.0, n_objects=(2, 4), radius=(3.0, 6.0))


def test_segmenter_tiles_volumes_in_z_y_and_x_and_the_graph_equals_numpy():
    model = _pointwise_volume_model()
    whole = Segmenter(model, multiple=1, z_spacing=2.0, thresholds=THRESHOLDS, tile_size=None)
    assert whole.ndim == 3 and whole.channels == 1
    image, _ = _volume()
    out = whole.predict(image[..., 0])  # (d, h, w) grey volumes are taken as they come
    assert out.shape == (10, 21, 26, 5)
    labels = whole.segment(image)
    assert labels.shape == (10, 21, 26) and labels.dtype == np.int32 and labels.max() >= 2
    np.testing.assert_array_equal(labels, whole.cluster(out))  # the in-graph clustering is the numpy one
    tiled = Segmenter(model, multiple=1, z_spacing=2.0, thresholds=THRESHOLDS, tile_size=8, tile_overlap=1)
    np.testing.assert_allclose(tiled.predict(image), out, atol=1e-5)  # cells of 6 voxels in every axis
    np.testing.assert_array_equal(tiled.segment(image), labels)  # band by band of slices
    # a batch of volumes
    batch = whole._run(np.stack([image, image[::-1]]))["labels"]
    np.testing.assert_array_equal(batch[0], labels)


def test_segmenter_refuses_what_volumes_cannot_take():
    model = _pointwise_volume_model()
    seg = Segmenter(model, multiple=1)
    with pytest.raises(ValueError, match=r"\(d, h, w, 1\)"):
        seg.segment(np.zeros((4, 5, 6, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(d, h, w, 1\)"):
        seg.segment(np.zeros((5, 6), np.float32))
    with pytest.raises(ValueError, match="1 x 1 x 1"):
        seg.segment(np.zeros((0, 5, 6), np.float32))
    for bad, match in ((dict(tta=True), "tta"), (dict(scale=0.5), "scale"), (dict(head="embedding"), "spatial head")):
        with pytest.raises(ValueError, match=match):
            Segmenter(model, **bad)
    with pytest.raises(ValueError, match="z_spacing"):
        Segmenter(model, z_spacing=0.0)


def test_volume_sources_batches_and_relabelled_crops(tmp_path):
    from keras_pixelembed.data.volumes import relabel_crop

    labels = np.array([[[0, 7, 7, 3], [3, 3, -1, 9]]], np.int32)
    np.testing.assert_array_equal(relabel_crop(labels, None), [[[0, 2, 2, 1], [1, 1, -1, 3]]])
    # above max_instances the smallest become ignored (ties keep the lower id)
    np.testing.assert_array_equal(relabel_crop(labels, 2), [[[0, 2, 2, 1], [1, 1, -1, -1]]])
    source = data.SyntheticVolumes(3, shape=(6, 20, 20), seed=2, z_spacing=2.0)
    volume, truth = source.load_labels(1)
    np.testing.assert_array_equal(
        truth, data.synthetic_volume(np.random.default_rng([2, 1]), (6, 20, 20), z_spacing=2.0)[1]
    )
    train = data.VolumeBatches(source, (4, 16, 16), batch_size=2, max_instances=3, steps=5, seed=1)
    x, y = train[0]
    assert len(train) == 5 and x.shape == (2, 4, 16, 16, 1) and y.shape == (2, 4, 16, 16)
    assert y.dtype == np.float32 and y.max() <= 3
    np.testing.assert_array_equal(train[0][1], y)  # the same within an epoch...
    train.on_epoch_end()
    assert not np.array_equal(train[0][0], x)  # ...new crops the next one
    val = data.VolumeBatches(source, (8, 24, 24), batch_size=2, random=False)
    assert len(val) == 2 and val[1][0].shape == (1, 8, 24, 24, 1)  # central crops, padded when smaller
    np.testing.assert_array_equal(val[0][0], val[0][0])
    arrays = data.volumes_from_arrays([volume[..., 0]], [truth])
    assert arrays.load_labels(0)[0].shape == (6, 20, 20, 1)
    with pytest.raises(ValueError, match="Volume 0"):
        data.volumes_from_arrays([volume], [truth[:3]])
    # folders: unmatched stems, shapes that differ (both files named), empty folders
    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    with pytest.raises(ValueError, match="No volumes"):
        data.volumes_from_folder(str(tmp_path / "im"), str(tmp_path / "lab"))
    tifffile.imwrite(tmp_path / "im" / "a.tif", (volume[..., 0] * 255).astype(np.uint8))
    with pytest.raises(FileNotFoundError, match=r"a\.tif"):
        data.volumes_from_folder(str(tmp_path / "im"), str(tmp_path / "lab"))
    tifffile.imwrite(tmp_path / "lab" / "a.tif", truth[:4].astype(np.uint16))
    with pytest.raises(ValueError, match=r"lab/a\.tif.*im/a\.tif"):
        data.volumes_from_folder(str(tmp_path / "im"), str(tmp_path / "lab"))
    data.save_label_volume(str(tmp_path / "lab" / "a.tif"), truth)
    folder = data.volumes_from_folder(str(tmp_path / "im"), str(tmp_path / "lab"))
    assert len(folder) == 1 and folder.shape(0) == (6, 20, 20)
    tifffile.imwrite(tmp_path / "im" / "c.tif", np.zeros((6, 20, 20, 2), np.uint8))
    data.save_label_volume(str(tmp_path / "lab" / "c.tif"), truth)
    with pytest.raises(ValueError, match=r"c\.tif has 2 channel"):
        data.volumes_from_folder(str(tmp_path / "im"), str(tmp_path / "lab"))
    (tmp_path / "im" / "c.tif").unlink()
    (tmp_path / "lab" / "c.tif").unlink()
    np.testing.assert_array_equal(folder.load_labels(0)[1], truth)
    # a held-out folder: a label stack without its volume, or the training volume itself, is refused
    data.save_label_volume(str(tmp_path / "lab" / "b.tif"), truth)
    with pytest.raises(ValueError, match=r"b\.tif has no image"):
        data.check_test_source(folder)
    (tmp_path / "lab" / "b.tif").unlink()
    with pytest.raises(ValueError, match="also a training"):
        data.check_test_source(folder, data.train_validation_split(folder, 0.5, 0)[0])


def test_volume_models_have_no_position_channels_unless_asked():
    from keras_pixelembed.training import make_model

    def grids(config):
        return sum(isinstance(layer, CoordinateGrid) for layer in make_model(config)._flatten_layers())

    volumes = TrainConfig(ndim=3, image_size=(8, 16, 16), width=4, depth=2)
    assert volumes.coordinates is False and grids(volumes) == 0  # works at any size and position
    assert grids(TrainConfig(ndim=3, image_size=(8, 16, 16), width=4, depth=2, coordinates=True)) == 1
    assert TrainConfig().coordinates is True and grids(TrainConfig(width=4, depth=2)) == 1


def test_volume_train_config_is_checked():
    with pytest.raises(ValueError, match="D H W"):
        TrainConfig(ndim=3)  # the images' default (128, 128)
    with pytest.raises(ValueError, match="spatial-embedding"):
        TrainConfig(ndim=3, image_size=(8, 16, 16), loss="discriminative")
    with pytest.raises(ValueError, match="one device"):
        TrainConfig(ndim=3, image_size=(8, 16, 16), distribute="mirrored")
    with pytest.raises(ValueError, match="ndim"):
        TrainConfig(ndim=4, image_size=(8, 8, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        TrainConfig(ndim=3, image_size=(6, 16, 16), depth=2)
    with pytest.raises(ValueError, match="volume source"):
        from keras_pixelembed.training import train

        train(TrainConfig(ndim=3, image_size=(8, 16, 16)), data.synthetic(2, (16, 16)), data.synthetic(1, (16, 16)))


def _write_volumes(folder, n, seed):
    os.makedirs(folder / "images")
    os.makedirs(folder / "labels")
    for i in range(n):
        image, labels = _volume(seed * 100 + i, (10, 28, 30))
        tifffile.imwrite(folder / "images" / f"v{i}.tif", (image[..., 0] * 65535).astype(np.uint16))
        data.save_label_volume(str(folder / "labels" / f"v{i}.tif"), labels)


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="the same Python path as TensorFlow and PyTorch; JAX compiles the 3D U-Net anew for every volume shape "
    "(about 2 minutes here)",
)
def test_command_line_trains_segments_and_evaluates_volumes(tmp_path, capsys):
    _write_volumes(tmp_path / "train", 3, 1)
    _write_volumes(tmp_path / "test", 1, 2)
    run = str(tmp_path / "run")
    flags = "--epochs 1 --steps-per-epoch 2 --width 4 --depth 2 --batch-size 2 --no-export --no-tensorboard"
    argv = ["train", "folder", "--ndim", "3", "--image-size", "8", "24", "24", "--z-spacing", "2", *flags.split()]
    argv += ["--images", str(tmp_path / "train/images"), "--labels", str(tmp_path / "train/labels")]
    argv += ["--test-images", str(tmp_path / "test/images"), "--test-labels", str(tmp_path / "test/labels")]
    assert main([*argv, "--out-dir", run]) == 0
    config = read_json(os.path.join(run, "config.json"))
    assert config["ndim"] == 3 and config["z_spacing"] == 2.0 and config["channels"] == 1
    assert config["coordinates"] is False
    metrics = read_json(os.path.join(run, "metrics.json"))
    assert metrics["evaluated_on"] == "test" and metrics["evaluated_images"][0].endswith("v0.tif")
    assert "slic" in metrics and "felzenszwalb" not in metrics
    seg = Segmenter.load(run)
    assert seg.ndim == 3 and seg.z_spacing == 2.0
    # segment: DIR/<name>.tif, uint16 labels (z, y, x), those of Segmenter.segment
    assert main(["segment", str(tmp_path / "test/images/v0.tif"), "--model", run, "--out", str(tmp_path / "seg")]) == 0
    written = tifffile.imread(tmp_path / "seg" / "v0.tif")
    assert written.dtype == np.uint16 and written.shape == (10, 28, 30)
    volume, _ = data.load_volume_pair(str(tmp_path / "test/images/v0.tif"))
    np.testing.assert_array_equal(written, seg.segment(volume))
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model",
                run,
                "--images",
                str(tmp_path / "test/images"),
                "--labels",
                str(tmp_path / "test/labels"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| slic |" in out and "mean over 1 volumes" in out
    # bad input: one line naming the problem, nothing written
    bad = [*argv[:-8], "--images", str(tmp_path / "train/images"), "--labels", str(tmp_path / "test/labels")]
    assert main([*bad, "--out-dir", str(tmp_path / "bad")]) == 2
    assert "No label volume" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*argv[:5], "24", "24", *argv[8:], "--out-dir", str(tmp_path / "bad")]) == 2
    assert "D H W" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@THROUGH_TENSORFLOW_ONCE
def test_exports_of_a_volume_model_serve_labels_at_any_size(tmp_path):
    from keras_pixelembed.export import export_onnx, export_saved_model

    ort = pytest.importorskip("onnxruntime")
    seg = Segmenter(_pointwise_volume_model(), multiple=4, z_spacing=2.0, thresholds=THRESHOLDS)
    onnx_path = export_onnx(seg, str(tmp_path / "v.onnx"))
    session = ort.InferenceSession(onnx_path)
    for shape in ((10, 21, 26), (3, 5, 7)):
        image, _ = _volume(1, shape)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": image[None]})))
        assert got["labels"].shape == (1, *shape)
        np.testing.assert_array_equal(got["labels"][0], seg.segment(image))
        np.testing.assert_allclose(got["output"][0], seg.predict(image), atol=1e-4)
    meta = json.loads({p.key: p.value for p in __import__("onnx").load(onnx_path).metadata_props}["pixelembed"])
    assert meta["ndim"] == 3 and meta["z_spacing"] == 2.0
    with pytest.raises(ValueError, match="depth, height, width"):
        export_onnx(seg, str(tmp_path / "w.onnx"), image_size=(16, 16))
    saved = export_saved_model(seg, str(tmp_path / "sm"))
    assert os.path.isfile(os.path.join(saved, "assets", "pixelembed.json"))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        image, _ = _volume(2, (6, 9, 11))
        served = tf.saved_model.load(saved).signatures["serving_default"](images=tf.constant(image[None]))
        np.testing.assert_array_equal(served["labels"].numpy()[0], seg.segment(image))
