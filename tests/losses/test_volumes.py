"""The losses on volumes `(batch, depth, height, width, channels)`: numpy-loop oracles for the
spatial-embedding and discriminative losses (values and gradients; label volumes, mask-volume
stacks, ignored voxels, anisotropy), the jit form, edge cases and bad shapes."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from keras_pixelembed import DiscriminativeLoss, PushPullCentroidLoss, SpatialEmbeddingLoss
from keras_pixelembed.losses import spatial_embedding
from tests import reference
from tests.helpers import BACKEND, assert_compiled_equals_eager, per_image_value_and_grad
from tests.losses.test_spatial_embedding import _check as check_against_reference

PIXEL = 0.02  # large voxels: phi spreads over the small test volumes


def _label_volumes(rng, batch, d, h, w, n_ids, p_ignore=0.1):
    labels = rng.integers(0, n_ids + 1, size=(batch, d, h, w))
    labels[rng.random(labels.shape) < p_ignore] = -1
    return labels.astype(np.float32)


def _pred(rng, batch, d, h, w, n_sigma=1, offset_scale=0.02, sigma_shift=-0.3):
    pred = rng.normal(size=(batch, d, h, w, 3 + n_sigma + 1)).astype(np.float32)
    pred[..., :3] *= offset_scale
    pred[..., 3 : 3 + n_sigma] = pred[..., 3 : 3 + n_sigma] * 0.3 + sigma_shift
    return pred


def _check(y_true, y_pred, **kwargs):
    """Values and gradients against the numpy loop over voxels (the 2D check, which reads the
    volume's rank)."""
    kwargs.setdefault("pixel_size", PIXEL)
    return check_against_reference(y_true, y_pred, **kwargs)


@pytest.mark.parametrize("n_sigma", [1, 3])
@pytest.mark.parametrize("to_center", [False, True])
def test_spatial_label_volumes_with_ignored_voxels_match_reference(n_sigma, to_center):
    rng = np.random.default_rng(0)
    y_true = _label_volumes(rng, 2, 3, 4, 3, 3)
    _check(y_true, _pred(rng, 2, 3, 4, 3, n_sigma), n_sigma=n_sigma, to_center=to_center)


def test_spatial_anisotropy_matches_reference_and_changes_the_loss():
    rng = np.random.default_rng(1)
    y_true = _label_volumes(rng, 1, 4, 3, 3, 2)[..., None]  # (batch, d, h, w, 1)
    pred = _pred(rng, 1, 4, 3, 3, 3)
    anisotropic, _ = _check(y_true, pred, n_sigma=3, z_spacing=3.0)
    isotropic, _ = _check(y_true, pred, n_sigma=3)
    assert not np.allclose(anisotropic, isotropic)


def test_spatial_overlapping_mask_volumes_match_reference():
    rng = np.random.default_rng(2)
    stack = (rng.random((2, 3, 3, 4, 3)) < 0.35).astype(np.float32)
    stack[..., -1] = 0  # a padding channel
    _check(stack, _pred(rng, 2, 3, 3, 4))


def test_spatial_eager_pruned_form_equals_the_dense_form(monkeypatch):
    # A trained-like volume: offsets toward each mask's center, so that the eager form keeps
    # only the voxels within reach; the dense (jit) form visits every voxel.
    rng = np.random.default_rng(3)
    d, h, w = 4, 10, 10
    labels = np.zeros((1, d, h, w), np.float32)
    labels[0, :2, :4, :4], labels[0, 1:4, 5:9, 4:9], labels[0, 3, 0, 9] = 1, 2, 3
    labels[0, 0, 9, 0] = -1
    pred = _pred(rng, 1, d, h, w, offset_scale=0.001, sigma_shift=1.0)
    loss = SpatialEmbeddingLoss(pixel_size=1.0 / 256, z_spacing=2.0)
    values, grad = per_image_value_and_grad(loss, labels, pred)
    np.testing.assert_allclose(
        values, reference.spatial_embedding(labels, pred, pixel_size=1.0 / 256, z_spacing=2.0), rtol=1e-5
    )
    monkeypatch.setattr(spatial_embedding, "is_concrete", lambda x: False)
    dense_values, dense_grad = per_image_value_and_grad(loss, labels, pred)
    np.testing.assert_allclose(values, dense_values, rtol=1e-6)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-5, atol=1e-4)
    assert np.all(grad[0, 0, 9, 0] == 0.0)  # the ignored voxel


