"""Where the time of the ONNX export goes: the whole segmentation graph (model + seed clustering)
against the same graph without clustering, in ONNX Runtime, at one image size, side by side in one
run; then ONNX Runtime's profile of each, summed by operator type.

    KERAS_BACKEND=tensorflow python benchmarks/bench_onnx.py [--size 512] [--repeats 5] \
        [--models spatial_unet spatial_unet_lite] [--no-profile]

Images are mosaics of 128 x 128 synthetic scenes (`bench_segment.mosaic`); models are bundled
names or run directories (default: the default bundled model), timed in turns in one run;
default session options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_segment import mosaic  # noqa: E402


def model_only_onnx(segmenter, path: str) -> str:
    """The segmentation graph without clustering, converted as the export converts the whole one."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    graph = segmenter.segmentation_model(cluster=False)
    graph.predict_on_batch(np.zeros((1, 8, 8, 3), np.float32))

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32, name="images")])
    def serve(images):
        return graph(images, training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17)
    onnx.save_model(proto, path)
    return path


def profile(path: str, x: np.ndarray, runs: int = 3) -> list[tuple[float, str, int]]:
    """(ms per run, operator type, nodes run per run), largest first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="bench_onnx_"), "profile")
    session = ort.InferenceSession(path, options)
    for _ in range(runs):
        session.run(None, {"images": x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    ms, count = defaultdict(float), defaultdict(int)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            ms[event["args"]["op_name"]] += event["dur"] / 1000 / runs
            count[event["args"]["op_name"]] += 1
    return sorted(((v, k, count[k] // runs) for k, v in ms.items()), reverse=True)


def main() -> None:
    import onnxruntime as ort

    from keras_pixelembed.export import export_onnx
    from keras_pixelembed.segmenter import Segmenter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=[None], help="bundled names or run directories")
    parser.add_argument("--no-profile", action="store_true", help="skip ONNX Runtime's profiles")
    args = parser.parse_args()
    from keras_pixelembed.bundled import resolve_model

    folder = tempfile.mkdtemp(prefix="bench_onnx_")
    paths = {}
    for i, name in enumerate(args.models):
        segmenter = Segmenter.load(resolve_model(name), tile_size=None)
        label = os.path.basename(resolve_model(name).rstrip("/"))
        paths[f"{label}: whole export (model + clustering)"] = export_onnx(
            segmenter, os.path.join(folder, f"w{i}.onnx")
        )
        paths[f"{label}: model alone"] = model_only_onnx(segmenter, os.path.join(folder, f"m{i}.onnx"))
    x = mosaic(args.size)[None]
    print(
        f"ONNX Runtime {ort.__version__}, {args.size} x {args.size}, median of {args.repeats} after a warm-up, in turns"
    )
    sessions = {name: ort.InferenceSession(path) for name, path in paths.items()}
    for session in sessions.values():
        session.run(None, {"images": x})
    times = {name: [] for name in sessions}
    for _ in range(args.repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"images": x})
            times[name].append(time.perf_counter() - start)
    print("| graph | ms per image |")
    print("|---|---|")
    for name in sessions:
        print(f"| {name} | {1e3 * np.median(times[name]):.0f} |", flush=True)
    if args.no_profile:
        return
    for name, path in paths.items():
        print(f"\nprofile of {name} (ms per run, operator, nodes run), top 8:")
        for ms, op, nodes in profile(path, x)[:8]:
            print(f"  {ms:7.1f}  {op:<16} {nodes}")


if __name__ == "__main__":
    main()
