"""Metrics on hand-computed cases; identity, permuted ids and empty maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keras_pixelembed import metrics


def _gt():
    gt = np.zeros((6, 8), np.int32)
    gt[0:3, 0:4] = 1
    gt[3:6, 4:8] = 2
    return gt


def test_identity_and_permuted_ids_are_perfect():
    gt = _gt()
    permuted = np.where(gt == 1, 7, np.where(gt == 2, 3, 0))
    for pred in (gt, permuted):
        assert metrics.sbd(pred, gt) == 1.0
        m = metrics.matching(pred, gt)
        assert (m.tp, m.fp, m.fn, m.f1, m.accuracy, m.mean_matched_iou, m.panoptic_quality) == (
            2,
            0,
            0,
            1.0,
            1.0,
            1.0,
            1.0,
        )
        assert metrics.average_precision(pred, gt) == 1.0
        assert metrics.asa(pred, gt) == 1.0 and metrics.undersegmentation_error(pred, gt) == 0.0
        assert metrics.boundary_recall(pred, gt) == 1.0
        assert metrics.adjusted_rand_index(pred, gt) == pytest.approx(1.0)
        assert metrics.variation_of_information(pred, gt) == pytest.approx(0.0, abs=1e-12)
        assert metrics.dic(pred, gt) == 0


def test_empty_maps():
    empty = np.zeros((4, 4), np.int32)
    assert metrics.sbd(empty, empty) == 1.0
    assert metrics.sbd(empty, _gt()[:4, :4]) == 0.0
    m = metrics.matching(empty, empty)
    assert (m.tp, m.fp, m.fn, m.f1) == (0, 0, 0, 1.0)
    m = metrics.matching(np.zeros((6, 8), np.int32), _gt())
    assert (m.tp, m.fn, m.recall, m.f1) == (0, 2, 0.0, 0.0)
    assert metrics.n_segments(empty) == 0


def test_matching_by_hand():
    gt = np.zeros((10, 10), np.int32)
    gt[0:5, 0:5] = 1  # 25 px
    gt[6:10, 6:10] = 2  # 16 px
    pred = np.zeros((10, 10), np.int32)
    pred[0:5, 0:3] = 5  # 15 px inside gt 1: IoU 15 / 25 = 0.6
    pred[5, 0:5] = 5  # + 5 px outside: IoU 15 / 30 = 0.5 -> no match at 0.5 (strict)
    pred[7:9, 0:2] = 9  # spurious
    m = metrics.matching(pred, gt, 0.5)
    assert (m.tp, m.fp, m.fn) == (0, 2, 2)
    pred[5, 0:5] = 0  # now IoU 0.6
    m = metrics.matching(pred, gt, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.precision == 0.5 and m.recall == 0.5 and m.f1 == 0.5
    assert m.accuracy == pytest.approx(1 / 3)
    assert m.mean_matched_iou == pytest.approx(0.6)
    assert m.panoptic_quality == pytest.approx(0.6 / 2)
    assert metrics.matching(pred, gt, 0.7).tp == 0
    # AP over 0.5:0.95: IoU 0.6 matches at 0.5, 0.55 and 0.6 -> 3 * (1/3) / 10
    assert metrics.average_precision(pred, gt) == pytest.approx(0.1)
    assert metrics.matching(pred, gt, 0.3).tp == 1  # below 0.5: optimal assignment
    assert metrics.matching(pred, gt).as_dict()["tp"] == 1


def test_sbd_by_hand():
    gt = np.zeros((4, 4), np.int32)
    gt[:, :2] = 1
    gt[:, 2:] = 2
    pred = np.ones((4, 4), np.int32)  # one segment covering both objects
    # BD(pred, gt) = dice(16 px, 8 px) = 2 * 8 / 24 = 2/3; BD(gt, pred) = 2/3 for both objects
    assert metrics.sbd(pred, gt) == pytest.approx(2 / 3)
    assert metrics.dic(pred, gt) == -1


def test_superpixel_metrics_by_hand():
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[1, 1, 1, 2]])
    assert metrics.asa(pred, gt) == pytest.approx(3 / 4)
    # segment 1 meets gt 1 (2 in, 1 out: min 1) and gt 2 (1 in, 2 out: min 1); segment 2 meets gt 2 only (min 0)
    assert metrics.undersegmentation_error(pred, gt) == pytest.approx(2 / 4)
    # background pixels (gt 0) are outside the superpixel metrics' domain
    assert metrics.asa(np.array([[1, 1, 1, 2, 2]]), np.array([[1, 1, 2, 2, 0]])) == pytest.approx(3 / 4)


def test_boundary_recall_tolerance():
    gt = np.zeros((10, 10), np.int32)
    gt[:, :5] = 1
    gt[:, 5:] = 2
    flat = np.ones((10, 10), np.int32)
    assert metrics.boundary_recall(flat, gt) == 0.0
    shifted = np.ones((10, 10), np.int32)
    shifted[:, 7:] = 2  # boundary two columns off
    assert metrics.boundary_recall(shifted, gt, tolerance=2) == 1.0
    assert metrics.boundary_recall(shifted, gt, tolerance=0) == 0.0


def test_ari_and_vi_known_values():
    gt = np.array([[0, 0, 1, 2]])
    pred = np.array([[0, 0, 1, 1]])
    assert metrics.adjusted_rand_index(pred, gt) == pytest.approx(0.5714285714285715)
    halves = np.array([[1, 1, 2, 2]])
    assert metrics.variation_of_information(np.ones((1, 4), int), halves) == pytest.approx(math.log(2))


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        metrics.sbd(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="integer"):
        metrics.asa(np.full((2, 2), 0.5), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="thresh"):
        metrics.matching(np.zeros((2, 2)), np.zeros((2, 2)), thresh=1.5)


def test_metrics_count_voxels_of_label_volumes():
    from keras_pixelembed.metrics import average_precision, boundary_recall, matching, sbd

    gt = np.zeros((4, 6, 6), np.int32)
    gt[:2, :3, :3], gt[2:, 3:, 3:] = 1, 2  # two cubes of 18 voxels
    pred = gt.copy()
    pred[0, 0, 0] = 0  # one voxel lost: IoU 17/18
    assert sbd(pred, gt) == pytest.approx((2 * 17 / 35 + 1.0) / 2)
    m = matching(pred, gt, 0.9)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert matching(pred, gt, 0.95).tp == 1
    assert average_precision(gt, gt) == 1.0
    assert boundary_recall(gt, gt) == 1.0
    with pytest.raises(ValueError, match="label volume"):
        sbd(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))
