"""`python -m keras_pixelembed.export saved_model|onnx RUN_DIR OUT`: the TensorFlow side of an
export started under another backend (`export_saved_model` / `export_onnx` call it)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_pixelembed.export", description=__doc__)
    parser.add_argument("format", choices=("saved_model", "onnx"))
    parser.add_argument("run", help="run directory or .keras file")
    parser.add_argument("out")
    parser.add_argument("--max-instances", type=int, default=256)
    parser.add_argument("--image-size", type=int, nargs="+", help="(h, w), or (d, h, w) for volumes")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation in the graph")
    args = parser.parse_args(argv)

    import keras

    if keras.backend.backend() != "tensorflow":
        print("the export subprocess needs KERAS_BACKEND=tensorflow", file=sys.stderr)
        return 2
    from keras_pixelembed.export.exporters import export_onnx, export_saved_model
    from keras_pixelembed.segmenter import Segmenter

    segmenter = Segmenter.load(args.run, tta=args.tta)
    if args.format == "saved_model":
        export_saved_model(segmenter, args.out, max_instances=args.max_instances)
    else:
        size = tuple(args.image_size) if args.image_size else None
        export_onnx(segmenter, args.out, image_size=size, opset=args.opset, max_instances=args.max_instances)
    return 0


if __name__ == "__main__":
    sys.exit(main())
