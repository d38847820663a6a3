"""MetricLearningLoss against the dense numpy reference, and its sampling."""

import keras
import numpy as np
import pytest

from keras_pixelembed import MetricLearningLoss
from tests import reference
from tests.helpers import (
    assert_config_round_trip,
    per_image_value_and_grad,
    random_label_maps,
    random_mask_stack,
    synthetic_batch,
    tiny_model,
)


def _check_dense(y_true, y_pred, act=None):
    loss = MetricLearningLoss(samples_per_mask=None, activation=act, max_instances=8)
    values, grad = per_image_value_and_grad(loss, y_true, y_pred)
    ref = lambda x: reference.metric_learning_dense(y_true, x, act=act)  # noqa: E731
    np.testing.assert_allclose(values, ref(y_pred), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, reference.numerical_gradient(ref, y_pred), rtol=1e-3, atol=1e-4)


def test_dense_label_maps_with_ignored_pixels_match_reference():
    rng = np.random.default_rng(0)
    _check_dense(random_label_maps(rng, 2, 4, 4, 3), rng.normal(size=(2, 4, 4, 3)).astype(np.float32))


def test_dense_overlapping_mask_stack_matches_reference():
    rng = np.random.default_rng(1)
    _check_dense(random_mask_stack(rng, 2, 4, 4, 3), rng.normal(size=(2, 4, 4, 2)).astype(np.float32), act="tanh")


def test_seeded_sampling_repeats():
    rng = np.random.default_rng(2)
    y_true, y_pred = random_label_maps(rng, 2, 8, 8, 3), rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    a = keras.ops.convert_to_numpy(MetricLearningLoss(samples_per_mask=3, seed=7).call(y_true, y_pred))
    b = keras.ops.convert_to_numpy(MetricLearningLoss(samples_per_mask=3, seed=7).call(y_true, y_pred))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["labels", "stack"])
def test_mean_over_seeds_approaches_dense(kind):
    rng = np.random.default_rng(3)
    if kind == "labels":
        y_true = random_label_maps(rng, 1, 6, 6, 3)
    else:
        y_true = random_mask_stack(rng, 1, 6, 6, 3, padding=0)
    y_pred = rng.normal(size=(1, 6, 6, 2)).astype(np.float32) * 0.7
    dense = keras.ops.convert_to_numpy(MetricLearningLoss(samples_per_mask=None).call(y_true, y_pred))
    loss = MetricLearningLoss(samples_per_mask=4, seed=0)
    draws = np.array([keras.ops.convert_to_numpy(loss.call(y_true, y_pred)) for _ in range(300)])
    assert np.std(draws) > 0  # it does sample
    np.testing.assert_allclose(draws.mean(axis=0), dense, rtol=0.05)


def test_a_pixel_in_two_masks_is_one_element_of_s():
    # two identical masks: S is the mask's pixels once, and the inner sum over m counts both
    # masks, so the loss is twice that of the one mask alone (a multiset S would give 4x)
    rng = np.random.default_rng(8)
    one = np.zeros((1, 5, 5), np.float32)
    one[0, 1:4, 1:3] = 1
    stack = np.repeat(one[..., None], 2, axis=-1)
    y_pred = rng.normal(size=(1, 5, 5, 2)).astype(np.float32)
    single = keras.ops.convert_to_numpy(MetricLearningLoss(samples_per_mask=None).call(one, y_pred))
    double = keras.ops.convert_to_numpy(MetricLearningLoss(samples_per_mask=None).call(stack, y_pred))
    np.testing.assert_allclose(double, 2 * single, rtol=1e-5)
    sampled = keras.ops.convert_to_numpy(MetricLearningLoss(samples_per_mask=6, seed=0).call(stack, y_pred))
    np.testing.assert_allclose(sampled, double, rtol=1e-5)


@pytest.mark.parametrize("kind", ["labels", "stack"])
def test_samples_covering_every_pixel_equal_dense(kind):
    rng = np.random.default_rng(4)
    if kind == "labels":
        y_true = random_label_maps(rng, 2, 5, 5, 3)
    else:
        y_true = random_mask_stack(rng, 2, 5, 5, 3, padding=0)
    y_pred = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    dense = keras.ops.convert_to_numpy(MetricLearningLoss(samples_per_mask=None).call(y_true, y_pred))
    many = keras.ops.convert_to_numpy(MetricLearningLoss(samples_per_mask=25, seed=1).call(y_true, y_pred))
    np.testing.assert_allclose(many, dense, rtol=1e-5)


@pytest.mark.parametrize("samples", [None, 3])
def test_edge_cases_are_finite(samples):
    loss = MetricLearningLoss(samples_per_mask=samples, seed=0, max_instances=8)
    rng = np.random.default_rng(5)
    y_true = np.zeros((5, 4, 4), np.float32)
    y_true[1] = 1  # one mask covering the image
    y_true[2, 0, 0], y_true[2, 3, 3] = 1, 2  # one-pixel masks
    y_true[3] = -1  # all ignored
    y_true[4, :2], y_true[4, 2:] = 1, 2
    y_pred = rng.normal(size=(5, 4, 4, 3)).astype(np.float32)
    y_pred[4] = 0.5  # identical embeddings in two masks: d = 0 between masks
    values, grad = per_image_value_and_grad(loss, y_true, y_pred)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))
    assert values[0] == 0.0 and values[3] == 0.0 and np.all(grad[0] == 0) and np.all(grad[3] == 0)
    assert values[4] > 0


def test_ids_above_max_instances_raise():
    with pytest.raises(ValueError, match="label id 3"):
        MetricLearningLoss(max_instances=2)(np.full((1, 2, 2), 3.0, np.float32), np.zeros((1, 2, 2, 2), np.float32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="samples_per_mask"):
        MetricLearningLoss(samples_per_mask=0)
    with pytest.raises(ValueError, match="seed"):
        MetricLearningLoss(seed="a")


def test_config_round_trip():
    loss = MetricLearningLoss(samples_per_mask=5, seed=3, activation="tanh", max_instances=10)
    assert_config_round_trip(loss, {"samples_per_mask": 5, "seed": 3, "activation": "tanh", "max_instances": 10})


def test_fit_with_jit_compile_decreases_the_loss():
    images, labels = synthetic_batch(batch=4)
    model = tiny_model(channels=4)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=MetricLearningLoss(samples_per_mask=8, seed=0, max_instances=8),
        jit_compile=True,
    )
    history = model.fit(images, labels, batch_size=4, epochs=15, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0], history
