"""SpatialEmbeddingLoss forward + backward on three inputs (random head outputs on Voronoi label
maps at 256^2 and 512^2, and the default bundled model's outputs on multicolor scenes: the
trained regime), side by side in one run with SpatialEmbeddings' own loss (davyneven/
SpatialEmbeddings, `src/criterions/my_loss.py`, run from a local copy named by the environment
variable SPATIALEMBEDDINGS_SRC; PyTorch only; skipped with a message otherwise) and, on
request, a naive per-instance loop in the same backend (`--impls ... loop`); the training
throughput of the default spatial U-Net (`fit`, 128^2, batch 8, jit_compile off and on); and
the seed clustering at 512 x 512 with 50 objects against the obvious loop. PyTorch runs with
one thread (`--threads`, 0 for all).

    SPATIALEMBEDDINGS_SRC=/path/SpatialEmbeddings/src KERAS_BACKEND=torch python benchmarks/bench_spatial.py
    KERAS_BACKEND=jax python benchmarks/bench_spatial.py --inputs trained-256 random-256
"""

from __future__ import annotations

import argparse
import json
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


def random_input(batch: int, size: int, n_masks: int):
    """Random head outputs (small offsets, bandwidth near the head's start) and Voronoi labels."""
    labels = voronoi_labels(batch, size, n_masks)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 4)).astype("float32")
    x[..., :2] *= 0.01
    x[..., 2] = 0.5 + 0.1 * x[..., 2]
    return x, labels


def trained_input(batch: int, size: int, model: str | None = None):
    """A trained spatial model's outputs on `batch` multicolor synthetic scenes (the regime of a
    loss late in training: offsets point at centers, bandwidths fit the objects). `model`: a
    run directory or a bundled model's name (`Segmenter.load`); None: the default bundled model."""
    from keras_pixelembed import data
    from keras_pixelembed.bundled import default_model_path
    from keras_pixelembed.segmenter import Segmenter

    source = data.synthetic(batch, (size, size), families=("multicolor",), seed=0)
    images, labels = [], []
    for i in range(batch):
        image, masks = source.load(i)[:2]
        images.append(image)
        labels.append(np.einsum("mhw,m->hw", masks.astype(np.int32), np.arange(1, len(masks) + 1)))
    segmenter = Segmenter.load(model or default_model_path())
    x = np.asarray(segmenter.model.predict(np.stack(images), verbose=0), np.float32)
    return x, np.stack(labels).astype(np.float32)


def pixels_that_matter(x, labels_np, loss) -> float:
    """Per mask, the mean number of pixels that can change the loss's Lovasz term: the mask's
    pixels and the others whose error (their phi) is at least the smallest error of a mask
    pixel (1 - its largest phi); the rest rank after every mask pixel, where the Jaccard step is
    0. From the formula, in numpy. The reference sorts every pixel for every mask whatever this
    number; ours works on these (and a margin), so it says how much work an input's outputs
    leave to our loss."""
    from keras_pixelembed.ops.spatial import bandwidth, decode_spatial

    parts = decode_spatial(x, loss.pixel_size)
    emb, sigma = np.asarray(parts.embeddings), np.asarray(parts.sigma)
    counts = []
    for b in range(len(labels_np)):
        for k in np.unique(labels_np[b][labels_np[b] > 0]):
            m = labels_np[b] == k
            center, s = emb[b][m].mean(axis=0), sigma[b][m].mean(axis=0)
            phi = np.exp(-np.sum(np.asarray(bandwidth(s, loss.sigma_scale)) * (emb[b] - center) ** 2, axis=-1))
            counts.append(np.count_nonzero(m | (phi >= 1.0 - phi[m].max())))
    return float(np.mean(counts))


