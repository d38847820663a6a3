"""SpatialEmbeddingLoss forward + backward, side by side with a naive per-instance loop in the
same backend (`keras.ops`, Python loops over images and masks, the same Lovasz routine), and the
seed clustering at 512 x 512 with 50 objects (against the obvious version that evaluates phi
over every foreground pixel for each proposal).

    KERAS_BACKEND=torch python benchmarks/bench_spatial.py [--size 256] [--batch 4] [--masks 20]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import backend, measure_worker, run_worker, voronoi_labels  # noqa: E402


def naive_loss(labels_np, loss):
    """Neven et al.'s loss the obvious way: a loop over images and over instances."""
    from keras import ops

    from keras_pixelembed.losses.lovasz import lovasz_hinge_rows
    from keras_pixelembed.ops.spatial import bandwidth, decode_spatial

    def fn(y_pred):
        batch, h, w, _ = y_pred.shape
        parts = decode_spatial(y_pred, loss.pixel_size)
        total = 0.0
        for b in range(batch):
            emb = ops.reshape(parts.embeddings[b], (-1, 2))
            sigma, seed = ops.reshape(parts.sigma[b], (-1, 1)), ops.reshape(parts.seeds[b], (-1,))
            lab = labels_np[b].reshape(-1)
            ids = [k for k in range(1, int(lab.max()) + 1) if (lab == k).any()]
            inst, var, seed_loss = 0.0, 0.0, ops.sum(ops.convert_to_tensor((lab == 0).astype("float32")) * seed**2)
            for k in ids:
                m = ops.convert_to_tensor((lab == k).astype("float32"))
                count = float((lab == k).sum())
                center = ops.sum(emb * m[:, None], axis=0) / count
                s = ops.sum(sigma * m[:, None], axis=0) / count
                phi = ops.exp(-ops.sum(bandwidth(s, loss.sigma_scale) * (emb - center) ** 2, axis=-1))
                errors = 1.0 - (2.0 * phi - 1.0) * (2.0 * m - 1.0)
                inst += lovasz_hinge_rows(errors[None], m[None])[0]
                var += ops.sum(m * ops.sum((sigma - ops.stop_gradient(s)) ** 2, axis=-1)) / count
                seed_loss += 10.0 * ops.sum(m * (seed - ops.stop_gradient(phi)) ** 2)
            n = max(len(ids), 1)
            total += inst / n + 10.0 * var / n + seed_loss / float(h * w)
        return total / batch

    return fn


def loss_worker(args) -> None:
    from keras import ops

    from keras_pixelembed import SpatialEmbeddingLoss

    labels_np = voronoi_labels(args.batch, args.size, args.n_masks)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.size, args.size, 4)).astype("float32")
    x[..., :2] *= 0.01
    x[..., 2] = 0.5 + 0.1 * x[..., 2]
    x = ops.convert_to_tensor(x)
    loss = SpatialEmbeddingLoss(max_instances=64)
    measure_worker(
        args.impl, loss, labels_np, naive_loss(labels_np, loss) if args.impl == "loop" else None, x, args.repeats
    )


