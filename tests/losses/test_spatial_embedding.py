"""SpatialEmbeddingLoss against a numpy loop (values, gradients, edge cases); overfitting one image."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_pixelembed import CoordinateGrid, SpatialEmbeddingHead, SpatialEmbeddingLoss
from keras_pixelembed.cluster import spatial_embedding_instances
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


def _trained_like(rng, h, w, labels, sigma=1.2, jitter=0.3):
    """A head output as late in training: offsets point at each mask's center (with `jitter`
    pixels of noise), one bandwidth per mask, seeds up inside the masks. Far pixels then get
    phi below every mask pixel's, and the loss keeps only the pixels near the masks."""
    pixel = 1 / 1024
    pred = np.zeros((1, h, w, 4), np.float32)
    pred[..., 2] = sigma + rng.normal(0, 0.02, (h, w))
    pred[..., 3] = rng.normal(0, 1, (h, w))
    rows, cols = np.mgrid[:h, :w]
    positions = np.stack([rows, cols], -1) * pixel
    for k in np.unique(labels[labels > 0]):
        m = labels == k
        center = positions[m].mean(0)
        target = center - positions[m] + rng.normal(0, jitter * pixel, (int(m.sum()), 2))
        pred[0][m, :2] = np.arctanh(target)
    outside = labels == 0
    pred[0][outside, :2] = rng.normal(0, 0.01, (int(outside.sum()), 2))
    return pred


@pytest.mark.parametrize("h, w", [(14, 16), (13, 15)])  # whole runs of 16 pixels, and a short last run
def test_trained_regime_keeps_only_pixels_near_the_masks_and_matches_reference(monkeypatch, h, w):
    # Exact pruning: the mask pixels and the outside ones whose error reaches the smallest
    # error of a mask pixel give the value and the gradient of the full loss (the jit form,
    # which sorts whole rows and is checked against numerical gradients above; at this
    # sharpness finite differences are only good to about 1%).
    from keras_pixelembed.losses import spatial_embedding

    rng = np.random.default_rng(13)
    labels = np.zeros((1, h, w), np.float32)
    labels[0, 1:5, 2:6], labels[0, 8:12, 8:14], labels[0, 6:8, 0:3] = 1, 2, 3
    labels[0, 0, w - 1] = -1
    pred = _trained_like(rng, h, w, labels[0])
    pred[0, 2, 3, :2] = np.arctanh(0.05)  # a mask pixel whose embedding is far from its mask's
    sizes = []
    original = SpatialEmbeddingLoss._q

    def spy(self, e, *args):  # the exponents, with the entries they are computed for
        sizes.append(int(np.prod(e[0].shape)))
        return original(self, e, *args)

    monkeypatch.setattr(SpatialEmbeddingLoss, "_q", spy)
    loss = SpatialEmbeddingLoss()
    values, grad = per_image_value_and_grad(loss, labels, pred)
    np.testing.assert_allclose(values, reference.spatial_embedding(labels, pred), rtol=1e-5)
    if BACKEND != "jax":  # JAX differentiates through tracers: the jit form, every pixel
        assert sizes and min(sizes) < 3 * h * w / 2  # entries of the three rows: fewer than half
    monkeypatch.setattr(spatial_embedding, "is_concrete", lambda x: False)
    dense_values, dense_grad = per_image_value_and_grad(loss, labels, pred)
    np.testing.assert_allclose(values, dense_values, rtol=1e-6)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-5, atol=1e-4)
    assert np.all(grad[0, 0, w - 1] == 0.0)  # the ignored pixel


@pytest.mark.parametrize("constant", [True, False])
def test_eager_pruned_form_equals_the_jit_form_with_ties(monkeypatch, constant):
    # Constant outputs (the head's initialisation) make whole rings of pixels tie; each run of
    # tied errors shares its weight, so both forms give the same gradient, not just the value.
    from keras_pixelembed.losses import spatial_embedding

    rng = np.random.default_rng(14)
    labels = np.zeros((2, 16, 16), np.float32)
    labels[0, 3:9, 3:9], labels[0, 10:14, 2:15], labels[1, 5:11, 6:12] = 1, 2, 1
    if constant:
        pred = np.zeros((2, 16, 16, 4), np.float32)
        pred[..., 2] = 0.5
    else:
        pred = _pred(rng, 2, 16, 16)
    loss = SpatialEmbeddingLoss(pixel_size=PIXEL)
    eager = per_image_value_and_grad(loss, labels, pred)
    monkeypatch.setattr(spatial_embedding, "is_concrete", lambda x: False)
    dense = per_image_value_and_grad(loss, labels, pred)
    monkeypatch.undo()
    np.testing.assert_allclose(eager[0], dense[0], rtol=1e-5, atol=1e-7)
    if constant and BACKEND == "tensorflow" and _exp_depends_on_layout():
        pytest.skip(
            "TensorFlow's exp gives this CPU different floats for one input at different array "
            "positions (vector and scalar paths), so which pixels tie depends on the layout of each "
            "form: values compared, gradients not"
        )
    np.testing.assert_allclose(eager[1], dense[1], rtol=1e-4, atol=1e-7)


