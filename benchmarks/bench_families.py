"""Leave-one-family-out evaluation of the randomized synthetic generator
(`keras_pixelembed.data.synthetic.randomized_scene`).

For each name given to `--leave-out` (an object family of `OBJECT_FAMILIES` or a background of
`BACKGROUNDS`), trains a run on every family (background) but that one, with the same recipe;
`--leave-out none` trains on all of them (the in-family model, the bundled default's recipe).
Then every run, and every model of `--evaluate`, is scored on one held-out test set per family
and per background (each test set draws only that family, or only that background, from a
seed no run trains or tunes on). The table puts, for each left-out name, the left-out run's
object SBD beside the in-family run's on the same test set.

    KERAS_BACKEND=torch python benchmarks/bench_families.py --out runs/families \\
        --leave-out none gradient textured noise photo --epochs 8 --steps-per-epoch 100 \\
        --init-weights keras_pixelembed/saved_models/spatial_unet/model.keras \\
        --evaluate old_default=keras_pixelembed/saved_models/spatial_unet

The training flags are those of `pixelembed train synthetic` (each fold's `--out-dir` is
`OUT/without_NAME`, or `OUT/all`). A fold whose run directory already holds a model is not
trained again (`--retrain` to do so). Writes `OUT/families.json` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEST_SEED = 60_000  # test set k draws from seed TEST_SEED + 100 * k; training uses 0-30_000
VALIDATION_SEED = 70_000  # the images thresholds are re-tuned on


def _fold_config(args, config, name: str):
    """The run of one fold: `config` drawing every family / background but `name`."""
    import dataclasses

    from keras_pixelembed.data.synthetic import BACKGROUNDS, OBJECT_FAMILIES

    families = config.families or OBJECT_FAMILIES
    backgrounds = config.backgrounds or BACKGROUNDS
    if name == "none":
        return dataclasses.replace(config, out_dir=os.path.join(args.out, "all"))
    if name in families:
        families = tuple(f for f in families if f != name)
    elif name in backgrounds:
        backgrounds = tuple(b for b in backgrounds if b != name)
    else:
        raise ValueError(f"--leave-out {name!r}: expected none or one of {OBJECT_FAMILIES + BACKGROUNDS}")
    if not families or not backgrounds:
        raise ValueError(f"--leave-out {name!r} leaves nothing to train on")
    return dataclasses.replace(
        config, out_dir=os.path.join(args.out, f"without_{name}"), families=families, backgrounds=backgrounds
    )


def family_test_sets(n_images: int, size) -> dict:
    """One held-out source per object family and per background, each drawing only that one."""
    from keras_pixelembed import data
    from keras_pixelembed.data.synthetic import BACKGROUNDS, OBJECT_FAMILIES

    sets = {}
    for k, name in enumerate(OBJECT_FAMILIES + BACKGROUNDS):
        which = {"families": (name,)} if name in OBJECT_FAMILIES else {"backgrounds": (name,)}
        sets[name] = data.synthetic(n_images, size, seed=TEST_SEED + 100 * k, generator="randomized", **which)
    return sets


SIZES = (("<16 px", 0, 16), ("16-32 px", 16, 32), (">=32 px", 32, np.inf))  # equivalent diameters


class SizeSBD:
    """Object SBD of the objects of each size in `SIZES` (the diameter of a disc of the visible
    part's area), gathered image by image (`add(pred, gt)`, an `evaluate(on_image=)` hook): per
    image, the other objects are left out of the labels; images with no object of a size do not
    count for it."""

    def __init__(self):
        self.per_size = {name: [] for name, _, _ in SIZES}

    def add(self, pred, gt) -> None:
        from keras_pixelembed.evaluation import object_sbd

        ids, areas = np.unique(gt[gt >= 1], return_counts=True)
        diameters = np.sqrt(4 * areas / np.pi)
        for name, lo, hi in SIZES:
            keep = ids[(diameters >= lo) & (diameters < hi)]
            if keep.size:
                self.per_size[name].append(object_sbd(pred, np.where(np.isin(gt, keep), gt, 0)))

    def result(self) -> dict:
        return {name: (round(float(np.mean(v)), 4) if v else None, len(v)) for name, v in self.per_size.items()}


def score_model(path: str, sets: dict, baselines=("slic",), tuning=None) -> dict:
    """`{test set: {method: {metric: mean}, "by_size": ...}}` of the run or saved model at
    `path`; `tuning` = (validation source, metric) re-tunes its thresholds first."""
    from keras_pixelembed.evaluation import evaluate, tune_on
    from keras_pixelembed.segmenter import Segmenter

    segmenter = Segmenter.load(path)
    if tuning is not None:
        tune_on(segmenter, *tuning)
    keys = ("sbd", "ap@0.5", "ap@0.75", "segments")
    out = {}
    for name, source in sets.items():
        by_size = SizeSBD()
        result = evaluate(segmenter, source, baselines=baselines, on_image=by_size.add)
        out[name] = {m: {k: round(result[m][k], 4) for k in keys} for m in ("ours", *baselines)}
        out[name]["by_size"] = by_size.result()
    out["thresholds"] = dict(segmenter.thresholds)
    return out


def _earlier_scores(path: str, settings: dict) -> dict:
    """`{model: (path, scores, thresholds)}` of an earlier families.json made with the same test
    sets and tuning (`settings`); empty when there is none or it differs."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        earlier = json.load(f)
    if any(earlier.get(key) != value for key, value in settings.items()) or earlier.get("test_seed") != TEST_SEED:
        return {}
    return {m: (earlier["models"][m], earlier["scores"][m], earlier["thresholds"][m]) for m in earlier["scores"]}


def main(argv=None) -> dict:
    from keras_pixelembed.cli import add_config_arguments, add_source_arguments, config_from_args, sources_from_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of the fold runs and families.json")
    parser.add_argument(
        "--leave-out",
        nargs="*",
        default=["none"],
        help="folds: none, families, backgrounds (none given: only --evaluate)",
    )
    parser.add_argument("--test-size", type=int, default=24, help="images per test set")
    parser.add_argument("--test-image-size", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--evaluate", nargs="*", default=[], metavar="NAME=PATH", help="other models to score")
    parser.add_argument("--retrain", action="store_true", help="train folds whose run already has a model")
    parser.add_argument(
        "--retune",
        type=int,
        default=64,
        help="re-tune each model's thresholds on this many fresh validation images of what it trained on "
        "(--evaluate models: every family) before scoring; 0: keep its own",
    )
    parser.add_argument("--rescore", action="store_true", help="score again models families.json already holds")
    parser.add_argument("--retune-metric", default="object_sbd", choices=("object_sbd", "ap", "auto"))
    add_config_arguments(parser, "synthetic", export=False, tensorboard=False)
    add_source_arguments(parser, "synthetic")
    args = parser.parse_args(argv)

    import keras

    from keras_pixelembed import data, run_dir
    from keras_pixelembed.evaluation import leave_one_out_tables
    from keras_pixelembed.training import train

    base = config_from_args(args)
    if base.generator != "randomized":
        raise SystemExit("--generator: the folds leave out families of the randomized generator")
    retuning = {"images": args.retune, "metric": args.retune_metric, "seed": VALIDATION_SEED}
    folds = {name: _fold_config(args, base, name) for name in args.leave_out}  # every name checked first
    timings = {}
    for name, config in folds.items():
        if not args.retrain and os.path.isfile(os.path.join(config.out_dir, run_dir.MODEL)):
            print(f"fold {name}: {config.out_dir} already holds a model (--retrain to train it again)")
            continue
        start = time.time()
        train(config, *sources_from_args("synthetic", args, config), verbose=2)
        timings[name] = round(time.time() - start, 1)
        print(f"fold {name}: trained in {timings[name]:.0f} s")

    sets = family_test_sets(args.test_size, tuple(args.test_image_size))
    models = {name: config.out_dir for name, config in folds.items()}
    models.update(dict(item.split("=", 1) for item in args.evaluate))
    scores, thresholds = {}, {}
    settings = {"test_size": args.test_size, "test_image_size": list(args.test_image_size), "retune": retuning}
    earlier = _earlier_scores(os.path.join(args.out, "families.json"), settings) if not args.rescore else {}
    for name, path in models.items():
        if name in earlier and earlier[name][0] == path and name not in timings:
            scores[name], thresholds[name] = earlier[name][1:]
            print(f"{name} ({path}): scores of the earlier run kept (--rescore to score it again)")
            continue
        start = time.time()
        config = folds.get(name, base)
        drawn = config.synthetic_kwargs()
        validation = data.synthetic(args.retune, tuple(args.test_image_size), seed=VALIDATION_SEED, **drawn)
        scores[name] = score_model(path, sets, tuning=(validation, args.retune_metric) if args.retune else None)
        thresholds[name] = scores[name].pop("thresholds")
        print(f"scored {name} ({path}) on {len(sets)} test sets in {time.time() - start:.0f} s")

    print(f"\nobject SBD per test set ({args.test_size} images of {args.test_image_size}, each drawing one family)")
    print(leave_one_out_tables(scores, models))

    summary = {
        "backend": keras.backend.backend(),
        "config": {k: v for k, v in base.to_json().items() if k not in ("out_dir",)},
        "train_images": args.train_images,
        "test_size": args.test_size,
        "test_image_size": list(args.test_image_size),
        "test_seed": TEST_SEED,
        "models": models,
        "train_seconds": timings,
        "retune": retuning,
        "thresholds": thresholds,
        "scores": scores,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "families.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