def disc_prediction(size: int, n_objects: int, seed: int = 0):
    """A raw head output whose embeddings point at the centers of `n_objects` discs."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    rows, cols = np.mgrid[:size, :size]
    radius = size / (3.0 * math.sqrt(n_objects))
    k = 0
    for _ in range(5000):
        cy, cx = rng.uniform(radius, size - radius, 2)
        disc = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        if not labels[disc].any():
            k += 1
            labels[disc] = k
        if k == n_objects:
            break
    pixel = 1.0 / 1024
    pred = np.zeros((size, size, 4), np.float32)
    pred[..., 2] = 0.5 + 0.1 * math.log(radius)  # bandwidth that reaches about one radius
    pred[..., 3] = -4.0
    for i in range(1, k + 1):
        m = labels == i
        pos = np.stack([rows[m], cols[m]], -1) * pixel
        pred[m, :2] = np.arctanh(np.clip(pos.mean(0) - pos + rng.normal(0, pixel, pos.shape), -0.99, 0.99))
        pred[m, 3] = 4.0 - 3.0 * np.hypot(*(pos - pos.mean(0)).T) / (radius * pixel)
    return pred, labels, k


def naive_clustering(pred, seed_threshold=0.9, fg_threshold=0.5, min_size=10):
    """The obvious greedy loop: phi over every foreground pixel for each proposal."""
    from keras_pixelembed.cluster.spatial import spatial_embedding_parts

    emb, bw, seeds = spatial_embedding_parts(pred)
    fg = seeds > fg_threshold
    unclustered = fg.copy()
    out = np.zeros(seeds.shape, np.int32)
    count = 0
    while True:
        masked = np.where(unclustered, seeds, 0)
        i = np.unravel_index(np.argmax(masked), seeds.shape)
        if masked[i] < seed_threshold:
            break
        phi = np.exp(-np.sum(bw[i] * (emb - emb[i]) ** 2, axis=-1))
        proposal = (phi > 0.5) & fg
        if proposal.sum() > min_size and unclustered[proposal].sum() / proposal.sum() > 0.5:
            count += 1
            out[proposal] = count
        unclustered[proposal] = False
        unclustered[i] = False
    return out


def clustering_rows(size: int, n_objects: int, repeats: int) -> list[dict]:
    from keras_pixelembed.cluster import spatial_embedding_instances
    from keras_pixelembed.metrics import sbd

    pred, labels, k = disc_prediction(size, n_objects)
    rows = []
    for name, fn in (("vectorized", spatial_embedding_instances), ("naive", naive_clustering)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            seg = fn(pred)
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "clustering": name,
                "size": size,
                "objects": k,
                "ms": 1e3 * float(np.median(times)),
                "found": int(seg.max()),
                "sbd": sbd(seg, labels),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--masks", type=int, nargs="+", default=[20])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-loss", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "N_MASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.impl, args.n_masks = args.worker[0], int(args.worker[1])
        loss_worker(args)
        return
    if not args.skip_loss:
        impls = ["vectorized", "loop"] + (["vectorized_jit"] if backend() in ("tensorflow", "jax") else [])
        common = ["--batch", str(args.batch), "--size", str(args.size), "--repeats", str(args.repeats)]
        print(
            f"backend={backend()} batch={args.batch} size={args.size}x{args.size} n_sigma=1 "
            "(forward + backward, median seconds; peak = extra resident MB)"
        )
        print("| masks | vectorized ms | loop ms | speed-up | vectorized jit ms | vectorized peak MB | loop peak MB |")
        print("|---|---|---|---|---|---|---|")
        for n in args.masks:
            res = {impl: run_worker(__file__, [*common, "--worker", impl, str(n)]) for impl in impls}
            jit = res.get("vectorized_jit", {}).get("seconds")
            print(
                f"| {n} | {1e3 * res['vectorized']['seconds']:.1f} | {1e3 * res['loop']['seconds']:.1f} | "
                f"{res['loop']['seconds'] / res['vectorized']['seconds']:.1f}x | "
                f"{'-' if jit is None else f'{1e3 * jit:.1f}'} | {res['vectorized']['peak_mb']:.0f} | "
                f"{res['loop']['peak_mb']:.0f} |",
                flush=True,
            )
    print("\nseed clustering, one image (numpy, median of", args.repeats, "runs)")
    print("| clustering | size | objects | ms | found | SBD vs truth |")
    print("|---|---|---|---|---|---|")
    for row in clustering_rows(512, 50, args.repeats):
        print(
            f"| {row['clustering']} | {row['size']} | {row['objects']} | {row['ms']:.1f} | {row['found']} | {row['sbd']:.3f} |"
        )


if __name__ == "__main__":
    main()
