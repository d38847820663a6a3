"""The Lovasz hinge (Berman et al., CVPR 2018) against a numpy loop: values, gradients, the
top-k shortcut."""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_pixelembed import LovaszHingeLoss, lovasz_hinge
from keras_pixelembed.losses.lovasz import lovasz_hinge_rows, lovasz_hinge_unit_rows
from keras_pixelembed.testing import value_and_grad
from tests import reference
from tests.helpers import BACKEND, assert_config_round_trip, per_image_value_and_grad


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
    want = [_rows_ref(e, lab) for e, lab in zip(errors, labels)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _rows_ref(errors, labels):
    # logits that give these hinge errors: e = 1 - logit * (2l - 1)
    logits = (1.0 - errors.astype(np.float64)) * (2.0 * labels - 1.0)
    return reference.lovasz_hinge_flat(logits, labels)


def test_unit_rows_equal_the_full_sort_with_and_without_ties():
    rng = np.random.default_rng(13)
    errors = rng.random((5, 300)).astype(np.float32)
    errors[:, :100] = np.round(errors[:, :100] * 8) / 8  # many exact ties
    errors[0, 10] = 0.0
    labels = (rng.random((5, 300)) < 0.3).astype(np.float32)
    labels[:, 0] = 1.0  # every row has a positive
    got = ops.convert_to_numpy(lovasz_hinge_unit_rows(errors, labels))
    np.testing.assert_allclose(got, [_rows_ref(e, lab) for e, lab in zip(errors, labels)], rtol=1e-5)
    np.testing.assert_allclose(got, ops.convert_to_numpy(lovasz_hinge_rows(errors, labels)), rtol=1e-5)


def test_host_sort_equals_numpy_order_with_ties_and_extreme_values():
    # Concrete int32 rows in host memory are sorted by NumPy on packed (value, position) keys:
    # the keys must come back exactly, the indices must be a permutation giving those keys.
    from keras_pixelembed.ops._backend import sort_with_indices

    rng = np.random.default_rng(15)
    values = rng.integers(-(2**31), 2**31 - 1, size=(4, 500), dtype=np.int64).astype(np.int32)
    values[:, :200] = values[:, :1]  # a long run of ties
    values[0, 0], values[1, 0] = 2**31 - 1, -(2**31)
    for descending in (True, False):
        keys, order = (ops.convert_to_numpy(x) for x in sort_with_indices(ops.convert_to_tensor(values), descending))
        expected = np.sort(values, axis=-1)
        np.testing.assert_array_equal(keys, expected[:, ::-1] if descending else expected)
        np.testing.assert_array_equal(np.take_along_axis(values, order.astype(np.int64), axis=-1), keys)
        assert all(np.array_equal(np.sort(row), np.arange(500)) for row in order)


def test_tied_errors_share_their_weight_whatever_their_order():
    # The same row with its columns permuted: each pixel's gradient must follow it (tied
    # pixels of one label get the mean of the run's Jaccard steps, not a sort-dependent one),
    # eager and compiled. (`lovasz_hinge_rows`, for errors of any sign, gives the same value but
    # leaves ties of mixed labels in the sort's order.)
    rng = np.random.default_rng(14)
    errors = (rng.integers(0, 6, (3, 64)) / 6).astype(np.float32)
    labels = (rng.random((3, 64)) < 0.4).astype(np.float32)
    labels[:, 0] = 1.0
    perm = rng.permutation(64)
    for jit in (False, True) if BACKEND != "torch" else (False,):
        for mode in ("direct", "permuted"):
            e, lab = (errors, labels) if mode == "direct" else (errors[:, perm], labels[:, perm])
            labels_t = ops.convert_to_tensor(lab)
            value, grad = value_and_grad(
                lambda x, labels_t=labels_t: ops.sum(lovasz_hinge_unit_rows(x, labels_t)), jit=jit
            )(ops.convert_to_tensor(e))
            grad = ops.convert_to_numpy(grad)
            if mode == "direct":
                direct = (float(ops.convert_to_numpy(value)), grad)
            else:
                np.testing.assert_allclose(float(ops.convert_to_numpy(value)), direct[0], rtol=1e-6)
                np.testing.assert_allclose(grad, direct[1][:, perm], rtol=1e-5, atol=1e-7)


def test_config_round_trip():
    assert_config_round_trip(LovaszHingeLoss(name="lh"), {"name": "lh"})
