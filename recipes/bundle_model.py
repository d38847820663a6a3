"""Copy a finished run into `keras_pixelembed/saved_models/NAME` as a bundled model: re-tune the
clustering thresholds on fresh validation images of the run's generator, evaluate against SLIC
and Felzenszwalb on held-out images (a seed no run trains on: the randomized generator's
families and backgrounds the run drew, or the classic generator's multicolor objects), and
write the metrics card. `--families-json` adds the leave-one-family-out tables of
`benchmarks/bench_families.py` to the card.

    python recipes/bundle_model.py --run runs/families/all --name spatial_unet --default \
        --families-json runs/families/families.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from _args import add_config_arguments  # noqa: F401  (puts the package on sys.path)

CLASSIC_DOMAIN = (
    "Trained only on `data.synthetic` images of the classic generator: flat or multicolor (sectors, spots) "
    "ellipses and blobs, touching objects, on smooth colour backgrounds, with light noise. Object scale: "
    "diameters of about 18-41 px at 128 x 128 (14-60 px with the training zoom). Outside that domain "
    "(photos, microscopy, textured objects, other object sizes) expect much lower scores: measure on your "
    "own labelled images (`pixelembed evaluate`), use `--scale` for other object sizes, and train on your "
    "data (`pixelembed train folder`)."
)

RANDOMIZED_DOMAIN = (
    'Trained only on images of the randomized synthetic generator (`data.synthetic(generator="randomized")`, '
    "{crop} crops): objects of the families {families} in six shapes (ellipses, blobs, stars, polygons, "
    "superellipses, crescents) on {backgrounds} backgrounds, with occlusion, touching neighbours of almost the "
    "same colour, illumination fields, blur, grey images, gamma and noise. Object scale: longest diameters of "
    "8-60 px (about 6-80 px with the training zoom of 0.75-1.5); it does best on objects of 16 px and more "
    "(the size table below) and often misses or merges smaller ones: enlarge such images (`--scale 2`). Out "
    "of that domain (real photographs, objects larger than about 80 px or cut by the image border, "
    "microscopy with its own statistics) expect lower scores: measure on a few of your own labelled images "
    "(`pixelembed evaluate`), use `--scale` so that objects come out at 16-60 px, and train on your data "
    "(`pixelembed train folder`)."
)


def families_section(path: str, run_path: str) -> str:
    """The card's leave-one-family-out section, from a `bench_families.py` families.json."""
    from keras_pixelembed.evaluation import leave_one_out_tables

    with open(path) as f:
        bench = json.load(f)
    size = bench["test_image_size"]
    return (
        f"Measured by `benchmarks/bench_families.py` ({bench['backend']}): one held-out test set of "
        f"{bench['test_size']} images ({size[0]}x{size[1]}) per object family and per background, each "
        "drawing only that one; object SBD. A run `without X` is the `all families` run's recipe without "
        "family (or background) X; the second table puts it, on X's test set, beside the run that saw every family. "
        + _retune_sentence(bench.get("retune"))
        + "\n\n"
        + leave_one_out_tables(bench["scores"], bench["models"], this=run_path)
    )


def _retune_sentence(retune) -> str:
    if not retune or not retune.get("images"):
        return "Each model keeps its own thresholds."
    return (
        f"Each model's thresholds were re-tuned for {retune['metric']} on {retune['images']} validation images of "
        f"what it trained on (seed {retune['seed']}), so these figures differ from the table above, whose "
        "thresholds are the card's."
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
    parser.add_argument("--families-json", help="a bench_families.py families.json: its tables go on the card")
    parser.add_argument(
        "--domain",
        default=None,
        help="the card's training domain, object scale and out-of-domain section (Markdown; "
        "default: the classic generator's text for a classic run)",
    )
    parser.add_argument("--domain-extra", default="", help="appended to the domain section (measured figures)")
    args = parser.parse_args(argv)

    from keras_pixelembed import data, run_dir
    from keras_pixelembed.bundled import BUNDLED_DIR
    from keras_pixelembed.data.synthetic import BACKGROUNDS, OBJECT_FAMILIES
    from keras_pixelembed.evaluation import evaluate, format_table, tune_and_evaluate
    from keras_pixelembed.segmenter import Segmenter

    run = run_dir.load_run(args.run)
    size = tuple(run.config["image_size"])
    drawn = data.drawn_from(run.config, held_out=True)  # the classic generator: its multicolor objects
    randomized = drawn.get("generator") == "randomized"
    families = ", ".join(drawn.get("families") or OBJECT_FAMILIES)
    backgrounds = ", ".join(drawn.get("backgrounds") or BACKGROUNDS)
    what = "multicolor images"
    if randomized:
        what = "randomized-generator images ({}; {})".format(
            ", ".join(drawn["families"] or ["every family"]), ", ".join(drawn["backgrounds"] or ["every background"])
        )
    domain = args.domain
    if domain is None:
        crop = "x".join(str(s) for s in size)
        domain = (
            RANDOMIZED_DOMAIN.format(crop=crop, families=families, backgrounds=backgrounds)
            if randomized
            else CLASSIC_DOMAIN
        )
    domain += " " + args.domain_extra if args.domain_extra else ""
    segmenter = Segmenter.from_run(run)
    val = data.synthetic(args.validation_images, size, seed=args.validation_seed, **drawn)
    test = data.synthetic(args.test_images, size, seed=args.test_seed, **drawn)
    result = tune_and_evaluate(segmenter, val, test)
    result["test"] = {"images": args.test_images, "size": list(size), "seed": args.test_seed, **drawn}
    extra = ""
    if randomized:  # and on the classic generator's multicolor objects, for comparison
        classic = evaluate(
            segmenter, data.synthetic(args.test_images, size, families=("multicolor",), seed=args.test_seed)
        )
        result["classic_multicolor"] = {m: classic[m] for m in ("ours", "slic", "felzenszwalb")}
        extra = (
            f"\n\nOn {args.test_images} classic-generator multicolor images (seed {args.test_seed}): object SBD "
            f"{classic['ours']['sbd']:.3f}, AP@0.5 {classic['ours']['ap@0.5']:.3f} (SLIC at the same count "
            f"{classic['slic']['sbd']:.3f} / {classic['slic']['ap@0.5']:.3f})."
        )
    if args.families_json:
        domain += "\n\n### Leave one family out\n\n" + families_section(args.families_json, args.run)

    out = os.path.join(BUNDLED_DIR, args.name)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copy(os.path.join(args.run, run_dir.MODEL), os.path.join(tmp, run_dir.MODEL))
    run_dir.save_config(tmp, run.config)
    run_dir.save_thresholds(tmp, segmenter.thresholds)
    run_dir.save_metrics(tmp, result)
    table = format_table(result) + extra
    run_dir.save_card(
        tmp,
        run_dir.model_card(
            args.name,
            run.config,
            segmenter.thresholds,
            table,
            command=args.command,
            tuning=f"{args.validation_images} {what} (seed {args.validation_seed})",
            test=f"{args.test_images} {what}, seed {args.test_seed}, never used in training or tuning.",
            domain=domain,
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
