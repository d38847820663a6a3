"""Hand-computed values of the push-pull losses."""

import numpy as np

from keras_pixelembed import PushPullBallsLoss, PushPullCentroidLoss
from tests.helpers import per_image_value_and_grad


def _one_mask_and_background():
    # Mask 1 is the left column at embedding 0, the rest of the pixels at distance 2 (channel 0).
    y_true = np.zeros((1, 2, 2), np.float32)
    y_true[0, :, 0] = 1
    y_pred = np.zeros((1, 2, 2, 2), np.float32)
    y_pred[0, :, 1, 0] = 2.0
    return y_true, y_pred


def test_centroid_loss_without_activation():
    y_true, y_pred = _one_mask_and_background()
    values, _ = per_image_value_and_grad(PushPullCentroidLoss(alpha=3.0, activation=None), y_true, y_pred)
    # attraction 0, repulsion -(2 + 2) / 2
    np.testing.assert_allclose(values, [-2.0], rtol=1e-5)


def test_centroid_loss_mask_covering_omega_has_no_repulsion():
    y_true = np.ones((1, 2, 2), np.float32)
    y_pred = np.zeros((1, 2, 2, 1), np.float32)
    y_pred[0, 0, 0, 0] = 4.0  # mean 1: distances 3, 1, 1, 1
    values, _ = per_image_value_and_grad(PushPullCentroidLoss(alpha=2.0, activation=None), y_true, y_pred)
    np.testing.assert_allclose(values, [2.0 * 6 / 4], rtol=1e-5)


def test_balls_loss_hinges():
    y_true, y_pred = _one_mask_and_background()
    loss = PushPullBallsLoss(r_attract=0.5, r_repel=3.0)
    values, _ = per_image_value_and_grad(loss, y_true, y_pred)
    np.testing.assert_allclose(values, [1.0], rtol=1e-5)  # attraction 0, repulsion [3 - 2]_+
    values, _ = per_image_value_and_grad(PushPullBallsLoss(r_repel=1.5), y_true, y_pred)
    np.testing.assert_allclose(values, [0.0], atol=1e-6)