@pytest.mark.skipif(BACKEND == "torch", reason="jit_compile: TensorFlow and JAX")
def test_spatial_compiled_equals_eager_on_volumes():
    rng = np.random.default_rng(4)
    labels, pred = _label_volumes(rng, 2, 3, 5, 4, 3), _pred(rng, 2, 3, 5, 4)
    assert_compiled_equals_eager(SpatialEmbeddingLoss(pixel_size=PIXEL, max_instances=16), labels, pred)


def test_spatial_edge_cases_on_volumes():
    rng = np.random.default_rng(5)
    pred = _pred(rng, 3, 2, 3, 3)
    labels = np.zeros((3, 2, 3, 3), np.float32)  # volume 0: no instance
    labels[1, 1, 2, 2] = 1  # volume 1: a one-voxel instance
    labels[2] = 1  # volume 2: one instance filling the volume
    _check(labels, pred)


def test_spatial_empty_volume_gives_one_zero_per_volume():
    # eager (concrete) call: the pruned form's early return for volumes without voxels
    values = SpatialEmbeddingLoss().call(
        ops.convert_to_tensor(np.zeros((2, 0, 3, 3), np.float32)),
        ops.convert_to_tensor(np.zeros((2, 0, 3, 3, 5), np.float32)),
    )
    values = ops.convert_to_numpy(values)
    assert values.shape == (2,) and np.all(values == 0.0)


def test_spatial_rejects_bad_volume_shapes():
    rng = np.random.default_rng(6)
    labels = _label_volumes(rng, 1, 2, 3, 3, 2)
    with pytest.raises(ValueError, match="n_sigma"):
        SpatialEmbeddingLoss(n_sigma=2)(labels, _pred(rng, 1, 2, 3, 3, 2))
    with pytest.raises(ValueError, match="channels"):
        SpatialEmbeddingLoss()(labels, _pred(rng, 1, 2, 3, 3)[..., 1:])
    with pytest.raises(ValueError, match="depth"):
        SpatialEmbeddingLoss()(labels[:, :1], _pred(rng, 1, 2, 3, 3))
    with pytest.raises(ValueError, match="y_pred"):
        SpatialEmbeddingLoss()(labels, np.zeros((1, 2, 2, 3, 3, 5), np.float32))
    with pytest.raises(ValueError, match="z_spacing"):
        SpatialEmbeddingLoss(z_spacing=0.0)


@pytest.mark.parametrize("stack", [False, True])
def test_discriminative_on_volumes_matches_reference(stack):
    rng = np.random.default_rng(7)
    if stack:
        y_true = (rng.random((2, 3, 3, 4, 3)) < 0.4).astype(np.float32)
    else:
        y_true = _label_volumes(rng, 2, 3, 3, 4, 3)
    y_pred = rng.normal(size=(2, 3, 3, 4, 3)).astype(np.float32)
    loss = DiscriminativeLoss(delta_v=0.2, delta_d=0.8, max_instances=8)
    values, grad = per_image_value_and_grad(loss, y_true, y_pred)
    kwargs = {"delta_v": 0.2, "delta_d": 0.8}
    np.testing.assert_allclose(values, reference.discriminative(y_true, y_pred, **kwargs), rtol=1e-4, atol=1e-6)
    ref_grad = reference.numerical_gradient(lambda x: reference.discriminative(y_true, x, **kwargs), y_pred)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=1e-4)


