"""Copy a finished run into `keras_pixelembed/saved_models/NAME` as a bundled model: re-tune the
clustering thresholds on fresh validation images, evaluate against SLIC and Felzenszwalb on
held-out multicolor images (a seed no run trains on), and write the metrics card.

    python recipes/bundle_model.py --run runs/spatial_unet_ft2 --name spatial_unet --default
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from _args import add_config_arguments  # noqa: F401  (puts the package on sys.path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run directory written by a training recipe")
    parser.add_argument("--name", required=True)
    parser.add_argument("--default", action="store_true", help="make it the model pixelembed uses without --model")
    parser.add_argument("--validation-images", type=int, default=48)
    parser.add_argument("--test-images", type=int, default=64)
    parser.add_argument("--validation-seed", type=int, default=30_000)
    parser.add_argument("--test-seed", type=int, default=40_000)
    parser.add_argument("--command", default="", help="the training command(s), for the card")
    args = parser.parse_args(argv)

    from keras_pixelembed import data
    from keras_pixelembed.bundled import BUNDLED_DIR
    from keras_pixelembed.evaluation import evaluate, format_table
    from keras_pixelembed.segmenter import Segmenter, tune_thresholds

    with open(os.path.join(args.run, "config.json")) as f:
        config = json.load(f)
    size = tuple(config["image_size"])
    segmenter = Segmenter.load(args.run)
    val = data.synthetic(args.validation_images, size, families=("multicolor",), seed=args.validation_seed)
    images, labels = zip(*(val.load_labels(i) for i in range(len(val))))
    outputs = [segmenter.predict(image) for image in images]
    thresholds, val_score = tune_thresholds(segmenter, outputs, labels)
    segmenter.thresholds.update(thresholds)
    test = data.synthetic(args.test_images, size, families=("multicolor",), seed=args.test_seed)
    result = evaluate(segmenter, test)
    result["validation_object_sbd"] = val_score
    result["test"] = {"images": args.test_images, "size": list(size), "families": ["multicolor"], "seed": args.test_seed}

    out = os.path.join(BUNDLED_DIR, args.name)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copy(os.path.join(args.run, "model.keras"), os.path.join(tmp, "model.keras"))
    shutil.copy(os.path.join(args.run, "config.json"), os.path.join(tmp, "config.json"))
    with open(os.path.join(tmp, "thresholds.json"), "w") as f:
        json.dump(segmenter.thresholds, f, indent=2)
    with open(os.path.join(tmp, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(f"# {args.name}\n\n{config['backbone']} backbone (width {config['width']}, depth {config['depth']}), "
                f"{config['head']} head, trained with `{config['loss']}` on synthetic {size[0]}x{size[1]} images.\n\n"
                f"Trained by:\n\n```\n{args.command or '(see the README of keras-pixelembed)'}\n```\n\n"
                f"Thresholds tuned on {args.validation_images} multicolor images (seed {args.validation_seed}): "
                f"`{json.dumps(segmenter.thresholds)}`.\n\nHeld-out test: {args.test_images} multicolor images, seed "
                f"{args.test_seed}, never used in training or tuning.\n\n{format_table(result)}\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if args.default:
        with open(os.path.join(BUNDLED_DIR, "DEFAULT"), "w") as f:
            f.write(args.name + "\n")
    print(format_table(result))
    return result


if __name__ == "__main__":
    main()
