"""The mask-set convention and the guarded numerics."""

import numpy as np
import pytest
from keras import ops

from keras_pixelembed.ops import Instances, parse_mask_set, safe_divide
from tests.helpers import value_and_grad


def test_label_map_and_one_channel_label_map_agree():
    labels = np.array([[[0, 1], [2, -1]]], np.float32)
    pred = np.zeros((1, 2, 2, 3), np.float32)
    a = parse_mask_set(ops.convert_to_tensor(labels), pred, max_instances=4)
    b = parse_mask_set(ops.convert_to_tensor(labels[..., None]), pred, max_instances=4)
    np.testing.assert_array_equal(ops.convert_to_numpy(a.labels), ops.convert_to_numpy(b.labels))
    np.testing.assert_array_equal(ops.convert_to_numpy(a.valid), [[1, 1, 1, 0]])


def test_mask_stack_keeps_overlaps_and_padding():
    stack = np.zeros((1, 2, 2, 3), np.float32)
    stack[0, :, :, 0] = 1
    stack[0, 0, :, 1] = 1
    inst = Instances(
        ops.convert_to_tensor(np.ones((1, 4, 2), np.float32)),
        parse_mask_set(ops.convert_to_tensor(stack), np.zeros((1, 2, 2, 2), np.float32), 4),
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(inst.counts), [[4, 2, 0]])
    np.testing.assert_array_equal(ops.convert_to_numpy(inst.n_instances), [2])


def test_statistics_of_a_label_map():
    labels = np.array([[[1, 1], [2, 0]]], np.float32)
    z = np.array([[[1.0], [3.0], [5.0], [7.0]]], np.float32)
    inst = Instances(ops.convert_to_tensor(z), parse_mask_set(ops.convert_to_tensor(labels), np.zeros((1, 2, 2, 1)), 3))
    np.testing.assert_allclose(ops.convert_to_numpy(inst.means)[0, :2, 0], [2.0, 5.0])
    np.testing.assert_allclose(ops.convert_to_numpy(inst.own_distances()), [[1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(ops.convert_to_numpy(inst.n_valid), [4.0])


def test_safe_divide_has_finite_gradients_at_zero():
    def fn(x):
        return ops.sum(safe_divide(x, ops.convert_to_tensor(np.array([0.0, 2.0], np.float32))))

    _, grad = value_and_grad(fn)(ops.convert_to_tensor(np.array([1.0, 2.0], np.float32)))
    np.testing.assert_allclose(ops.convert_to_numpy(grad), [0.0, 0.5])


def test_max_instances_must_be_positive_int():
    from keras_pixelembed.ops import validate_max_instances

    with pytest.raises(ValueError, match="max_instances"):
        validate_max_instances(2.5)
    with pytest.raises(ValueError, match="max_instances"):
        parse_mask_set(ops.zeros((1, 2, 2)), np.zeros((1, 2, 2, 1)), max_instances=2.5)