def test_push_pull_on_volumes_matches_reference():
    rng = np.random.default_rng(8)
    y_true = _label_volumes(rng, 2, 2, 3, 4, 2)
    y_pred = rng.normal(size=(2, 2, 3, 4, 4)).astype(np.float32)
    values, _ = per_image_value_and_grad(PushPullCentroidLoss(max_instances=8), y_true, y_pred)
    np.testing.assert_allclose(values, reference.push_pull_centroid(y_true, y_pred), rtol=1e-4, atol=1e-6)


def test_mask_set_losses_reject_mismatched_volumes():
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="height"):
        DiscriminativeLoss()(_label_volumes(rng, 1, 2, 3, 3, 2), np.zeros((1, 2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="label map"):
        DiscriminativeLoss()(np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3, 3, 3), np.float32))


def test_lovasz_hinge_of_volumes_matches_reference_values_and_gradients():
    from keras_pixelembed import LovaszHingeLoss

    rng = np.random.default_rng(21)
    labels = (rng.random((2, 3, 4, 5, 2)) < 0.4).astype(np.float32)
    labels[0, 0, 0, 0, 1] = -1  # an ignored voxel
    labels[1, ..., 1] = 0  # a channel without positives
    logits = rng.normal(size=labels.shape).astype(np.float32)
    values, grad = per_image_value_and_grad(LovaszHingeLoss(), labels, logits)
    np.testing.assert_allclose(values, reference.lovasz_hinge_images(logits, labels), rtol=1e-5, atol=1e-6)
    ref_grad = reference.numerical_gradient(lambda x: reference.lovasz_hinge_images(x, labels), logits)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="depth"):
        LovaszHingeLoss()(labels[..., 0], logits)


def test_trilinear_sampling_matches_reference():
    from keras_pixelembed.ops.sampling import bilinear_sample, nearest_targets

    rng = np.random.default_rng(22)
    values = rng.normal(size=(2, 3, 4, 5, 2)).astype(np.float32)
    offsets = (rng.normal(size=(2, 3, 4, 5, 3)) * 2).astype(np.float32)
    got = ops.convert_to_numpy(bilinear_sample(ops.convert_to_tensor(values), ops.convert_to_tensor(offsets)))
    np.testing.assert_allclose(got, reference.bilinear_sample(values, offsets), rtol=1e-5, atol=1e-6)
    labels = rng.integers(0, 5, size=(2, 3, 4, 5)).astype(np.int32)
    target, inside = (ops.convert_to_numpy(x) for x in nearest_targets(labels, offsets))
    for b, k, i, j in np.ndindex(*labels.shape):
        at = np.round(np.array([k, i, j]) + offsets[b, k, i, j]).astype(int)
        ok = bool(np.all((at >= 0) & (at < labels.shape[1:])))
        assert inside[b, k, i, j] == ok
        if ok:
            assert target[b, k, i, j] == labels[(b, *at)]


@pytest.mark.parametrize("kwargs", [{}, {"max_offset": 0.3, "kappa": 0.2, "lam": 1.0, "min_kept": 0.5}])
def test_offset_uncertainty_of_volumes_matches_reference(kwargs):
    from keras_pixelembed import OffsetUncertaintyLoss

    rng = np.random.default_rng(23)
    classes = 3
    y_true = rng.integers(-1, classes, size=(2, 3, 4, 4)).astype(np.float32)  # -1: ignored voxels
    y_pred = rng.normal(size=(2, 3, 4, 4, classes + 4)).astype(np.float32)
    loss = OffsetUncertaintyLoss(classes, **kwargs)
    values, grad = per_image_value_and_grad(loss, y_true, y_pred)
    ref = lambda x: reference.offset_uncertainty(y_true, x, classes, **kwargs)  # noqa: E731
    np.testing.assert_allclose(values, ref(y_pred), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, reference.numerical_gradient(ref, y_pred), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match=r"num_classes \+ 4"):
        loss(y_true, y_pred[..., :-1])
    with pytest.raises(ValueError, match="depth, height, width"):
        loss(y_true[:, 0], y_pred)
