"""OffsetUncertaintyLoss against a per-pixel numpy reference, and its parts."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_pixelembed import OffsetUncertaintyLoss
from keras_pixelembed.losses.offset_uncertainty import ohem_cross_entropy
from keras_pixelembed.ops.sampling import bilinear_sample
from tests import reference
from tests.helpers import assert_config_round_trip, per_image_value_and_grad

C = 3


def _inputs(seed, batch=2, h=5, w=6, offset_scale=1.0):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(-1, C, size=(batch, h, w)).astype(np.float32)
    y_pred = rng.normal(size=(batch, h, w, C + 3)).astype(np.float32)
    y_pred[..., C : C + 2] *= offset_scale
    return y_true, y_pred


@pytest.mark.parametrize(
    "kwargs", [{}, {"max_offset": 0.3, "kappa": 0.2, "lam": 1.0, "ohem_threshold": 0.5, "min_kept": 0.5}]
)
def test_values_and_gradients_match_reference(kwargs):
    y_true, y_pred = _inputs(0)
    values, grad = per_image_value_and_grad(OffsetUncertaintyLoss(C, **kwargs), y_true, y_pred)
    ref = lambda x: reference.offset_uncertainty(y_true, x, C, **kwargs)  # noqa: E731
    np.testing.assert_allclose(values, ref(y_pred), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, reference.numerical_gradient(ref, y_pred), rtol=1e-3, atol=1e-4)


def test_zero_offsets_reduce_to_weighted_ohem_plus_uncertainty():
    y_true, y_pred = _inputs(1)
    y_pred[..., C : C + 2] = 0.0
    loss = OffsetUncertaintyLoss(C, kappa=0.5, lam=0.5)
    values = ops.convert_to_numpy(loss.call(y_true, y_pred))
    logits = y_pred[..., :C].astype(np.float64)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    u = 1 / (1 + np.exp(-y_pred[..., C + 2].astype(np.float64)))
    for b in range(2):
        valid = y_true[b] >= 0
        k = y_true[b][valid].astype(int)
        p_true = p[b][valid][np.arange(k.size), k]
        ce = reference.ohem(list(-np.log(p_true)), list(p_true), 0.7, 0.2)
        l_u = np.mean(-np.log(u[b][valid]))  # t = 1 everywhere: every pixel targets itself
        np.testing.assert_allclose(values[b], 2.0 * ce + l_u, rtol=1e-4)


def test_bilinear_sampling_matches_reference():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    offsets = (rng.normal(size=(2, 5, 7, 2)) * 3).astype(np.float32)
    got = ops.convert_to_numpy(bilinear_sample(ops.convert_to_tensor(values), ops.convert_to_tensor(offsets)))
    np.testing.assert_allclose(got, reference.bilinear_sample(values, offsets), rtol=1e-5, atol=1e-6)


def test_ohem_selection_on_a_hand_made_case():
    # Five valid pixels, probabilities 0.9, 0.8, 0.1, 0.75, 0.95 and a sixth ignored one.
    p = np.array([[0.9, 0.8, 0.1, 0.75, 0.95, 0.01]], np.float32)
    ce = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 100.0]], np.float32)
    valid = np.array([[True, True, True, True, True, False]])
    # threshold 0.7 keeps 0.1; min_kept 0.4 -> the 2 hardest valid: 0.1 and 0.75.
    got = ops.convert_to_numpy(ohem_cross_entropy(ce, p, valid, 0.7, 0.4))
    np.testing.assert_allclose(got, [(3.0 + 4.0) / 2])
    got = ops.convert_to_numpy(ohem_cross_entropy(ce, p, valid, 0.85, 0.0))
    np.testing.assert_allclose(got, [(2.0 + 3.0 + 4.0) / 3])


def test_ignored_pixels_change_nothing():
    y_true, y_pred = _inputs(3)
    y_pred[..., C : C + 2] = 0.0  # no offset points at an ignored pixel
    other = y_pred.copy()
    ignored = y_true < 0
    other[ignored] = np.random.default_rng(4).normal(size=(int(ignored.sum()), C + 3)) * 10
    other[..., C : C + 2] = 0.0
    loss = OffsetUncertaintyLoss(C)
    v1, g1 = per_image_value_and_grad(loss, y_true, y_pred)
    v2, _ = per_image_value_and_grad(loss, y_true, other)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    assert np.all(g1[ignored][:, :C] == 0)


def test_all_ignored_is_zero_and_finite():
    y_pred = np.random.default_rng(5).normal(size=(1, 4, 4, C + 3)).astype(np.float32)
    values, grad = per_image_value_and_grad(OffsetUncertaintyLoss(C), -np.ones((1, 4, 4), np.float32), y_pred)
    assert values[0] == 0.0 and np.all(grad == 0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_classes"):
        OffsetUncertaintyLoss(1)
    with pytest.raises(ValueError, match="num_classes \\+ 3"):
        OffsetUncertaintyLoss(C)(np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4, C), np.float32))
    with pytest.raises(ValueError, match="class 7"):
        OffsetUncertaintyLoss(C)(np.full((1, 4, 4), 7.0, np.float32), np.zeros((1, 4, 4, C + 3), np.float32))
    with pytest.raises(ValueError, match="min_kept"):
        OffsetUncertaintyLoss(C, min_kept=2.0)


def test_config_round_trip():
    loss = OffsetUncertaintyLoss(
        4, max_offset=0.2, kappa=0.1, lam=0.3, ohem_threshold=0.6, min_kept=0.1, ignore_index=255
    )
    assert_config_round_trip(loss, {"num_classes": 4, "max_offset": 0.2, "ignore_index": 255})


def test_fit_with_jit_compile_decreases_the_loss():
    rng = np.random.default_rng(6)
    images = rng.random((4, 16, 16, 3)).astype(np.float32)
    classes = (images[..., 0] > 0.5).astype(np.float32) + (images[..., 1] > 0.5)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(C + 3, 1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=OffsetUncertaintyLoss(C), jit_compile=True)
    history = model.fit(images, classes, batch_size=4, epochs=15, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0], history
