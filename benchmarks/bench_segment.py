"""Image in, labels out: end-to-end time per image (predict + cluster) with the default bundled
model through the numpy clustering, the in-graph segmentation model on the current backend, the
exported SavedModel and ONNX Runtime; the seed clustering alone at 512 x 512 with 50 objects
(numpy against the in-graph layer, eager and compiled); and the peak memory of segmenting one
large image with the defaults (tiles of 512) in a process of its own.

    KERAS_BACKEND=jax python benchmarks/bench_segment.py [--sizes 512 2048] [--big 8192]

Images are mosaics of 128 x 128 synthetic scenes, so that objects have the size the bundled
model was trained on whatever the image size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import backend, block  # noqa: E402


def mosaic(size: int, seed: int = 0) -> np.ndarray:
    """A `size x size` image tiled from 128 x 128 synthetic scenes (multicolor and touching),
    filled in place (no copy of the whole image)."""
    from keras_pixelembed import data

    n = -(-size // 128)
    source = data.synthetic(n * n, (128, 128), seed=seed)
    image = np.empty((size, size, 3), np.float32)
    for r in range(n):
        for c in range(n):
            block = source.load(r * n + c)[0]
            image[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128] = block[: size - r * 128, : size - c * 128]
    return image


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, first allocation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def end_to_end_rows(sizes, repeats: int, model: str | None = None) -> list[dict]:
    import onnxruntime as ort

    from keras_pixelembed.bundled import resolve_model
    from keras_pixelembed.export import export_onnx, export_saved_model
    from keras_pixelembed.metrics import adjusted_rand_index
    from keras_pixelembed.segmenter import Segmenter

    segmenter = Segmenter.load(resolve_model(model), tile_size=None)
    graph = segmenter.segmentation_model()
    folder = tempfile.mkdtemp(prefix="bench_segment_")
    sm = export_saved_model(segmenter, os.path.join(folder, "sm"))
    onnx_path = export_onnx(segmenter, os.path.join(folder, "m.onnx"))
    options = ort.SessionOptions()
    session = ort.InferenceSession(onnx_path, options)
    import tensorflow as tf

    serve = tf.saved_model.load(sm).signatures["serving_default"]
    rows = []
    for size in sizes:
        image = mosaic(size)
        batch = image[None]
        ways = {
            "numpy clustering (predict + cluster)": lambda x=image: segmenter.cluster(segmenter.predict(x)),
            f"in-graph model ({backend()})": lambda x=image: graph.predict_on_batch(x[None])["labels"][0],
            "SavedModel (TensorFlow)": lambda x=batch: serve(images=tf.constant(x))["labels"].numpy()[0],
            "ONNX Runtime": lambda x=batch: session.run(["labels"], {"images": x})[0][0],
        }
        reference = segmenter.cluster(segmenter.predict(image))
        for name, fn in ways.items():
            seconds = median_seconds(fn, repeats if size <= 1024 else 1)
            labels = np.asarray(fn())
            rows.append(
                {
                    "size": size,
                    "path": name,
                    "ms": 1e3 * seconds,
                    "instances": int(labels.max()),
                    "ari": adjusted_rand_index(labels, reference),
                }
            )
    return rows


def clustering_rows(repeats: int) -> list[dict]:
    """The seed clustering alone, 512 x 512 with 50 objects."""
    import keras
    from bench_spatial import disc_prediction
    from keras import ops

    from keras_pixelembed.cluster import spatial_embedding_instances
    from keras_pixelembed.layers.clustering import SeedClustering

    pred, _, k = disc_prediction(512, 50)
    layer = SeedClustering()
    x = ops.convert_to_tensor(pred[None])
    rows = [
        {
            "clustering": "numpy reference",
            "ms": 1e3 * median_seconds(lambda: spatial_embedding_instances(pred), repeats),
        }
    ]
    rows.append(
        {
            "clustering": f"SeedClustering eager ({backend()})",
            "ms": 1e3 * median_seconds(lambda: block(layer(x)[0]), repeats),
        }
    )
    if backend() in ("tensorflow", "jax"):
        inputs = keras.Input((None, None, 4))
        model = keras.Model(inputs, layer(inputs)[0])
        model.compile(jit_compile=True)
        model.predict_on_batch(pred[None])
        rows.append(
            {
                "clustering": f"SeedClustering compiled ({backend()})",
                "ms": 1e3 * median_seconds(lambda: model.predict_on_batch(pred[None]), repeats),
            }
        )
    for row in rows:
        row["objects"] = k
    return rows


def big_worker(size: int, model: str | None = None) -> None:
    from keras_pixelembed.bundled import resolve_model
    from keras_pixelembed.segmenter import Segmenter

    image = mosaic(size)
    segmenter = Segmenter.load(resolve_model(model))  # the defaults: tiles of 512, overlap 64
    start = time.perf_counter()
    labels = segmenter.segment(image)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"size": size, "seconds": seconds, "peak_mb": peak, "instances": int(labels.max())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", type=int, default=8192, help="side of the peak-memory run (0: skip)")
    parser.add_argument("--big-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help="a bundled name or run directory (default: the default bundled model)")
    args = parser.parse_args()
    if args.big_worker:
        big_worker(args.big_worker, args.model)
        return
    print(
        f"backend={backend()}, model {args.model or 'default bundled'}, median of {args.repeats} after a warm-up (one run above 1024), one image per call; the in-graph paths stop at 256 instances"
    )
    print("| size | path | ms per image | instances | ARI vs numpy |")
    print("|---|---|---|---|---|")
    for row in end_to_end_rows(args.sizes, args.repeats, args.model):
        print(
            f"| {row['size']} | {row['path']} | {row['ms']:.0f} | {row['instances']} | {row['ari']:.4f} |", flush=True
        )
    print("\nseed clustering alone, 512 x 512, 50 objects")
    print("| clustering | ms |")
    print("|---|---|")
    for row in clustering_rows(args.repeats):
        print(f"| {row['clustering']} | {row['ms']:.1f} |", flush=True)
    if args.big:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run(
            [sys.executable, __file__, "--big-worker", str(args.big)] + (["--model", args.model] if args.model else []),
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        big = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"\n{big['size']} x {big['size']} RGB image, defaults (tiles of 512): {big['seconds']:.0f} s, "
            f"peak resident memory {big['peak_mb'] * 2**20 / 1e9:.2f} GB ({big['peak_mb'] / 1024:.2f} GiB), "
            f"{big['instances']} instances"
        )


if __name__ == "__main__":
    main()
