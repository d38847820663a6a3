"""SpatialEmbeddingLoss and the Lovasz hinge against numpy loops; layers; overfitting one image."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_pixelembed import (
    CoordinateGrid,
    LovaszHingeLoss,
    SpatialEmbeddingHead,
    SpatialEmbeddingLoss,
    lovasz_hinge,
)
from keras_pixelembed.cluster import spatial_embedding_instances
from keras_pixelembed.losses.lovasz import lovasz_hinge_rows
from keras_pixelembed.metrics import sbd
from tests import reference
from tests.helpers import (
    BACKEND,
    assert_config_round_trip,
    per_image_value_and_grad,
    random_label_maps,
    random_mask_stack,
)

PIXEL = 0.01  # large pixels: small test images still have phi spread over the image


def _pred(rng, batch, h, w, n_sigma=1, offset_scale=0.01, sigma_shift=-0.2):
    pred = rng.normal(size=(batch, h, w, 3 + n_sigma)).astype(np.float32)
    pred[..., :2] *= offset_scale
    pred[..., 2 : 2 + n_sigma] = pred[..., 2 : 2 + n_sigma] * 0.3 + sigma_shift
    return pred


def _check(y_true, y_pred, **kwargs):
    kwargs.setdefault("pixel_size", PIXEL)
    loss = SpatialEmbeddingLoss(max_instances=kwargs.pop("max_instances", 8), **kwargs)
    values, grad = per_image_value_and_grad(loss, y_true, y_pred)
    np.testing.assert_allclose(values, reference.spatial_embedding(y_true, y_pred, **kwargs), rtol=1e-4, atol=1e-5)
    ref_grad = reference.numerical_gradient(
        lambda x: reference.spatial_embedding(y_true, x, frozen=y_pred, **kwargs), y_pred
    )
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=2e-4)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))
    return values, grad


@pytest.mark.parametrize("n_sigma", [1, 2])
@pytest.mark.parametrize("to_center", [False, True])
def test_label_maps_with_ignored_pixels_match_reference(n_sigma, to_center):
    rng = np.random.default_rng(0)
    y_true = random_label_maps(rng, 2, 5, 6, 3)
    _check(y_true, _pred(rng, 2, 5, 6, n_sigma), n_sigma=n_sigma, to_center=to_center)


def test_weights_and_scales_match_reference():
    rng = np.random.default_rng(1)
    y_true = random_label_maps(rng, 2, 5, 5, 2)[..., None]
    kwargs = {"sigma_scale": 5.0, "w_inst": 0.5, "w_var": 3.0, "w_seed": 2.0, "foreground_weight": 4.0}
    _check(y_true, _pred(rng, 2, 5, 5, 2), n_sigma=2, **kwargs)


def test_overlapping_mask_stack_matches_reference():
    rng = np.random.default_rng(2)
    y_true = random_mask_stack(rng, 2, 5, 5, 4, padding=1)
    _check(y_true, _pred(rng, 2, 5, 5))


def test_paper_scale_where_phi_underflows_matches_reference():
    # pixel_size 1/1024 and sigma near the head's initial 1: phi is exactly 0 far from a mask,
    # so eager calls sort only the positive Lovasz errors (top-k); the value must not change.
    rng = np.random.default_rng(3)
    labels = np.zeros((1, 24, 24), np.float32)
    labels[0, 2:6, 2:6], labels[0, 15:20, 14:22], labels[0, 0, 23] = 1, 2, 3
    pred = _pred(rng, 1, 24, 24, offset_scale=0.003, sigma_shift=1.0)
    loss = SpatialEmbeddingLoss()
    values, _ = per_image_value_and_grad(loss, labels, pred)
    np.testing.assert_allclose(values, reference.spatial_embedding(labels, pred), rtol=1e-4)


def test_reduction_is_mean_of_per_image_losses():
    rng = np.random.default_rng(4)
    y_true, y_pred = random_label_maps(rng, 3, 6, 6, 3), _pred(rng, 3, 6, 6)
    loss = SpatialEmbeddingLoss(pixel_size=PIXEL)
    per_image = ops.convert_to_numpy(loss.call(y_true, y_pred))
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss(y_true, y_pred))), per_image.mean(), rtol=1e-6)


# ---- edge cases -------------------------------------------------------------------------


def test_image_without_mask_keeps_only_the_background_seed_term():
    rng = np.random.default_rng(5)
    y_true = np.zeros((2, 4, 4), np.float32)
    y_true[1, 1:3, 1:3] = 1
    y_true[0, 0, 0] = -1
    y_pred = _pred(rng, 2, 4, 4)
    values, grad = _check(y_true, y_pred)
    seed = 1 / (1 + np.exp(-y_pred[0, ..., 3].astype(np.float64)))
    np.testing.assert_allclose(values[0], np.mean(seed[y_true[0] == 0] ** 2), rtol=1e-5)
    assert np.all(grad[0, ..., :3] == 0.0)  # offsets and sigmas: nothing to learn without masks


def test_all_pixels_ignored_is_zero():
    rng = np.random.default_rng(6)
    values, grad = per_image_value_and_grad(SpatialEmbeddingLoss(), -np.ones((1, 4, 4), np.float32), _pred(rng, 1, 4, 4))
    assert values[0] == 0.0 and np.all(grad == 0.0)


def test_ignored_pixels_change_nothing():
    rng = np.random.default_rng(7)
    y_true = random_label_maps(rng, 1, 6, 6, 3, p_ignore=0.3)
    y_pred = _pred(rng, 1, 6, 6)
    other = y_pred.copy()
    ignored = y_true[0] < 0
    other[0][ignored] = rng.normal(size=(int(ignored.sum()), 4)) * 10
    loss = SpatialEmbeddingLoss(pixel_size=PIXEL)
    v1, g1 = per_image_value_and_grad(loss, y_true, y_pred)
    v2, _ = per_image_value_and_grad(loss, y_true, other)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    assert np.all(g1[0][ignored] == 0.0)


def test_one_instance_and_mask_covering_the_whole_image():
    rng = np.random.default_rng(8)
    whole = np.ones((1, 4, 5), np.float32)
    _check(whole, _pred(rng, 1, 4, 5))
    one = np.zeros((1, 4, 5), np.float32)
    one[0, 1:3, 1:4] = 1
    _check(one, _pred(rng, 1, 4, 5))


def test_one_pixel_masks():
    y_true = np.zeros((1, 4, 4), np.float32)
    y_true[0, 0, 0], y_true[0, 3, 3], y_true[0, 1, 2] = 1, 2, 3
    _check(y_true, _pred(np.random.default_rng(9), 1, 4, 4))


def test_identical_embeddings_everywhere_are_finite():
    y_true = random_label_maps(np.random.default_rng(10), 2, 5, 5, 3)
    for y_pred in (np.zeros((2, 5, 5, 4), np.float32), np.full((2, 5, 5, 4), 0.3, np.float32)):
        values, grad = per_image_value_and_grad(SpatialEmbeddingLoss(pixel_size=PIXEL), y_true, y_pred)
        assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(values, reference.spatial_embedding(y_true, y_pred, pixel_size=PIXEL), rtol=1e-4)


def test_more_instances_than_max_instances_raises():
    y_true = np.zeros((1, 4, 4), np.float32)
    y_true[0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"label id 5.*max_instances=4"):
        SpatialEmbeddingLoss(max_instances=4)(y_true, np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"5 channels.*max_instances=4"):
        SpatialEmbeddingLoss(max_instances=4)(np.zeros((1, 4, 4, 5), np.float32), np.zeros((1, 4, 4, 4), np.float32))


def test_wrong_number_of_channels_names_n_sigma():
    with pytest.raises(ValueError, match=r"5 channels.*n_sigma=2"):
        SpatialEmbeddingLoss(n_sigma=2)(np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.float32))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n_sigma": 3}, "n_sigma"), ({"pixel_size": 0.0}, "pixel_size"), ({"w_var": -1.0}, "w_var"),
     ({"to_center": "yes"}, "to_center"), ({"sigma_scale": float("nan")}, "sigma_scale")],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpatialEmbeddingLoss(**kwargs)


def test_config_round_trip():
    args = {"n_sigma": 2, "pixel_size": 0.002, "sigma_scale": 8.0, "w_inst": 2.0, "w_var": 5.0, "w_seed": 0.5,
            "foreground_weight": 3.0, "to_center": True, "max_instances": 12}
    assert_config_round_trip(SpatialEmbeddingLoss(**args), args)
    assert_config_round_trip(LovaszHingeLoss(name="lh"), {"name": "lh"})
    assert_config_round_trip(CoordinateGrid(pixel_size=0.5), {"pixel_size": 0.5})
    assert_config_round_trip(SpatialEmbeddingHead(n_sigma=2, hidden_channels=[8]), {"n_sigma": 2, "hidden_channels": [8]})


# ---- Lovasz hinge -----------------------------------------------------------------------


def test_lovasz_hinge_matches_reference_values_and_gradients():
    rng = np.random.default_rng(11)
    labels = (rng.random((2, 4, 5, 3)) < 0.4).astype(np.float32)
    labels[0, 0, 0, 1] = -1  # ignored
    labels[1, ..., 2] = 0  # a channel without positives
    logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    values, grad = per_image_value_and_grad(LovaszHingeLoss(), labels, logits)
    np.testing.assert_allclose(values, reference.lovasz_hinge_images(logits, labels), rtol=1e-5, atol=1e-6)
    ref_grad = reference.numerical_gradient(lambda x: reference.lovasz_hinge_images(x, labels), logits)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=1e-4)
    scalar = float(ops.convert_to_numpy(lovasz_hinge(logits, labels)))
    np.testing.assert_allclose(scalar, values.mean(), rtol=1e-6)


def test_lovasz_hinge_of_a_perfect_margin_is_zero_and_bool_labels_work():
    labels = np.zeros((1, 3, 3, 1), bool)
    labels[0, 1, 1, 0] = True
    logits = np.where(labels, 2.0, -2.0).astype(np.float32)
    assert float(ops.convert_to_numpy(lovasz_hinge(logits, labels))) == 0.0
    # one wrong pixel: error 1 + 2 = 3 on the positive, jaccard weight 1 -> 3
    logits[0, 1, 1, 0] = -2.0
    np.testing.assert_allclose(float(ops.convert_to_numpy(lovasz_hinge(logits, labels))), 3.0, rtol=1e-6)


def test_top_k_shortcut_equals_the_full_sort():
    rng = np.random.default_rng(12)
    errors = rng.normal(size=(6, 600)).astype(np.float32)
    errors[:, 50:] = -np.abs(errors[:, 50:])  # only 50 positive errors per row
    labels = (rng.random((6, 600)) < 0.3).astype(np.float32)
    got = ops.convert_to_numpy(lovasz_hinge_rows(errors, labels))
    want = [_rows_ref(e, l) for e, l in zip(errors, labels)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _rows_ref(errors, labels):
    # logits that give these hinge errors: e = 1 - logit * (2l - 1)
    logits = (1.0 - errors.astype(np.float64)) * (2.0 * labels - 1.0)
    return reference.lovasz_hinge_flat(logits, labels)


# ---- layers -----------------------------------------------------------------------------


def test_coordinate_grid_values_and_dynamic_size():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, CoordinateGrid(pixel_size=0.25)(inputs))
    for h, w in ((3, 5), (6, 2)):
        grid = model.predict(np.zeros((2, h, w, 3), np.float32), verbose=0)
        assert grid.shape == (2, h, w, 2)
        rows, cols = np.meshgrid(np.arange(h) * 0.25, np.arange(w) * 0.25, indexing="ij")
        np.testing.assert_allclose(grid[1], np.stack([rows, cols], -1))


def test_head_initialisation_and_channels():
    head = SpatialEmbeddingHead(n_sigma=2, hidden_channels=(4,))
    out = ops.convert_to_numpy(head(np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float32)))
    assert out.shape == (2, 5, 6, 5)
    assert np.all(out[..., :2] == 0.0) and np.allclose(out[..., 2:4], 1.0)
    with pytest.raises(ValueError, match="n_sigma"):
        SpatialEmbeddingHead(n_sigma=0)


# ---- clustering -------------------------------------------------------------------------


def _perfect_prediction(labels, pixel_size=1.0 / 1024, sigma=1.0):
    """Raw head output whose embeddings sit exactly at each object's mean position."""
    h, w = labels.shape
    rows, cols = np.meshgrid(np.arange(h) * pixel_size, np.arange(w) * pixel_size, indexing="ij")
    pos = np.stack([rows, cols], -1)
    pred = np.zeros((h, w, 4), np.float32)
    pred[..., 2] = sigma
    pred[..., 3] = -6.0
    for k in np.unique(labels[labels > 0]):
        m = labels == k
        pred[m, :2] = np.arctanh(pos[m].mean(0) - pos[m])
        pred[m, 3] = 6.0 - 0.01 * np.hypot(*(pos[m] - pos[m].mean(0)).T) / pixel_size
    return pred


