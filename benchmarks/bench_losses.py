"""Forward + backward time and peak memory of each centroid-family loss, side by side with a
naive per-mask loop written in the same backend (`keras.ops`, Python loops over images and
masks), in one run. Each measurement runs in its own process so that its peak memory is its own.

    KERAS_BACKEND=jax python benchmarks/bench_losses.py [--size 256] [--batch 4] [--masks 5 20 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import backend, measure_worker, run_worker, voronoi_labels  # noqa: E402

LOSSES = ("push_pull_centroid", "push_pull_balls", "discriminative")


def fast_loss(name: str):
    from keras_pixelembed import DiscriminativeLoss, PushPullBallsLoss, PushPullCentroidLoss

    return {
        "push_pull_centroid": PushPullCentroidLoss,
        "push_pull_balls": PushPullBallsLoss,
        "discriminative": DiscriminativeLoss,
    }[name](max_instances=64)


def naive_loss(name: str, labels_np, loss):
    """The loss written the obvious way: a Python loop over images and over masks."""
    from keras import ops

    def norm(v):
        return ops.sqrt(ops.maximum(ops.sum(ops.square(v), axis=-1), 1e-12))

    def fn(y_pred):
        z_all = loss._activation_fn(y_pred)
        total = 0.0
        for b in range(labels_np.shape[0]):
            lab = labels_np[b].reshape(-1)
            z = ops.reshape(z_all[b], (-1, z_all.shape[-1]))
            valid = ops.convert_to_tensor((lab >= 0).astype("float32"))
            ids = [k for k in range(1, int(lab.max()) + 1) if (lab == k).any()]
            mus, terms_a, terms_r = [], 0.0, 0.0
            for k in ids:
                m = ops.convert_to_tensor((lab == k).astype("float32"))
                count = float((lab == k).sum())
                mu = ops.sum(z * m[:, None], axis=0) / count
                mus.append(mu)
                d = norm(z - mu)
                outside = valid - m
                n_out = float(((lab >= 0) & (lab != k)).sum())
                if name == "push_pull_centroid":
                    terms_a += ops.sum(m * d) / count
                    terms_r -= ops.sum(outside * d) / max(n_out, 1.0)
                elif name == "push_pull_balls":
                    terms_a += ops.sum(m * ops.relu(d - loss.r_attract)) / count
                    terms_r += ops.sum(outside * ops.relu(loss.r_repel - d)) / max(n_out, 1.0)
                else:
                    terms_a += ops.sum(m * ops.square(ops.relu(d - loss.delta_v))) / count
            n = len(ids)
            if name == "discriminative":
                dist = 0.0
                for i in range(n):
                    for j in range(n):
                        if i != j:
                            dist += ops.square(ops.relu(2 * loss.delta_d - norm(mus[i] - mus[j])))
                reg = sum(norm(mu) for mu in mus) / n
                total += loss.alpha * terms_a / n + loss.beta * dist / (n * (n - 1)) + loss.gamma * reg
            else:
                total += loss.alpha * terms_a / n + terms_r / n
        return total / labels_np.shape[0]

    return fn


def worker(args) -> None:
    import numpy as np
    from keras import ops

    labels_np = voronoi_labels(args.batch, args.size, args.n_masks)
    rng = np.random.default_rng(0)
    x = ops.convert_to_tensor(rng.normal(size=(args.batch, args.size, args.size, args.channels)).astype("float32"))
    loss = fast_loss(args.loss)
    measure_worker(
        args.impl,
        loss,
        labels_np,
        naive_loss(args.loss, labels_np, loss) if args.impl == "loop" else None,
        x,
        args.repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--masks", type=int, nargs="+", default=[5, 20, 64])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", nargs=3, metavar=("LOSS", "IMPL", "N_MASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.loss, args.impl, args.n_masks = args.worker[0], args.worker[1], int(args.worker[2])
        worker(args)
        return

    impls = ["vectorized", "loop"] + (["vectorized_jit"] if backend() in ("tensorflow", "jax") else [])
    common = [
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--channels",
        str(args.channels),
        "--repeats",
        str(args.repeats),
    ]
    print(
        f"backend={backend()} batch={args.batch} size={args.size}x{args.size} channels={args.channels} "
        "(forward + backward, median seconds; peak = extra resident MB)"
    )
    print(
        "| loss | masks | vectorized ms | loop ms | speed-up | vectorized jit ms | vectorized peak MB | loop peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.losses:
        for n in args.masks:
            res = {impl: run_worker(__file__, [*common, "--worker", name, impl, str(n)]) for impl in impls}
            jit = res.get("vectorized_jit", {}).get("seconds")
            row = {
                "backend": backend(),
                "loss": name,
                "masks": n,
                "vectorized_ms": 1e3 * res["vectorized"]["seconds"],
                "loop_ms": 1e3 * res["loop"]["seconds"],
                "speedup": res["loop"]["seconds"] / res["vectorized"]["seconds"],
                "vectorized_jit_ms": None if jit is None else 1e3 * jit,
                "vectorized_peak_mb": res["vectorized"]["peak_mb"],
                "loop_peak_mb": res["loop"]["peak_mb"],
            }
            rows.append(row)
            jit_text = "-" if jit is None else f"{1e3 * jit:.1f}"
            print(
                f"| {name} | {n} | {row['vectorized_ms']:.1f} | {row['loop_ms']:.1f} | {row['speedup']:.1f}x | "
                f"{jit_text} | {row['vectorized_peak_mb']:.0f} | {row['loop_peak_mb']:.0f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
