"""The run directory: one writer and reader of model.keras, config.json, thresholds.json, metrics.json, README.md."""

from __future__ import annotations

import json
import os

import pytest

from keras_pixelembed import run_dir
from tests.helpers import tiny_model_dir


def test_a_config_without_its_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match="head"):
        run_dir.save_config(str(tmp_path), {"loss": "spatial_embedding"})
    assert not os.listdir(tmp_path)


def test_files_round_trip_and_leave_no_temporary_file(tmp_path):
    path = tiny_model_dir(tmp_path / "run", head="embedding")
    run_dir.save_metrics(path, {"ours": {"sbd": 0.5}})
    run_dir.save_card(path, run_dir.model_card("tiny", run_dir.load_run(path).config, {"radius": 0.5}, "| table |"))
    run = run_dir.load_run(path)
    assert run.head == "embedding" and run.metrics == {"ours": {"sbd": 0.5}} and run.thresholds["radius"] == 0.5
    with open(os.path.join(path, "README.md")) as f:
        assert "embedding head" in f.read()
    assert sorted(os.listdir(path)) == ["README.md", "config.json", "metrics.json", "model.keras", "thresholds.json"]


def test_old_key_names_are_read_as_todays(tmp_path):
    path = tiny_model_dir(tmp_path / "run")
    config = run_dir.read_json(os.path.join(path, "config.json"))
    config["loss_pixel_size"] = config.pop("pixel_size")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    assert run_dir.load_run(path).config["pixel_size"] == config["loss_pixel_size"]


def test_unreadable_json_names_the_file(tmp_path):
    path = tiny_model_dir(tmp_path / "run")
    with open(os.path.join(path, "thresholds.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="thresholds.json"):
        run_dir.load_run(path)


def test_publish_replaces_a_whole_directory(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "out.tmp"
    out.mkdir()
    (out / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    run_dir.publish(str(tmp), str(out))
    assert os.listdir(out) == ["new.txt"] and not tmp.exists()


def test_a_bare_model_has_its_head_read_off_its_layers(tmp_path):
    import keras

    from keras_pixelembed import SpatialEmbeddingHead
    from keras_pixelembed.models import build_pixel_embedder
    from tests.helpers import tiny_model

    embedding = build_pixel_embedder(head="embedding", embedding_dim=5, width=4, depth=1)  # 5 channels
    assert run_dir.guess_head(embedding) == "embedding"
    inputs = keras.Input((None, None, 3))
    spatial = keras.Model(inputs, SpatialEmbeddingHead(n_sigma=2)(keras.layers.Conv2D(4, 3, padding="same")(inputs)))
    assert run_dir.guess_head(spatial) == "spatial"
    outer = keras.Input((None, None, 3))
    assert run_dir.guess_head(keras.Model(outer, spatial(outer))) == "spatial"  # nested
    assert run_dir.guess_head(tiny_model(channels=8)) == "embedding"
    path = str(tmp_path / "bare.keras")
    tiny_model(channels=4).save(path)
    with pytest.raises(ValueError, match=r"bare\.keras.*4 channels.*config\.json"):
        run_dir.load_run(path)