def test_clustering_recovers_objects_from_a_perfect_prediction():
    labels = np.zeros((64, 64), np.int32)
    labels[3:15, 4:20], labels[30:50, 10:25], labels[40:60, 40:62] = 1, 2, 3
    labels[20:24, 40:44] = 4
    got = spatial_embedding_instances(_perfect_prediction(labels))
    assert got.dtype == np.int32 and got.shape == labels.shape
    assert sbd(got, labels) == 1.0
    assert set(np.unique(got)) == {0, 1, 2, 3, 4}
    # min_size drops the 16-pixel object; thresholds above every seed give nothing
    assert len(np.unique(spatial_embedding_instances(_perfect_prediction(labels), min_size=20))) == 4
    assert np.all(spatial_embedding_instances(_perfect_prediction(labels), seed_threshold=1.0) == 0)


def test_clustering_without_foreground_and_bad_inputs():
    pred = np.zeros((8, 8, 4), np.float32)
    pred[..., 3] = -5
    assert np.all(spatial_embedding_instances(pred) == 0)
    with pytest.raises(ValueError, match=r"pred.*shape"):
        spatial_embedding_instances(np.zeros((1, 8, 8, 4)))
    with pytest.raises(ValueError, match="NaN"):
        spatial_embedding_instances(np.full((8, 8, 4), np.nan))
    with pytest.raises(ValueError, match="seed_threshold"):
        spatial_embedding_instances(pred, seed_threshold=2.0)


