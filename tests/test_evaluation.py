"""Evaluation scores, baselines and pictures."""

from __future__ import annotations

import numpy as np

from keras_pixelembed import data
from keras_pixelembed.evaluation import (
    evaluate,
    felzenszwalb_segments,
    format_table,
    leave_one_out_tables,
    object_sbd,
    score,
    slic_segments,
    superpixel_curves,
)
from keras_pixelembed.viz import embedding_to_rgb, label_to_rgb, overlay_segments, panel, plot_curves, plot_training_log


class _Oracle:
    """Returns the ground truth: every object metric must be perfect."""

    def __init__(self, source):
        self.source, self.i = source, 0

    def segment(self, image):
        for i in range(len(self.source)):
            im, masks, ignore = self.source.load(i)
            if np.array_equal(im, image):
                return data.masks_to_label_map(masks, ignore=ignore)
        raise AssertionError("unknown image")


def test_score_of_the_truth_is_perfect_and_background_superpixels_do_not_count():
    gt = np.zeros((10, 10), np.int32)
    gt[1:5, 1:5], gt[6:9, 2:9] = 1, 2
    s = score(gt, gt)
    assert s["sbd"] == s["f1@0.5"] == s["asa"] == s["br"] == 1.0 and s["ue"] == 0.0
    # the background split into many superpixels changes nothing on the objects
    pred = gt.copy()
    pred[gt == 0] = 10 + np.arange(int((gt == 0).sum()))
    assert object_sbd(pred, gt) == 1.0


def test_evaluate_with_an_oracle_and_the_baselines():
    source = data.synthetic(3, (48, 48), families=("multicolor",), seed=9)
    seen = []
    result = evaluate(_Oracle(source), source, on_image=lambda pred, gt: seen.append((pred, gt)))
    assert result["images"] == 3
    # the hook sees each of the segmenter's label maps with its ground truth, in order
    assert len(seen) == 3 and all(np.array_equal(p, g) for p, g in seen)
    assert np.array_equal(seen[1][1], source.load_labels(1)[1])
    assert result["ours"]["sbd"] == 1.0 and result["ours"]["ap@0.5:0.95"] == 1.0
    for name in ("slic", "felzenszwalb"):
        assert 0.0 <= result[name]["sbd"] < 1.0
    table = format_table(result)
    assert "| slic |" in table and "| felzenszwalb |" in table


def test_baselines_reach_about_the_asked_number_of_segments():
    image = data.synthetic(1, (64, 64), seed=1).load(0)[0]
    assert 10 <= len(np.unique(slic_segments(image, 25))) <= 40
    assert 5 <= len(np.unique(felzenszwalb_segments(image, 25))) <= 80


def test_pictures(tmp_path):
    image, masks, _ = data.synthetic(1, (40, 40), seed=2).load(0)
    labels = data.masks_to_label_map(masks)
    emb = np.random.default_rng(0).normal(size=(40, 40, 8))
    rgb = embedding_to_rgb(emb)
    assert rgb.shape == (40, 40, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert embedding_to_rgb(emb[..., :2]).shape == (40, 40, 3)
    over = overlay_segments(image, labels)
    assert over.shape == image.shape and np.any(over != image)
    assert label_to_rgb(labels).shape == (40, 40, 3)
    panel(image, emb, labels, labels, path=str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0
    curves = superpixel_curves([emb], [image], [labels], counts=(10, 20))
    assert len(curves["slic"]["asa"]) == 2
    plot_curves(curves, str(tmp_path / "c.png"))
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_loss\n0,1.0,1.1\n1,0.5,0.7\n")
    plot_training_log(str(log), str(tmp_path / "t.png"))
    assert (tmp_path / "t.png").stat().st_size > 0


def test_tuning_on_ap_counts_background_segments_as_false_positives():
    import pytest

    from keras_pixelembed.evaluation import tuning_metric, whole_ap
    from keras_pixelembed.training import TrainConfig

    gt = np.zeros((20, 20), np.int32)
    gt[2:8, 2:8], gt[10:16, 10:16] = 1, 2
    gt[18:, :] = -1  # ignored
    extra = gt.copy()
    extra[18:, :] = 0
    extra[0:2, 12:20] = 3  # a segment where gt has no object
    in_ignored = np.where(gt < 0, 7, np.maximum(gt, 0))  # a segment on ignored pixels only
    assert whole_ap(np.maximum(gt, 0), gt) == 1.0 and whole_ap(in_ignored, gt) == 1.0
    assert whole_ap(extra, gt) == pytest.approx(2 / 3)
    assert object_sbd(extra, gt) == 1.0  # the superpixel view does not see it
    assert tuning_metric("auto", "spatial")[0] == "ap" and tuning_metric("auto", "embedding")[0] == "object_sbd"
    with pytest.raises(ValueError, match="tune_metric"):
        tuning_metric("dice", "spatial")
    with pytest.raises(ValueError, match="tune_metric"):
        TrainConfig(tune_metric="dice")


def test_leave_one_out_tables_put_each_fold_beside_the_all_families_run():
    def sbd(values):
        return {k: {"ours": {"sbd": v}, "slic": {"sbd": 0.5}} for k, v in zip(("flat", "photo"), values)}

    scores = {"none": sbd([0.9, 0.8]), "photo": sbd([0.88, 0.7]), "old": sbd([0.4, 0.3])}
    text = leave_one_out_tables(scores, {"none": "runs/all", "photo": "runs/p", "old": "m"}, this="runs/all")
    rows = text.splitlines()
    assert rows[0] == "| model | flat | photo |"
    assert "| this model | 0.900 | 0.800 |" in rows and "| without photo | 0.880 | 0.700 |" in rows
    assert "| old | 0.400 | 0.300 |" in rows and "| SLIC (the count of this model) | 0.500 | 0.500 |" in rows
    assert "| photo | 0.800 | 0.700 | -0.100 |" in rows and "by object size" not in text
    scores["none"]["flat"]["by_size"] = {"<16 px": (0.5, 2), ">=16 px": (None, 0)}
    scores["none"]["photo"]["by_size"] = {"<16 px": (0.8, 1), ">=16 px": (0.9, 1)}
    rows = leave_one_out_tables({"none": scores["none"]}).splitlines()
    assert rows[-3:] == [
        "| model (by object size) | <16 px | >=16 px |",
        "|---|---|---|",
        "| all families | 0.600 | 0.900 |",
    ]