def _exp_depends_on_layout() -> bool:
    """Whether `ops.exp` of 15 copies of one number gives more than one float, for some number
    (the vectorized part of the array and its tail computed differently)."""
    from keras import ops

    for v in np.random.default_rng(0).uniform(-6.0, 0.0, 64).astype(np.float32):
        out = ops.convert_to_numpy(ops.exp(ops.convert_to_tensor(np.full(15, v, np.float32))))
        if len(np.unique(out)) > 1:
            return True
    return False


@pytest.mark.parametrize("block_rows", [1, 3])
def test_whole_rows_in_cache_sized_blocks_match_reference(monkeypatch, block_rows):
    # Untrained heads: every pixel is within reach, and whole rows are processed in blocks of
    # `_BLOCK_ENTRIES` entries; blocks of one and of three rows (a partial last block) give
    # the loss and its gradient, label maps with ignored pixels and overlapping mask stacks.
    from keras_pixelembed.losses import spatial_embedding

    rng = np.random.default_rng(16)
    monkeypatch.setattr(spatial_embedding, "_BLOCK_ENTRIES", block_rows * 30)
    blocks = []
    original = spatial_embedding.lovasz_hinge_unit_rows

    def spy(errors, labels):
        blocks.append(int(errors.shape[0]))
        return original(errors, labels)

    monkeypatch.setattr(spatial_embedding, "lovasz_hinge_unit_rows", spy)
    _check(random_label_maps(rng, 2, 5, 6, 3), _pred(rng, 2, 5, 6))
    _check(random_mask_stack(rng, 2, 5, 6, 4, padding=1), _pred(rng, 2, 5, 6))
    if BACKEND != "jax":  # JAX differentiates through tracers: the jit form
        assert blocks and max(blocks) == block_rows and blocks.count(block_rows) >= 2


@pytest.mark.skipif(BACKEND == "torch", reason="jit_compile: TensorFlow and JAX")
def test_compiled_loss_equals_eager_with_many_empty_slots():
    # Under jit every slot has a row; JAX sorts only the smallest block of rows holding the
    # present masks (here 12 of 4 x 64 slots: the first 16), TensorFlow all of them.
    from tests.helpers import assert_compiled_equals_eager

    rng = np.random.default_rng(15)
    labels, pred = random_label_maps(rng, 4, 12, 12, 3), _pred(rng, 4, 12, 12)
    assert_compiled_equals_eager(SpatialEmbeddingLoss(pixel_size=PIXEL, max_instances=64), labels, pred)


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
    values, grad = per_image_value_and_grad(
        SpatialEmbeddingLoss(), -np.ones((1, 4, 4), np.float32), _pred(rng, 1, 4, 4)
    )
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
    [
        ({"n_sigma": 4}, "n_sigma"),
        ({"pixel_size": 0.0}, "pixel_size"),
        ({"w_var": -1.0}, "w_var"),
        ({"to_center": "yes"}, "to_center"),
        ({"sigma_scale": float("nan")}, "sigma_scale"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpatialEmbeddingLoss(**kwargs)


def test_config_round_trip():
    args = {
        "n_sigma": 2,
        "pixel_size": 0.002,
        "sigma_scale": 8.0,
        "w_inst": 2.0,
        "w_var": 5.0,
        "w_seed": 0.5,
        "foreground_weight": 3.0,
        "to_center": True,
        "max_instances": 12,
        "z_spacing": 2.5,
    }
    assert_config_round_trip(SpatialEmbeddingLoss(**args), args)


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


def test_three_bandwidths_on_an_image_name_n_sigma():
    # n_sigma=3 is for volumes (one bandwidth per axis): an image's call says so
    rng = np.random.default_rng(30)
    with pytest.raises(ValueError, match="n_sigma"):
        SpatialEmbeddingLoss(n_sigma=3)(random_label_maps(rng, 1, 4, 4, 2), _pred(rng, 1, 4, 4, 3))
