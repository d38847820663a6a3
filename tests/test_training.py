"""The training workflow: the configuration, the run directory it writes, resuming a stopped run."""

from __future__ import annotations

import csv
import json
import os

import keras
import pytest

from keras_pixelembed import data, run_dir
from keras_pixelembed.training import (
    LOSSES,
    TrainConfig,
    _init_weights,
    init_weights_path,
    make_loss,
    make_model,
    train,
)
from tests.helpers import TINY_TRAIN_CONFIG

TINY = TINY_TRAIN_CONFIG


def _sources(n=4):
    return data.synthetic(n, (32, 32), seed=0), data.synthetic(2, (32, 32), seed=1), data.synthetic(2, (32, 32), seed=2)


def test_config_round_trips_through_json_and_reads_old_key_names():
    config = TrainConfig(loss="discriminative", image_size=(64, 32), pixel_size=0.002, position_scale=0.05)
    saved = json.loads(json.dumps(config.to_json()))
    assert saved["head"] == "embedding" and saved["multiple"] == 8
    assert TrainConfig.from_json(saved) == config
    drawn = TrainConfig(generator="randomized", families=["flat", "spots"], backgrounds="photo")
    assert drawn.families == ("flat", "spots") and drawn.backgrounds == ("photo",)
    assert TrainConfig.from_json(json.loads(json.dumps(drawn.to_json()))) == drawn
    assert TrainConfig.from_json({k: v for k, v in saved.items() if k != "generator"}).generator == "classic"
    old = {**saved, "loss_pixel_size": 0.004, "input_pixel_size": 0.1}
    del old["pixel_size"], old["position_scale"]
    again = TrainConfig.from_json(old)
    assert again.pixel_size == 0.004 and again.position_scale == 0.1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"loss": "nope"}, "loss"),
        ({"distribute": "x"}, "distribute"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"image_size": (30, 32), "depth": 2}, "image_size"),
        ({"generator": "fractal"}, "generator"),
        ({"generator": "randomized", "families": ("plaid",)}, "families"),
        ({"generator": "randomized", "backgrounds": ("sky",)}, "backgrounds"),
        ({"backgrounds": ("photo",)}, "backgrounds"),  # the classic generator has one background
    ],
)
def test_bad_config_names_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_builds_with_its_model(loss):
    config = TrainConfig(loss=loss, width=4, depth=2)
    model = make_model(config)
    assert model.output_shape[-1] == (4 if config.head == "spatial" else config.embedding_dim)
    assert make_loss(config).max_instances == config.max_instances


