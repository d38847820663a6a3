"""Checks every centroid-family loss against the numpy references, on the current backend."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from keras_pixelembed import DiscriminativeLoss, PushPullBallsLoss, PushPullCentroidLoss
from tests import reference
from tests.helpers import (
    assert_config_round_trip,
    per_image_value_and_grad,
    random_label_maps,
    random_mask_stack,
    synthetic_batch,
    tiny_model,
)

# (loss class, constructor arguments, reference function taking the same arguments)
CASES = {
    "push_pull_centroid": (PushPullCentroidLoss, {"alpha": 0.7, "activation": "sigmoid"}, reference.push_pull_centroid),
    "push_pull_balls": (
        PushPullBallsLoss,
        {"alpha": 1.3, "r_attract": 0.4, "r_repel": 1.2, "activation": None},
        reference.push_pull_balls,
    ),
    "push_pull_balls_tanh": (
        PushPullBallsLoss,
        {"r_attract": 0.2, "r_repel": 0.9, "activation": "tanh"},
        reference.push_pull_balls,
    ),
    "discriminative": (
        DiscriminativeLoss,
        {"delta_v": 0.3, "delta_d": 1.0, "alpha": 1.0, "beta": 0.5, "gamma": 0.01, "activation": None},
        reference.discriminative,
    ),
    "discriminative_l2": (
        DiscriminativeLoss,
        {"delta_v": 0.1, "delta_d": 0.6, "gamma": 0.1, "activation": "l2_normalize"},
        reference.discriminative,
    ),
}


def _reference(name, y_true, y_pred):
    cls, kwargs, ref = CASES[name]
    kw = dict(kwargs)
    act = kw.pop("activation", cls().activation)
    return lambda x: ref(y_true, x, act=act, **kw)


def _check_against_reference(name, y_true, y_pred, max_instances=8):
    cls, kwargs, _ = CASES[name]
    loss = cls(max_instances=max_instances, **kwargs)
    values, grad = per_image_value_and_grad(loss, y_true, y_pred)
    ref = _reference(name, y_true, y_pred)
    np.testing.assert_allclose(values, ref(y_pred), rtol=1e-4, atol=1e-5)
    ref_grad = reference.numerical_gradient(ref, y_pred)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=1e-4)
    return values, grad


@pytest.mark.parametrize("name", sorted(CASES))
def test_label_maps_with_ignored_pixels_match_reference(name):
    rng = np.random.default_rng(1)
    y_true = random_label_maps(rng, batch=2, h=5, w=6, n_ids=4)
    y_pred = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    _check_against_reference(name, y_true, y_pred)


@pytest.mark.parametrize("name", sorted(CASES))
def test_label_map_with_channel_axis_matches_reference(name):
    rng = np.random.default_rng(2)
    y_true = random_label_maps(rng, batch=2, h=4, w=5, n_ids=3)[..., None]
    y_pred = rng.normal(size=(2, 4, 5, 2)).astype(np.float32)
    _check_against_reference(name, y_true, y_pred)


@pytest.mark.parametrize("name", sorted(CASES))
def test_overlapping_mask_stack_with_padding_matches_reference(name):
    rng = np.random.default_rng(3)
    y_true = random_mask_stack(rng, batch=2, h=5, w=5, m=4, padding=1)
    y_pred = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    _check_against_reference(name, y_true, y_pred)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reduction_is_mean_of_per_image_losses(name):
    cls, kwargs, _ = CASES[name]
    rng = np.random.default_rng(4)
    y_true = random_label_maps(rng, 3, 6, 6, 3)
    y_pred = rng.normal(size=(3, 6, 6, 4)).astype(np.float32)
    loss = cls(**kwargs)
    per_image = keras.ops.convert_to_numpy(loss.call(y_true, y_pred))
    assert per_image.shape == (3,)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loss(y_true, y_pred))), per_image.mean(), rtol=1e-6)


# ---- edge cases -------------------------------------------------------------------------


def _finite(values, grad):
    assert np.all(np.isfinite(values)), values
    assert np.all(np.isfinite(grad)), grad


@pytest.mark.parametrize("name", sorted(CASES))
def test_image_without_mask_is_zero_with_zero_gradient(name):
    cls, kwargs, _ = CASES[name]
    rng = np.random.default_rng(5)
    y_true = np.zeros((2, 4, 4), np.float32)
    y_true[1, 1:3, 1:3] = 1  # the second image has one mask, the first none
    y_pred = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    values, grad = per_image_value_and_grad(cls(**kwargs), y_true, y_pred)
    _finite(values, grad)
    assert values[0] == 0.0
    assert np.all(grad[0] == 0.0)
    _check_against_reference(name, y_true, y_pred)


@pytest.mark.parametrize("name", sorted(CASES))
def test_all_pixels_ignored_is_zero(name):
    cls, kwargs, _ = CASES[name]
    y_true = -np.ones((1, 4, 4), np.float32)
    y_pred = np.random.default_rng(6).normal(size=(1, 4, 4, 3)).astype(np.float32)
    values, grad = per_image_value_and_grad(cls(**kwargs), y_true, y_pred)
    _finite(values, grad)
    assert values[0] == 0.0 and np.all(grad == 0.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ignored_pixels_change_nothing(name):
    cls, kwargs, _ = CASES[name]
    rng = np.random.default_rng(7)
    y_true = random_label_maps(rng, 1, 6, 6, 3, p_ignore=0.3)
    y_pred = rng.normal(size=(1, 6, 6, 3)).astype(np.float32)
    other = y_pred.copy()
    ignored = y_true[0] < 0
    other[0][ignored] = rng.normal(size=(int(ignored.sum()), 3)) * 10
    loss = cls(**kwargs)
    v1, g1 = per_image_value_and_grad(loss, y_true, y_pred)
    v2, g2 = per_image_value_and_grad(loss, y_true, other)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    assert np.all(g1[0][ignored] == 0.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mask_covering_every_valid_pixel(name):
    y_true = np.ones((1, 4, 5), np.float32)
    y_true[0, 0, 0] = -1
    y_pred = np.random.default_rng(8).normal(size=(1, 4, 5, 3)).astype(np.float32)
    values, grad = _check_against_reference(name, y_true, y_pred)
    _finite(values, grad)


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_pixel_masks(name):
    y_true = np.zeros((1, 4, 4), np.float32)
    y_true[0, 0, 0], y_true[0, 3, 3], y_true[0, 1, 2] = 1, 2, 3
    y_pred = np.random.default_rng(9).normal(size=(1, 4, 4, 3)).astype(np.float32)
    values, grad = _check_against_reference(name, y_true, y_pred)
    _finite(values, grad)


@pytest.mark.parametrize("name", sorted(CASES))
def test_identical_embeddings_everywhere(name):
    cls, kwargs, _ = CASES[name]
    rng = np.random.default_rng(10)
    y_true = random_label_maps(rng, 2, 5, 5, 3)
    y_pred = np.broadcast_to(rng.normal(size=(1, 1, 1, 3)), (2, 5, 5, 3)).astype(np.float32)
    values, grad = per_image_value_and_grad(cls(**kwargs), y_true, y_pred)
    _finite(values, grad)
    np.testing.assert_allclose(values, _reference(name, y_true, y_pred)(y_pred), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_embeddings_are_finite(name):
    cls, kwargs, _ = CASES[name]
    y_true = random_label_maps(np.random.default_rng(11), 2, 5, 5, 3)
    values, grad = per_image_value_and_grad(cls(**kwargs), y_true, np.zeros((2, 5, 5, 3), np.float32))
    _finite(values, grad)


@pytest.mark.parametrize("name", sorted(CASES))
def test_label_id_above_max_instances_raises(name):
    cls, kwargs, _ = CASES[name]
    y_true = np.zeros((1, 4, 4), np.float32)
    y_true[0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"label id 5.*max_instances=4"):
        cls(max_instances=4, **kwargs)(y_true, np.zeros((1, 4, 4, 2), np.float32))


@pytest.mark.parametrize("name", sorted(CASES))
def test_mask_stack_wider_than_max_instances_raises(name):
    cls, kwargs, _ = CASES[name]
    with pytest.raises(ValueError, match=r"5 channels.*max_instances=4"):
        cls(max_instances=4, **kwargs)(np.zeros((1, 4, 4, 5), np.float32), np.zeros((1, 4, 4, 2), np.float32))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_shapes_raise(name):
    cls, kwargs, _ = CASES[name]
    with pytest.raises(ValueError, match="height"):
        cls(**kwargs)(np.zeros((1, 5, 4), np.float32), np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="y_pred"):
        cls(**kwargs)(np.zeros((1, 4, 4), np.float32), np.zeros((1, 16, 2), np.float32))


@pytest.mark.parametrize("cls", [PushPullCentroidLoss, PushPullBallsLoss, DiscriminativeLoss])
def test_bad_arguments_name_the_argument(cls):
    with pytest.raises(ValueError, match="max_instances"):
        cls(max_instances=0)
    with pytest.raises(ValueError, match="activation"):
        cls(activation="no_such_activation")
    with pytest.raises(ValueError, match="alpha"):
        cls(alpha=float("nan"))


# ---- serialization ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_round_trip(name):
    cls, kwargs, _ = CASES[name]
    loss = cls(max_instances=12, **kwargs)
    assert_config_round_trip(loss, {"max_instances": 12, **kwargs})


@pytest.mark.parametrize("name", ["push_pull_centroid", "push_pull_balls", "discriminative"])
def test_compiled_model_reloads_with_safe_mode(name, tmp_path):
    cls, kwargs, _ = CASES[name]
    model = tiny_model(channels=4)
    model.compile(optimizer="adam", loss=cls(max_instances=9, **kwargs))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(again.loss, cls)
    assert again.loss.get_config() == model.loss.get_config()
    images, labels = synthetic_batch()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again.loss(labels, model.predict(images, verbose=0))),
        keras.ops.convert_to_numpy(model.loss(labels, model.predict(images, verbose=0))),
        rtol=1e-6,
    )


# ---- training ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["push_pull_centroid", "push_pull_balls", "discriminative"])
def test_fit_with_jit_compile_decreases_the_loss(name):
    cls, kwargs, _ = CASES[name]
    images, labels = synthetic_batch(batch=4)
    model = tiny_model(channels=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=cls(max_instances=8, **kwargs), jit_compile=True)
    history = model.fit(images, labels, batch_size=4, epochs=15, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert history[-1] < history[0], history
