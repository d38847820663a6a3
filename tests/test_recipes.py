"""Every recipe runs one short epoch on tiny images."""

from __future__ import annotations

import json
import os
import runpy
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_pixelembed import data
from tests.helpers import TINY_SYNTHETIC_FLAGS, TINY_TRAIN_FLAGS

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def _run(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    monkeypatch.syspath_prepend(RECIPES)
    runpy.run_path(os.path.join(RECIPES, name), run_name="__main__")


def _check_outputs(out):
    for name in ("model.keras", "config.json", "thresholds.json", "metrics.json", "log.csv"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"ours", "slic", "felzenszwalb"} <= set(metrics)
    again = keras.saving.load_model(str(out / "model.keras"), safe_mode=True)
    assert again.loss is not None


@pytest.mark.parametrize("loss", ["spatial_embedding", "discriminative"])
def test_train_synthetic(tmp_path, monkeypatch, loss):
    _run(
        "train_synthetic.py",
        ["--loss", loss, "--out-dir", str(tmp_path / "run"), "--train-images", "4", *TINY_SYNTHETIC_FLAGS],
        monkeypatch,
    )
    _check_outputs(tmp_path / "run")


def _folder(tmp_path, n=4, prefix="", seed=2):
    (tmp_path / f"{prefix}images").mkdir()
    (tmp_path / f"{prefix}labels").mkdir()
    source = data.synthetic(n, (40, 36), seed=seed)
    for i in range(n):
        image, masks, _ = source.load(i)
        Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / f"{prefix}images" / f"{i}.png")
        label = data.masks_to_label_map(masks).astype(np.uint16)
        Image.fromarray(label).save(tmp_path / f"{prefix}labels" / f"{i}.png")
    return str(tmp_path / f"{prefix}images"), str(tmp_path / f"{prefix}labels")


def test_train_folder_from_a_handful_of_images(tmp_path, monkeypatch):
    images, labels = _folder(tmp_path)
    _run(
        "train_folder.py",
        ["--images", images, "--labels", labels, "--out-dir", str(tmp_path / "run"), *TINY_TRAIN_FLAGS],
        monkeypatch,
    )
    _check_outputs(tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "validation"  # no held-out set: said plainly
    assert len(metrics["evaluated_images"]) == metrics["images"] == 1


def test_train_folder_reports_only_the_held_out_set(tmp_path, monkeypatch, capsys):
    images, labels = _folder(tmp_path)
    test_images, test_labels = _folder(tmp_path, n=3, prefix="test_", seed=7)
    flags = ["--images", images, "--labels", labels, "--test-images", test_images, "--test-labels", test_labels]
    _run("train_folder.py", [*flags, "--out-dir", str(tmp_path / "run"), *TINY_TRAIN_FLAGS], monkeypatch)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "test" and metrics["images"] == 3
    assert sorted(os.path.basename(p) for p in metrics["evaluated_images"]) == ["0.png", "1.png", "2.png"]
    assert all(p.startswith(test_images) for p in metrics["evaluated_images"])
    assert "held-out test images" in capsys.readouterr().out


def test_a_bad_held_out_set_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    images, labels = _folder(tmp_path)
    test_images, test_labels = _folder(tmp_path, n=2, prefix="test_", seed=7)
    out = tmp_path / "run"

    def refused(extra, match):
        with pytest.raises(ValueError, match=match):
            _run(
                "train_folder.py",
                ["--images", images, "--labels", labels, *extra, "--out-dir", str(out), *TINY_TRAIN_FLAGS],
                monkeypatch,
            )
        assert not out.exists()

    refused(["--test-images", test_images], "--test-labels")  # images without labels
    refused(["--test-images", images, "--test-labels", labels], "also a training or validation image")
    Image.fromarray(np.ones((40, 36), np.uint16)).save(os.path.join(test_labels, "9.png"))  # a label, no image
    refused(["--test-images", test_images, "--test-labels", test_labels], r"9\.png has no image")
    os.remove(os.path.join(test_labels, "9.png"))
    Image.fromarray(np.zeros((40, 36), np.uint16)).save(os.path.join(test_labels, "1.png"))  # no object
    refused(["--test-images", test_images, "--test-labels", test_labels], r"1\.png has no labelled object")
    Image.fromarray(np.zeros((20, 36), np.uint16)).save(os.path.join(test_labels, "1.png"))  # another size
    with pytest.raises(ValueError, match=r"1\.png"):
        _run(
            "train_folder.py",
            ["--images", images, "--labels", labels, "--test-images", test_images, "--test-labels", test_labels,
             "--out-dir", str(out), *TINY_TRAIN_FLAGS],
            monkeypatch,
        )  # fmt: skip
    assert not out.exists()


def test_train_coco(tmp_path, monkeypatch):
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils

    images, _ = _folder(tmp_path, n=3)
    source = data.synthetic(3, (40, 36), seed=2)
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for i in range(3):
        doc["images"].append({"id": i, "file_name": f"{i}.png", "height": 40, "width": 36})
        for j, m in enumerate(source.load(i)[1]):
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            doc["annotations"].append(
                {"id": 100 * i + j, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": rle}
            )
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    _run(
        "train_coco.py",
        ["--annotations", str(ann), "--images", images, "--out-dir", str(tmp_path / "run"), *TINY_TRAIN_FLAGS],
        monkeypatch,
    )
    _check_outputs(tmp_path / "run")


def test_overfit_one_image(tmp_path, monkeypatch, capsys):
    _run(
        "overfit_one_image.py",
        ["--steps", "3", "--images", "2", "--image-size", "32", "32", "--width", "4", "--out-dir", str(tmp_path)],
        monkeypatch,
    )
    rows = json.loads((tmp_path / "overfit.json").read_text())
    assert [r["stage"] for r in rows][:2] == ["1 image, 1 mask", "1 image, all masks"]
    assert "object SBD" in capsys.readouterr().out


def test_recipes_have_help(monkeypatch):
    for name in ("train_synthetic.py", "train_folder.py", "train_coco.py", "overfit_one_image.py"):
        with pytest.raises(SystemExit) as info:
            _run(name, ["--help"], monkeypatch)
        assert info.value.code == 0
    for kind in ("folder", "synthetic"):
        with pytest.raises(SystemExit) as info:
            _run("train_volumes.py", [kind, "--help"], monkeypatch)
        assert info.value.code == 0


def test_train_volumes_runs_one_short_epoch_on_synthetic_volumes(tmp_path, monkeypatch, capsys):
    flags = "--image-size 8 16 16 --train-images 2 --validation-images 1 --test-images 1 --epochs 1"
    flags += " --steps-per-epoch 2 --width 4 --no-export --no-tensorboard --out-dir"
    _run("train_volumes.py", ["synthetic", *flags.split(), str(tmp_path / "run")], monkeypatch)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["ndim"] == 3 and config["z_spacing"] == 2.0 and config["image_size"] == [8, 16, 16]
    assert metrics["evaluated_on"] == "test" and {"ours", "slic"} <= set(metrics)
    assert "| ours |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="folder|synthetic"):
        _run("train_volumes.py", ["--epochs", "1"], monkeypatch)
