"""Time of each clustering at 256 and 512 pixels square, 16 channels (numpy, one image).

Embeddings: 40 rectangular objects with their own embedding plus noise, on a background.

    python benchmarks/bench_cluster.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def scene(size: int, channels: int = 16, n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.ones((size, size), np.int32)
    for k in range(2, n + 2):
        r, c = rng.integers(0, size - size // 8, 2)
        labels[r : r + size // 10, c : c + size // 10] = k
    centres = rng.normal(size=(n + 2, channels)) * 2
    z = centres[labels] + rng.normal(0, 0.05, (size, size, channels))
    return z.astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from skimage.segmentation import slic

    from keras_pixelembed.cluster import embedding_slic, greedy_ball, mean_shift
    from keras_pixelembed.metrics import asa

    methods = {
        "greedy_ball(radius=0.5)": lambda z: greedy_ball(z, 0.5),
        "mean_shift(bandwidth=0.5)": lambda z: mean_shift(z, 0.5),
        "embedding_slic(n_segments=200)": lambda z: embedding_slic(z, 200, 10.0),
        "skimage slic(n_segments=200), same 16 channels": lambda z: slic(
            z, 200, compactness=10.0, channel_axis=-1, convert2lab=False, start_label=1
        ),
    }
    print(f"{os.cpu_count()} CPUs, 16 channels, median of {args.repeats}")
    print("| method | 256 x 256 ms | 512 x 512 ms | ASA at 512 |")
    print("|---|---|---|---|")
    for name, fn in methods.items():
        row = []
        for size in (256, 512):
            z, labels = scene(size)
            fn(z)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = fn(z)
                times.append(time.perf_counter() - start)
            row.append(1e3 * float(np.median(times)))
        print(f"| {name} | {row[0]:.0f} | {row[1]:.0f} | {asa(out, labels):.3f} |", flush=True)


if __name__ == "__main__":
    main()
