"""Where the time of the ONNX export goes: the whole segmentation graph (model + seed clustering)
against the same graph without clustering, in ONNX Runtime, at one image size, side by side in one
run; then ONNX Runtime's profile of each, summed by operator type.

    KERAS_BACKEND=tensorflow python benchmarks/bench_onnx.py [--size 512] [--repeats 5] [--block 4] \
        [--models spatial_unet spatial_unet_lite] [--fixed] [--no-profile]

Images are mosaics of 128 x 128 synthetic scenes (`bench_segment.mosaic`); models are bundled
names or run directories (default: the default bundled model). Each graph runs in a process of
its own with one session (as a server holds one; default session options), timed in blocks of
`--block` consecutive runs, the blocks of all graphs in turns (`--repeats` rounds); the first
run of each block is not counted (caches cold after the other processes' turns). Sessions in
one process disturb each other: after a run ONNX Runtime's worker threads spin for a while, so
on a 2-core machine the next session's run shares the cores with them (measured here: the lite
model alone 89 ms in a process of its own, 136-140 ms in turns with two other sessions).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import tempfile
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


WORKER = """
import sys, time
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1])
x = np.load(sys.argv[2])
session.run(None, {"images": x})
print("ready", flush=True)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        start = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    print(" ".join(repr(t) for t in times), flush=True)
"""


WORKER_DEADLINE = 600  # seconds a worker may take to load its graph or to answer one block


def time_in_processes(paths: dict, x: np.ndarray, rounds: int, block: int) -> dict:
    """Seconds per run of each graph, each in a process of its own (see the module's docstring)."""
    import subprocess

    image = os.path.join(tempfile.mkdtemp(prefix="bench_onnx_"), "x.npy")
    np.save(image, x)
    workers = {
        name: subprocess.Popen(
            [sys.executable, "-c", WORKER, path, image], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for name, path in paths.items()
    }

    def reply(name, worker) -> str:
        """The worker's next line, or an error after WORKER_DEADLINE seconds (a hung worker)."""
        ready, _, _ = select.select([worker.stdout], [], [], WORKER_DEADLINE)
        if not ready:
            raise RuntimeError(f"the ONNX Runtime worker of {name!r} gave no answer in {WORKER_DEADLINE} s")
        return worker.stdout.readline()

    try:
        for name, worker in workers.items():
            if reply(name, worker).strip() != "ready":
                raise RuntimeError(f"the ONNX Runtime worker of {name!r} failed (exit code {worker.poll()})")
        times = {name: [] for name in workers}
        for _ in range(rounds):
            for name, worker in workers.items():
                worker.stdin.write(f"{block}\n")
                worker.stdin.flush()
                answer = reply(name, worker).split()
                if len(answer) != block:
                    raise RuntimeError(f"the ONNX Runtime worker of {name!r} stopped (exit code {worker.poll()})")
                times[name] += [float(t) for t in answer][1:]
        return times
    finally:
        for worker in workers.values():
            try:
                worker.stdin.close()
                worker.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                worker.kill()
                worker.wait()


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
    parser.add_argument("--repeats", type=int, default=5, help="rounds of blocks")
    parser.add_argument("--block", type=int, default=4, help="consecutive runs per block (the first not counted)")
    parser.add_argument("--models", nargs="+", default=[None], help="bundled names or run directories")
    parser.add_argument("--no-profile", action="store_true", help="skip ONNX Runtime's profiles")
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="NAME=FILE",
        help="more ONNX files timed beside the exports (e.g. an export of another commit)",
    )
    parser.add_argument(
        "--fixed", action="store_true", help="also an export whose thresholds no pixel reaches (no clustering step)"
    )
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
        if args.fixed:
            # thresholds no pixel reaches: the work around the clustering loop, no step
            segmenter.thresholds.update(fg_threshold=1.0, seed_threshold=1.0)
            paths[f"{label}: whole export, no loop step"] = export_onnx(segmenter, os.path.join(folder, f"z{i}.onnx"))
    for extra in args.extra:
        name, sep, path = extra.partition("=")
        if not sep or not os.path.isfile(path):
            parser.error(f"--extra takes NAME=FILE with an existing ONNX file; received {extra!r}")
        paths[name] = path
    x = mosaic(args.size)[None]
    print(
        f"ONNX Runtime {ort.__version__}, {args.size} x {args.size}, each graph in a process of its own, "
        f"{args.repeats} rounds of blocks of {args.block} runs (the first of each not counted)"
    )
    times = time_in_processes(paths, x, args.repeats, args.block)
    print("| graph | median ms per image | 25th percentile ms |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1e3 * np.median(t):.0f} | {1e3 * np.percentile(t, 25):.0f} |", flush=True)
    if args.no_profile:
        return
    for name, path in paths.items():
        print(f"\nprofile of {name} (ms per run, operator, nodes run), top 8:")
        for ms, op, nodes in profile(path, x)[:8]:
            print(f"  {ms:7.1f}  {op:<16} {nodes}")


if __name__ == "__main__":
    main()