def reference_loss(labels_np, src: str):
    """SpatialEmbeddings' own loss (davyneven/SpatialEmbeddings, `src/criterions/my_loss.py`,
    CC BY-NC, imported from a local copy), with our defaults: to_center=False, n_sigma=1,
    foreground_weight=10. It takes channels first and the instance ids and the class labels."""
    import torch

    sys.path.insert(0, src)
    from criterions import my_loss

    # Written for PyTorch 0.4, where `eq` gave uint8 masks; PyTorch 2 gives bool, which its
    # Lovasz routine cannot subtract from 1. Same work, the masks cast to uint8 on the way in.
    hinge = my_loss.lovasz_hinge
    my_loss.lovasz_hinge = lambda logits, labels, **kw: hinge(logits, labels.to(torch.uint8), **kw)
    SpatialEmbLoss = my_loss.SpatialEmbLoss

    module = SpatialEmbLoss(to_center=False, n_sigma=1, foreground_weight=10)
    instances = torch.as_tensor(labels_np.astype(np.int64))
    classes = (instances > 0).to(torch.uint8)

    def fn(y_pred):
        return module(y_pred.permute(0, 3, 1, 2), instances, classes)

    return fn


def loss_worker(args) -> None:
    from keras import ops

    from keras_pixelembed import SpatialEmbeddingLoss

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.input == "trained":
        x, labels_np = trained_input(args.batch, args.size, args.trained_model)
    else:
        x, labels_np = random_input(args.batch, args.size, args.n_masks)
    loss = SpatialEmbeddingLoss(max_instances=64)
    outputs = x  # numpy

    def counts():  # after the measurement, in this process: the outputs are here already
        return {"pixels_that_matter": pixels_that_matter(outputs, labels_np, loss)}

    x = ops.convert_to_tensor(x)
    fn = None
    if args.impl == "loop":
        fn = naive_loss(labels_np, loss)
    elif args.impl == "reference":
        fn = reference_loss(labels_np, os.environ["SPATIALEMBEDDINGS_SRC"])
    measure_worker(args.impl, loss, labels_np, fn, x, args.repeats, counts if args.input == "trained" else None)


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


def training_worker(args) -> None:
    """Images per second of `fit` with the default spatial U-Net at 128 x 128, batch 8."""
    import keras

    from keras_pixelembed import SpatialEmbeddingLoss, data
    from keras_pixelembed.models import build_pixel_embedder

    if args.threads and backend() == "torch":
        import torch

        torch.set_num_threads(args.threads)
    source = data.synthetic(64, (128, 128), seed=0)
    images, labels = [], []
    for i in range(64):
        image, masks = source.load(i)[:2]
        images.append(image)
        labels.append(np.einsum("mhw,m->hw", masks.astype(np.int32), np.arange(1, len(masks) + 1)))
    x, y = np.stack(images), np.stack(labels).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_pixel_embedder(head="spatial")
    model.compile(keras.optimizers.Adam(1e-3), SpatialEmbeddingLoss(), jit_compile=args.impl == "jit")
    model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)  # compile, warm up
    start = time.perf_counter()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    print(json.dumps({"images_per_s": len(x) / (time.perf_counter() - start)}))


LOSS_INPUTS = {  # name: (input, batch, size, masks)
    "random-256": ("random", 4, 256, 20),
    "random-512": ("random", 2, 512, 50),
    "trained-256": ("trained", 4, 256, 0),
}


