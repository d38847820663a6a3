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
from tests.helpers import TINY_TRAIN_FLAGS

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
        ["--loss", loss, "--out-dir", str(tmp_path / "run"), "--train-images", "4", *TINY_TRAIN_FLAGS],
        monkeypatch,
    )
    _check_outputs(tmp_path / "run")


def _folder(tmp_path, n=4):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    source = data.synthetic(n, (40, 36), seed=2)
    for i in range(n):
        image, masks, _ = source.load(i)
        Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(data.masks_to_label_map(masks).astype(np.uint16)).save(tmp_path / "labels" / f"{i}.png")
    return str(tmp_path / "images"), str(tmp_path / "labels")


def test_train_folder_from_a_handful_of_images(tmp_path, monkeypatch):
    images, labels = _folder(tmp_path)
    _run(
        "train_folder.py",
        ["--images", images, "--labels", labels, "--out-dir", str(tmp_path / "run"), *TINY_TRAIN_FLAGS],
        monkeypatch,
    )
    _check_outputs(tmp_path / "run")


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
