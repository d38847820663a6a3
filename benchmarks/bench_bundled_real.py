"""The bundled models out of their domain: each bundled model (trained only on synthetic
images) on the held-out right halves of the HeLa nuclei sample
(`keras_pixelembed.data.samples.hela_nuclei("test")`), percentile-normalized, at several input
scales, against SLIC and Felzenszwalb at the same count. What a user who points a bundled model
at fluorescence nuclei gets; the figures of the model cards' "out of domain" lines.

    KERAS_BACKEND=torch python benchmarks/bench_bundled_real.py --frames 6

Prints one table per model and scale, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=6, help="right halves evaluated (of 20)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5])
    args = parser.parse_args(argv)

    import keras

    from keras_pixelembed import data
    from keras_pixelembed.bundled import BUNDLED_DIR, bundled_models
    from keras_pixelembed.data.samples import hela_nuclei
    from keras_pixelembed.evaluation import evaluate, format_table
    from keras_pixelembed.segmenter import Segmenter

    source = data.from_arrays(*hela_nuclei("test", frames=range(args.frames)))
    summary = {"backend": keras.backend.backend(), "images": len(source), "results": {}}
    for name in bundled_models():
        for scale in args.scales:
            segmenter = Segmenter.load(os.path.join(BUNDLED_DIR, name), percentiles=(1.0, 99.8), scale=scale)
            start = time.time()
            result = evaluate(segmenter, source)
            print(f"\n{name}, scale {scale}, {len(source)} HeLa right halves ({time.time() - start:.0f} s):")
            print(format_table(result))
            summary["results"][f"{name}@{scale}"] = {
                method: {k: round(result[method][k], 3) for k in ("sbd", "ap@0.5", "ap@0.75", "segments")}
                for method in ("ours", "slic", "felzenszwalb")
            }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