def loss_rows(
    inputs: list[str], impls: list[str], threads: int, repeats: int, trained_model: str | None = None
) -> None:
    print(
        f"backend={backend()} threads={threads or 'all'} n_sigma=1 forward + backward, median of {repeats} "
        "seconds after a warm-up; peak = extra resident MB of the measuring process"
    )
    print(
        f"| input | batch | size | masks | {' | '.join(f'{i} ms' for i in impls)} | {' | '.join(f'{i} peak MB' for i in impls)} |"
    )
    print("|---|---|---|---|" + "---|" * (2 * len(impls)))
    for name in inputs:
        kind, batch, size, masks = LOSS_INPUTS[name]
        common = ["--batch", str(batch), "--size", str(size), "--repeats", str(repeats), "--input", kind]
        common += ["--threads", str(threads)] if threads else []
        common += ["--trained-model", trained_model] if trained_model else []
        res = {impl: run_worker(__file__, [*common, "--worker", impl, str(masks)]) for impl in impls}
        shown = "multicolor" if kind == "trained" else str(masks)
        times = " | ".join(f"{1e3 * res[i]['seconds']:.1f}" for i in impls)
        peaks = " | ".join(f"{res[i]['peak_mb']:.0f}" for i in impls)
        print(f"| {kind} | {batch} | {size} | {shown} | {times} | {peaks} |", flush=True)
        matter = [r["pixels_that_matter"] for r in res.values() if "pixels_that_matter" in r]
        if matter:  # the trained input's (each worker counts it on the same outputs)
            print(f"  pixels that can matter per mask: {matter[0]:.0f} of {size * size}")
        if "reference" in res:
            for impl in impls:
                if impl != "reference":
                    print(f"  {impl}: {res['reference']['seconds'] / res[impl]['seconds']:.2f}x the reference's speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", default=list(LOSS_INPUTS), choices=list(LOSS_INPUTS))
    parser.add_argument("--impls", nargs="+", help="vectorized, vectorized_jit, loop, reference")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--trained-model",
        help="the model whose outputs make the trained input (a run directory or a bundled model's name; "
        "default: the default bundled model)",
    )
    parser.add_argument("--skip-loss", action="store_true")
    parser.add_argument("--skip-clustering", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--train-worker", choices=["jit", "eager"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--input", default="random", help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "N_MASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.impl, args.n_masks = args.worker[0], int(args.worker[1])
        loss_worker(args)
        return
    if args.train_worker:
        args.impl = args.train_worker
        training_worker(args)
        return
    if not args.skip_loss:
        # The naive keras.ops loop ("loop") is there to ask for: the reference is the comparison.
        impls = args.impls or ["vectorized"] + (["vectorized_jit"] if backend() in ("tensorflow", "jax") else [])
        if "reference" in impls and (backend() != "torch" or not os.environ.get("SPATIALEMBEDDINGS_SRC")):
            print("reference skipped: it needs KERAS_BACKEND=torch and SPATIALEMBEDDINGS_SRC=<SpatialEmbeddings/src>")
            impls = [i for i in impls if i != "reference"]
        elif args.impls is None and backend() == "torch" and os.environ.get("SPATIALEMBEDDINGS_SRC"):
            impls.append("reference")
        elif args.impls is None:
            print("reference skipped: set SPATIALEMBEDDINGS_SRC to a local copy of SpatialEmbeddings' src/ (torch)")
        loss_rows(args.inputs, impls, args.threads if backend() == "torch" else 0, args.repeats, args.trained_model)
    if not args.skip_training:
        threads = args.threads if backend() == "torch" else 0
        print(f"\ntraining throughput: fit, default spatial U-Net, 128 x 128, batch 8, threads={threads or 'all'}")
        print("| backend | jit_compile | images/s |")
        print("|---|---|---|")
        for mode in ("eager", "jit"):
            res = run_worker(__file__, ["--train-worker", mode, "--threads", str(threads)])
            print(f"| {backend()} | {mode == 'jit'} | {res['images_per_s']:.1f} |", flush=True)
    if args.skip_clustering:
        return
    print("\nseed clustering, one image (numpy, median of", args.repeats, "runs)")
    print("| clustering | size | objects | ms | found | SBD vs truth |")
    print("|---|---|---|---|---|---|")
    for row in clustering_rows(512, 50, args.repeats):
        print(
            f"| {row['clustering']} | {row['size']} | {row['objects']} | {row['ms']:.1f} | {row['found']} | {row['sbd']:.3f} |"
        )


if __name__ == "__main__":
    main()
