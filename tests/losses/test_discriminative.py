"""Hand-computed values of DiscriminativeLoss (normalisations of the paper, not variants)."""

import keras
import numpy as np
import pytest

from keras_pixelembed import DiscriminativeLoss
from tests.helpers import per_image_value_and_grad


def _two_flat_masks():
    y_true = np.zeros((1, 2, 4), np.float32)
    y_true[0, :, :2], y_true[0, :, 2:] = 1, 2
    y_pred = np.zeros((1, 2, 4, 2), np.float32)
    y_pred[0, :, 2:, 0] = 1.0  # mask 1 at (0, 0), mask 2 at (1, 0)
    return y_true, y_pred


def test_two_constant_masks():
    y_true, y_pred = _two_flat_masks()
    loss = DiscriminativeLoss(delta_v=0.5, delta_d=1.5, gamma=0.001)
    values, grad = per_image_value_and_grad(loss, y_true, y_pred)
    # L_var = 0; L_dist = 2 ordered pairs of [3 - 1]^2 over M(M-1) = 2; L_reg = (0 + 1) / 2.
    np.testing.assert_allclose(values, [4.0 + 0.001 * 0.5], rtol=1e-6)
    assert np.all(np.isfinite(grad))


def test_distance_term_is_zero_for_a_single_mask():
    y_true = np.ones((1, 3, 3), np.float32)
    y_pred = np.zeros((1, 3, 3, 2), np.float32)
    y_pred[0, 0, 0] = [2.0, 0.0]  # mean (2/9, 0); that pixel is 16/9 from it
    loss = DiscriminativeLoss(delta_v=0.5, gamma=0.0)
    values, _ = per_image_value_and_grad(loss, y_true, y_pred)
    dists = [16 / 9] + [2 / 9] * 8
    expected = np.mean([max(d - 0.5, 0) ** 2 for d in dists])
    np.testing.assert_allclose(values, [expected], rtol=1e-5)


def test_weights_scale_the_terms():
    y_true, y_pred = _two_flat_masks()
    values, _ = per_image_value_and_grad(DiscriminativeLoss(beta=2.0, gamma=0.0), y_true, y_pred)
    np.testing.assert_allclose(values, [8.0], rtol=1e-6)


@pytest.mark.parametrize("bad", [{"delta_v": -1.0}, {"delta_d": "x"}, {"gamma": float("inf")}])
def test_bad_margins_raise(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        DiscriminativeLoss(**bad)


def test_top_level_import_and_compile():
    from keras_pixelembed import DiscriminativeLoss as Top

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 1)])
    model.compile(loss=Top())
    assert isinstance(model.loss, Top)