# ---- training ---------------------------------------------------------------------------


def _scene(seed, h=48, w=48, n=4):
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 0.2, np.float32) + rng.normal(0, 0.02, (h, w, 3)).astype(np.float32)
    labels = np.zeros((h, w), np.int32)
    rr, cc = np.mgrid[:h, :w]
    for k in range(1, n + 1):
        for _ in range(100):
            cy, cx = rng.uniform(8, h - 8), rng.uniform(8, w - 8)
            m = ((rr - cy) / rng.uniform(4, 8)) ** 2 + ((cc - cx) / rng.uniform(4, 8)) ** 2 <= 1
            if not (labels[m] > 0).any():
                break
        labels[m] = k
        image[m] = rng.uniform(0.3, 1.0, 3)
    return image, labels


def _spatial_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Concatenate()([inputs, CoordinateGrid(1 / 32)(inputs)])
    for rate in (1, 2, 4, 8, 1):
        x = keras.layers.Conv2D(32, 3, padding="same", dilation_rate=rate, activation="relu")(x)
    return keras.Model(inputs, SpatialEmbeddingHead()(x))


def test_overfitting_one_image_recovers_its_objects():
    image, labels = _scene(0)
    model = _spatial_model()
    # torch's compiled CPU step is slower than its eager one (which also tests the top-k path)
    model.compile(keras.optimizers.Adam(5e-3), SpatialEmbeddingLoss(), jit_compile=BACKEND != "torch")
    history = model.fit(image[None], labels[None], epochs=150, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < 0.3 * history[0]
    segments = spatial_embedding_instances(model.predict(image[None], verbose=0)[0])
    assert sbd(segments, labels) > 0.9


def test_compiled_model_reloads_with_safe_mode(tmp_path):
    model = _spatial_model()
    model.compile(optimizer="adam", loss=SpatialEmbeddingLoss(n_sigma=1, max_instances=9))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(again.loss, SpatialEmbeddingLoss) and again.loss.get_config() == model.loss.get_config()
    image, _ = _scene(1, 16, 16, 1)
    np.testing.assert_allclose(again.predict(image[None], verbose=0), model.predict(image[None], verbose=0), rtol=1e-6)
