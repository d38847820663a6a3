"""Volumes end to end: the spatial-embedding loss (forward + backward) and the segmentation
(predict + seed clustering) of a 64^3 and a 160^3 volume, then a 3D U-Net trained on synthetic
volumes (`data.synthetic_volume`: textured, touching ellipsoids, anisotropic) with a wall-clock
budget and its held-out AP at IoU 0.5 and 0.75.

    KERAS_BACKEND=torch python benchmarks/bench_volumes.py [--minutes 20] [--sizes 64 160] \
        [--shape 16 48 48] [--z-spacing 2] [--train 64] [--test 8] [--width 8] \
        [--run RUN_DIR --run-shapes 16 48 48 32 96 96 --run-volumes 8]

`--run` evaluates a trained run directory (`pixelembed train synthetic --ndim 3`) on held-out
synthetic volumes of several shapes, whole and in tiles.

The held-out volumes come from another seed than the training ones and are never used in
training; the thresholds are tuned on separate validation volumes (a small grid). Nothing is
downloaded: the data is generated.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_segment import median_seconds as _median  # noqa: E402

PIXEL = 1.0 / 1024


def timing_rows(sizes, repeats: int, width: int, z_spacing: float) -> list[dict]:
    from keras import ops

    from keras_pixelembed import SpatialEmbeddingLoss, build_pixel_embedder
    from keras_pixelembed.cluster import spatial_embedding_instances
    from keras_pixelembed.data import synthetic_volume
    from keras_pixelembed.layers.clustering import SeedClustering
    from keras_pixelembed.testing import value_and_grad

    model = build_pixel_embedder("unet", head="spatial", width=width, depth=2, ndim=3, z_spacing=z_spacing)
    loss = SpatialEmbeddingLoss(pixel_size=PIXEL, z_spacing=z_spacing, max_instances=64)
    rows = []
    for size in sizes:
        rng = np.random.default_rng(size)
        image, labels = synthetic_volume(rng, shape=(size, size, size), n_objects=(size // 4, size // 3), z_spacing=1.0)
        x = image[None]
        pred = np.asarray(model.predict_on_batch(x), np.float32)
        y = ops.convert_to_tensor(labels[None].astype(np.float32))
        step = value_and_grad(lambda p, y=y: ops.mean(loss.call(y, p)))
        p = ops.convert_to_tensor(pred)
        rows.append(
            {
                "size": size,
                "what": "loss forward + backward (eager, untrained head)",
                "seconds": _median(lambda p=p, step=step: ops.convert_to_numpy(step(p)[1]), repeats),
                "objects": int(labels.max()),
            }
        )

        def segment(x=x):
            out = np.asarray(model.predict_on_batch(x), np.float32)[0]
            return spatial_embedding_instances(out, pixel_size=PIXEL, z_spacing=z_spacing)

        rows.append(
            {
                "size": size,
                "what": f"segment: predict (3D U-Net width {width}) + numpy clustering",
                "seconds": _median(segment, repeats),
                "objects": int(labels.max()),
            }
        )
        # the clustering alone, on a (near) perfect prediction of the volume: one instance per object
        perfect = _perfect_output(labels, PIXEL, z_spacing)
        thresholds = {"seed_threshold": 0.9, "fg_threshold": 0.5, "min_size": 10}
        want = spatial_embedding_instances(perfect, pixel_size=PIXEL, z_spacing=z_spacing, **thresholds)
        layer = SeedClustering(pixel_size=PIXEL, z_spacing=z_spacing, max_instances=256, **thresholds)
        got = np.asarray(ops.convert_to_numpy(layer(perfect[None])[0]))[0]
        assert np.array_equal(got, want), "the in-graph clustering differs from the numpy reference"
        numpy_run = functools.partial(
            spatial_embedding_instances, perfect, pixel_size=PIXEL, z_spacing=z_spacing, **thresholds
        )
        graph_run = functools.partial(lambda layer, x: ops.convert_to_numpy(layer(x)[0]), layer, perfect[None])
        for what, run in (
            ("clustering alone, numpy reference", numpy_run),
            ("clustering alone, in-graph SeedClustering (eager)", graph_run),
        ):
            rows.append({"size": size, "what": what, "seconds": _median(run, repeats), "objects": int(want.max())})
        del pred, p
    return rows


def _perfect_output(labels, pixel_size: float, z_spacing: float) -> np.ndarray:
    """A head output `(d, h, w, 5)` whose embeddings sit at each object's mean position, seeds
    highest at its centre, bandwidth exp(10): what a well-trained model gives."""
    k, i, j = np.meshgrid(*(np.arange(n) for n in labels.shape), indexing="ij")
    pos = np.stack([k * z_spacing, i, j], -1).astype(np.float32) * pixel_size
    pred = np.zeros((*labels.shape, 5), np.float32)
    pred[..., 3], pred[..., 4] = 1.0, -6.0
    for obj in np.unique(labels[labels > 0]):
        m = labels == obj
        pred[m, :3] = np.arctanh(np.clip(pos[m].mean(0) - pos[m], -0.999, 0.999))
        pred[m, 4] = 6.0 - 0.01 * np.linalg.norm(pos[m] - pos[m].mean(0), axis=-1) / pixel_size
    return pred


def train_and_evaluate(args) -> dict:
    import keras

    from keras_pixelembed import SpatialEmbeddingLoss, build_pixel_embedder
    from keras_pixelembed.cluster import spatial_embedding_instances
    from keras_pixelembed.data import random_crop_and_flip, synthetic_volumes
    from keras_pixelembed.metrics import matching

    shape = tuple(args.shape)
    kw = {"shape": shape, "z_spacing": args.z_spacing}
    train_x, train_y = synthetic_volumes(args.train, seed=1, **kw)
    val_x, val_y = synthetic_volumes(4, seed=2, **kw)
    test_x, test_y = synthetic_volumes(args.test, seed=3, **kw)
    keras.utils.set_random_seed(0)
    model = build_pixel_embedder("unet", head="spatial", width=args.width, depth=2, ndim=3, z_spacing=args.z_spacing)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=SpatialEmbeddingLoss(pixel_size=PIXEL, z_spacing=args.z_spacing, max_instances=32),
    )
    rng = np.random.default_rng(0)
    start, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < 60 * args.minutes:
        pick = rng.integers(0, args.train, args.batch_size)
        batch = [random_crop_and_flip(rng, train_x[i], train_y[i], shape, z_flip=True) for i in pick]
        x = np.stack([b[0] for b in batch])
        y = np.stack([b[1] for b in batch]).astype(np.float32)
        losses.append(float(model.train_on_batch(x, y)))
        steps += 1
        if steps % 50 == 0:
            print(f"step {steps}, {time.perf_counter() - start:.0f} s, loss {np.mean(losses[-50:]):.4f}", flush=True)
    train_seconds = time.perf_counter() - start

    def predict(xs):
        return [np.asarray(model.predict_on_batch(x[None]), np.float32)[0] for x in xs]

    def ap(preds, ys, thresholds, iou):
        scores = []
        for pred, y in zip(preds, ys):
            labels = spatial_embedding_instances(pred, pixel_size=PIXEL, z_spacing=args.z_spacing, **thresholds)
            scores.append(matching(labels, y, iou).accuracy)  # TP / (TP + FP + FN)
        return float(np.mean(scores))

    val_preds = predict(val_x)
    grid = [
        {"seed_threshold": s, "fg_threshold": f, "min_size": 20} for s in (0.6, 0.75, 0.9) for f in (0.3, 0.5) if f < s
    ]
    best = max(grid, key=lambda t: ap(val_preds, val_y, t, 0.5))
    test_preds = predict(test_x)
    return {
        "steps": steps,
        "train_minutes": train_seconds / 60,
        "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
        "thresholds": best,
        "ap@0.5": ap(test_preds, test_y, best, 0.5),
        "ap@0.75": ap(test_preds, test_y, best, 0.75),
        "test_objects": int(sum(int(y.max()) for y in test_y)),
    }


def evaluate_run(run: str, shapes, volumes: int, seed: int = 30_000, tile=(48, 12)) -> list[dict]:
    """A trained run directory on held-out synthetic volumes of several shapes (larger than its
    training crops too), whole and in tiles (`tile`: tile size, overlap): DSB accuracy at IoU
    0.5 and 0.75, and seconds per volume."""
    from keras_pixelembed.data import synthetic_volume
    from keras_pixelembed.metrics import matching
    from keras_pixelembed.segmenter import Segmenter

    whole = Segmenter.load(run, tile_size=None)
    tiled = Segmenter.load(run, tile_size=tile[0], tile_overlap=tile[1])
    rows = []
    for shape in shapes:
        pairs = [
            synthetic_volume(np.random.default_rng([seed, i]), tuple(shape), z_spacing=whole.z_spacing)
            for i in range(volumes)
        ]
        for name, segmenter in (("whole", whole), (f"tiles of {tile[0]}, overlap {tile[1]}", tiled)):
            if name != "whole" and max(shape) <= tile[0]:
                continue
            start, scores = time.perf_counter(), {0.5: [], 0.75: []}
            for image, labels in pairs:
                pred = segmenter.segment(image)
                for iou in scores:
                    scores[iou].append(matching(pred, labels, iou).accuracy)
            rows.append(
                {
                    "shape": "x".join(map(str, shape)),
                    "how": name,
                    "ap@0.5": float(np.mean(scores[0.5])),
                    "ap@0.75": float(np.mean(scores[0.75])),
                    "objects": int(sum(int(y.max()) for _, y in pairs)),
                    "seconds": (time.perf_counter() - start) / volumes,
                }
            )
    return rows


def main() -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 160])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget (0: no training)")
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 48, 48])
    parser.add_argument("--z-spacing", type=float, default=2.0)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--run", help="also evaluate this trained run directory on held-out volumes of --run-shapes")
    parser.add_argument("--run-shapes", type=int, nargs="+", default=[16, 48, 48, 32, 96, 96], help="D H W ...")
    parser.add_argument("--run-volumes", type=int, default=8)
    args = parser.parse_args()
    print(f"backend={keras.backend.backend()}")
    if args.sizes:
        print("| volume | what | seconds | objects |\n|---|---|---|---|")
        for row in timing_rows(args.sizes, args.repeats, args.width, 1.0):
            print(f"| {row['size']}^3 | {row['what']} | {row['seconds']:.2f} | {row['objects']} |", flush=True)
    if args.run:
        shapes = [args.run_shapes[i : i + 3] for i in range(0, len(args.run_shapes), 3)]
        print("| volume | how | AP@0.5 | AP@0.75 | objects | s / volume |\n|---|---|---|---|---|---|")
        for r in evaluate_run(args.run, shapes, args.run_volumes):
            print(
                f"| {r['shape']} | {r['how']} | {r['ap@0.5']:.3f} | {r['ap@0.75']:.3f} | {r['objects']} | "
                f"{r['seconds']:.2f} |",
                flush=True,
            )
    if args.minutes > 0:
        result = train_and_evaluate(args)
        print(result)


if __name__ == "__main__":
    main()