def test_train_writes_the_run_directory_with_its_head(tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(out_dir=str(out), **TINY)
    result = train(config, *_sources(), verbose=0)
    run = run_dir.load_run(str(out))
    assert run.head == "spatial" and run.config["multiple"] == 4
    assert run.thresholds == result["thresholds"] and set(run.thresholds) == {
        "seed_threshold",
        "fg_threshold",
        "min_size",
    }
    assert run.metrics["ours"]["sbd"] == result["ours"]["sbd"]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def _trainable(path):
    return [keras.ops.convert_to_numpy(w) for w in run_dir.load_model(path).trainable_weights]


def _same_weights(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and (x == y).all() for x, y in zip(a, b))


def test_init_weights_start_the_run_from_a_run_directory_and_refuse_another_architecture(tmp_path):
    first = tmp_path / "first"
    train(TrainConfig(out_dir=str(first), **TINY), *_sources(), verbose=0)
    trained = _trainable(str(first / "model.keras"))
    # learning rate 0: the fine-tuned run keeps the weights it started from (batch norm's moving
    # statistics aside), so they are the first run's
    second = tmp_path / "second"
    train(TrainConfig(out_dir=str(second), init_weights=str(first), learning_rate=0.0, **TINY), *_sources(), verbose=0)
    assert _same_weights(_trainable(str(second / "model.keras")), trained)
    assert json.loads((second / "config.json").read_text())["init_weights"] == str(first)
    # another width: refused before anything is written, with the setting that differs
    wider = tmp_path / "wider"
    with pytest.raises(ValueError, match=r"init_weights=.*another architecture.*--width 4 \(this run: 8\)"):
        train(TrainConfig(out_dir=str(wider), init_weights=str(first), **{**TINY, "width": 8}), *_sources(), verbose=0)
    assert not wider.exists()
    with pytest.raises(FileNotFoundError, match="init_weights='no_such_model'"):
        train(TrainConfig(out_dir=str(wider), init_weights="no_such_model", **TINY), *_sources(), verbose=0)
    assert not wider.exists()


def test_init_weights_take_a_bundled_models_name():
    from keras_pixelembed.bundled import BUNDLED_DIR

    bundled = run_dir.load_model(os.path.join(BUNDLED_DIR, "spatial_unet", "model.keras")).get_weights()
    config = TrainConfig(init_weights="spatial_unet")
    model = make_model(config)
    _init_weights(config, init_weights_path("spatial_unet"), model)
    assert _same_weights(model.get_weights(), bundled)
    lite = TrainConfig(init_weights="spatial_unet_lite")
    with pytest.raises(ValueError, match="--backbone unet_lite"):
        _init_weights(lite, init_weights_path("spatial_unet_lite"), model)


class _Stop(keras.callbacks.Callback):
    """Stops the run (as a kill would) at the end of epoch `at`."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt("killed")


def test_a_stopped_run_resumes_where_it_stopped(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path / "run"), **{**TINY, "epochs": 3})
    sources = _sources()
    with pytest.raises(KeyboardInterrupt):
        train(config, *sources, verbose=0, callbacks=[_Stop(1)])
    assert os.path.isdir(tmp_path / "run" / "backup")
    train(config, *sources, verbose=0)
    with open(tmp_path / "run" / "log.csv") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == [0, 1, 2]  # epochs 0 and 1 once, then only epoch 2 after the restart
    assert not os.path.isdir(tmp_path / "run" / "backup")  # removed when the run completes
    # model.keras holds the epoch of the lowest validation loss, counting the epochs before the restart
    with open(tmp_path / "run" / "log.csv") as f:
        losses = [float(r["val_loss"]) for r in csv.DictReader(f)]
    weights = run_dir.load_run(str(tmp_path / "run")).metrics["weights"]
    assert weights["monitor"] == "val_loss" and weights["epochs"] == 3
    assert weights["epoch"] == 1 + losses.index(min(losses)) and weights["value"] == pytest.approx(min(losses))


def test_best_weights_are_put_back_and_survive_a_restart(tmp_path):
    import numpy as np

    from keras_pixelembed.training import best_weights_callback
    from tests.helpers import tiny_model

    model = tiny_model(channels=4)
    initial = model.get_weights()

    def epoch(callback, index, value, shift):
        model.set_weights([w + shift for w in initial])
        callback.on_epoch_end(index, {"val_loss": value})

    callback = best_weights_callback(str(tmp_path / "backup"))
    callback.set_model(model)
    callback.on_train_begin()
    epoch(callback, 0, 2.0, 0.0)
    epoch(callback, 1, 1.0, 1.0)  # the best
    epoch(callback, 2, 3.0, 2.0)
    epoch(callback, 3, float("nan"), 3.0)  # not finite: never the best
    callback.on_train_end()
    assert callback.best == {"epoch": 2, "monitor": "val_loss", "value": 1.0, "epochs": 4}
    for got, start in zip(model.get_weights(), initial):
        np.testing.assert_allclose(got, start + 1.0)
    # killed after epoch 3 and started again: the earlier best still counts
    again = best_weights_callback(str(tmp_path / "backup"))
    again.set_model(model)
    again.on_train_begin()
    epoch(again, 4, 1.5, 4.0)
    again.on_train_end()
    assert again.best["epoch"] == 2 and again.best["epochs"] == 5
    for got, start in zip(model.get_weights(), initial):
        np.testing.assert_allclose(got, start + 1.0)
    # no finite value at all: the weights stay as they are
    empty = best_weights_callback(str(tmp_path / "other"))
    empty.set_model(model)
    empty.on_train_begin()
    epoch(empty, 0, float("inf"), 5.0)
    empty.on_train_end()
    assert empty.best is None
    np.testing.assert_allclose(model.get_weights()[0], initial[0] + 5.0)
