"""Copy a finished run into `keras_pixelembed/saved_models/NAME` as a bundled model: re-tune the
clustering thresholds on fresh validation images, evaluate against SLIC and Felzenszwalb on
held-out multicolor images (a seed no run trains on), and write the metrics card.

    python recipes/bundle_model.py --run runs/spatial_unet_ft2 --name spatial_unet --default
"""

from __future__ import annotations

import argparse
import os
import shutil

from _args import add_config_arguments  # noqa: F401  (puts the package on sys.path)

SYNTHETIC_DOMAIN = (
    "Trained only on `data.synthetic` images: flat or multicolor (sectors, spots) ellipses and blobs, "
    "touching objects, on smooth colour backgrounds, with light noise. Object scale: diameters of "
    "about 18-41 px at 128 x 128 (14-60 px with the training zoom). Outside that domain (photos, "
    "microscopy, textured objects, other object sizes) expect much lower scores: measure on your own "
    "labelled images (`pixelembed evaluate`), use `--scale` for other object sizes, and train on your "
    "data (`pixelembed train folder`)."
)


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
    parser.add_argument(
        "--domain",
        default=SYNTHETIC_DOMAIN,
        help="the card's training domain, object scale and out-of-domain section (Markdown)",
    )
    args = parser.parse_args(argv)

    from keras_pixelembed import data, run_dir
    from keras_pixelembed.bundled import BUNDLED_DIR
    from keras_pixelembed.evaluation import format_table, tune_and_evaluate
    from keras_pixelembed.segmenter import Segmenter

    run = run_dir.load_run(args.run)
    size = tuple(run.config["image_size"])
    segmenter = Segmenter.from_run(run)
    val = data.synthetic(args.validation_images, size, families=("multicolor",), seed=args.validation_seed)
    test = data.synthetic(args.test_images, size, families=("multicolor",), seed=args.test_seed)
    result = tune_and_evaluate(segmenter, val, test)
    result["test"] = {
        "images": args.test_images,
        "size": list(size),
        "families": ["multicolor"],
        "seed": args.test_seed,
    }

    out = os.path.join(BUNDLED_DIR, args.name)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copy(os.path.join(args.run, run_dir.MODEL), os.path.join(tmp, run_dir.MODEL))
    run_dir.save_config(tmp, run.config)
    run_dir.save_thresholds(tmp, segmenter.thresholds)
    run_dir.save_metrics(tmp, result)
    table = format_table(result)
    run_dir.save_card(
        tmp,
        run_dir.model_card(
            args.name,
            run.config,
            segmenter.thresholds,
            table,
            command=args.command,
            tuning=f"{args.validation_images} multicolor images (seed {args.validation_seed})",
            test=f"{args.test_images} multicolor images, seed {args.test_seed}, never used in training or tuning.",
            domain=args.domain,
        ),
    )
    run_dir.publish(tmp, out)
    if args.default:
        with open(os.path.join(BUNDLED_DIR, "DEFAULT"), "w") as f:
            f.write(args.name + "\n")
    print(table)
    return result


if __name__ == "__main__":
    main()
