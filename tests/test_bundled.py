"""The models that ship with the package: present, small, loadable with safe_mode, usable."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from keras_pixelembed.bundled import BUNDLED_DIR, bundled_models, default_model_path
from keras_pixelembed.cli import main
from keras_pixelembed.segmenter import Segmenter


def test_one_model_per_head_each_small_with_its_card():
    heads = set()
    for name in bundled_models():
        folder = os.path.join(BUNDLED_DIR, name)
        assert os.path.getsize(os.path.join(folder, "model.keras")) <= 10 * 2**20
        for part in ("config.json", "thresholds.json", "metrics.json", "README.md"):
            assert os.path.isfile(os.path.join(folder, part)), (name, part)
        with open(os.path.join(folder, "config.json")) as f:
            heads.add(json.load(f)["head"])
        with open(os.path.join(folder, "metrics.json")) as f:
            metrics = json.load(f)
        assert {"ours", "slic", "felzenszwalb"} <= set(metrics)
    assert heads == {"spatial", "embedding"}


def test_default_model_loads_with_safe_mode_and_segments():
    path = default_model_path()
    model = keras.saving.load_model(os.path.join(path, "model.keras"), safe_mode=True)
    assert model.loss is not None
    segmenter = Segmenter.load(path)
    from keras_pixelembed import data

    image, masks, _ = data.synthetic(1, (64, 72), families=("multicolor",), seed=777).load(0)
    labels = segmenter.segment(image)
    assert labels.shape == (64, 72) and labels.dtype == np.int32 and labels.max() >= 1
    # a bundled model by its name: the same model and thresholds
    by_name = Segmenter.load(os.path.basename(path))
    assert by_name.thresholds == segmenter.thresholds and np.array_equal(by_name.segment(image), labels)
    with pytest.raises(FileNotFoundError, match="no_such_model.*bundled: .*spatial_unet"):
        Segmenter.load("no_such_model")


def test_demo_on_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--images", "2", "--size", "64", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    text = capsys.readouterr().out
    assert "| ours |" in text and "| slic |" in text
