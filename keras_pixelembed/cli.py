"""The `pixelembed` command line: segment, evaluate, train, export, demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from keras_pixelembed.distribute import CHOICES as DISTRIBUTE_CHOICES
from keras_pixelembed.training import LOSSES, TrainConfig

DEMO_SEED = 424242  # never used by a training recipe (they use seed, seed + 10000, seed + 20000)


class CommandError(Exception):
    """An error reported as one line, without a traceback."""


def _segmenter(path, **kwargs):
    """The model at `path` (a run directory, a .keras file, a bundled name, or None for the
    default bundled model); `kwargs` set Segmenter fields such as `tile_size`."""
    from keras_pixelembed.bundled import resolve_model
    from keras_pixelembed.segmenter import Segmenter

    return Segmenter.load(resolve_model(path), **kwargs)


def expand_inputs(inputs) -> list[str]:
    """Image files from files, folders (their images, sorted) and glob patterns, in the given
    order, each once; a pattern or path that gives nothing is an error naming it."""
    import glob

    from keras_pixelembed.data.io import IMAGE_EXTENSIONS, list_images

    found = []
    for item in inputs:
        if os.path.isdir(item):
            paths = list_images(item)
            if not paths:
                raise CommandError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}")
        elif os.path.isfile(item):
            paths = [item]
        elif glob.has_magic(item):
            paths = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not paths:
                raise CommandError(f"no file matches {item}")
        else:
            raise CommandError(f"no such image: {item}")
        found.extend(p for p in paths if os.path.abspath(p) not in {os.path.abspath(f) for f in found})
    return found


def output_names(paths) -> list[str]:
    """One distinct output name per input: the file stem, or stem_ext (photo.png and photo.jpg
    give photo_png and photo_jpg), then the parent folder, then a number, so that no two inputs
    write the same file."""
    from keras_pixelembed.data.io import stem

    def with_ext(p):
        return f"{stem(p)}_{os.path.splitext(p)[1].lstrip('.').lower()}"

    def with_folder(p):
        return f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}_{with_ext(p)}"

    names = [stem(p) for p in paths]
    for rename in (with_ext, with_folder):
        counts = {n: names.count(n) for n in names}
        names = [rename(p) if counts[n] > 1 else n for p, n in zip(paths, names)]
    seen: dict = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return unique


def _inference_fields(args) -> dict:
    """Segmenter fields from `--tta` and `--percentiles` (the run's own percentiles unless given)."""
    fields = {"tta": bool(args.tta), "scale": getattr(args, "scale", 1.0)}
    if args.percentiles is not None:
        fields["percentiles"] = tuple(args.percentiles)
    return fields


def add_inference_arguments(parser: argparse.ArgumentParser, scale: bool = True) -> None:
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the model over the 8 flips and 90-degree rotations (8x the time; spatial heads)",
    )
    parser.add_argument(
        "--percentiles",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="percentile-normalize each image (e.g. 1 99.8) instead of the run's own setting",
    )
    if not scale:  # the exported graph takes the image as it is
        return
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="resize each image by this factor before the model, labels back to the image's size: "
        "(object size the model was trained on) / (your object size); a bundled model's card gives the first",
    )


def _segment(args) -> int:
    import time

    import numpy as np
    from PIL import Image

    from keras_pixelembed.data.io import read_image
    from keras_pixelembed.viz import overlay_segments

    paths = expand_inputs(args.images)
    names = output_names(paths)
    segmenter = _segmenter(
        args.model, tile_size=args.tile_size or None, tile_overlap=args.tile_overlap, **_inference_fields(args)
    )
    os.makedirs(args.out, exist_ok=True)
    if segmenter.ndim == 3:
        return _segment_volumes(segmenter, paths, names, args.out)
    for i, (path, name) in enumerate(zip(paths, names), 1):
        start = time.time()
        image = read_image(path)
        labels = segmenter.segment(image)
        if labels.max() > 65535:
            raise CommandError(f"{path}: {labels.max()} segments do not fit a uint16 label image")
        target = os.path.join(args.out, f"{name}.png")
        Image.fromarray(labels.astype(np.uint16)).save(target)
        background = 0 if segmenter.head == "spatial" else None
        overlay = (overlay_segments(image, labels, background=background) * 255).astype(np.uint8)
        Image.fromarray(overlay).save(os.path.join(args.out, f"{name}_overlay.png"))
        print(
            f"[{i}/{len(paths)}] {path}: {len(np.unique(labels[labels > 0]))} segments in "
            f"{time.time() - start:.2f} s -> {target}",
            flush=True,
        )
    return 0


def _segment_volumes(segmenter, paths, names, out: str) -> int:
    """`segment` with a volume model: each TIFF stack to `out/<name>.tif`, uint16 labels (z, y, x)."""
    import time

    import numpy as np

    from keras_pixelembed.data.volumes import load_volume_pair, save_label_volume

    for i, (path, name) in enumerate(zip(paths, names), 1):
        start = time.time()
        volume, _ = load_volume_pair(path)
        if volume.shape[-1] != segmenter.channels:
            raise CommandError(f"{path}: a volume of {volume.shape[-1]} channels; the model takes {segmenter.channels}")
        labels = segmenter.segment(volume)
        if labels.max() > 65535:
            raise CommandError(f"{path}: {labels.max()} segments do not fit a uint16 label volume")
        target = save_label_volume(os.path.join(out, f"{name}.tif"), labels.astype(np.uint16))
        print(
            f"[{i}/{len(paths)}] {path}: {len(np.unique(labels[labels > 0]))} segments in a "
            f"{'x'.join(map(str, labels.shape))} volume in {time.time() - start:.2f} s -> {target}",
            flush=True,
        )
    return 0


def _evaluate(args) -> int:
    from keras_pixelembed import data
    from keras_pixelembed.evaluation import evaluate, print_table, write_json

    segmenter = _segmenter(args.model, **_inference_fields(args))
    volumes = segmenter.ndim == 3
    if args.synthetic and volumes:
        shape = (max(8, args.size // 4), args.size, args.size)
        source = data.SyntheticVolumes(args.synthetic, shape, seed=args.seed, z_spacing=segmenter.z_spacing)
    elif args.synthetic:
        # without --families: what a run of that generator is tested on (classic: multicolor objects)
        drawn = dict(generator=args.generator, families=args.families, backgrounds=args.backgrounds)
        source = data.synthetic(
            args.synthetic, (args.size, args.size), seed=args.seed, **data.drawn_from(drawn, not args.families)
        )
    elif volumes:
        if not args.images or not args.labels:
            raise CommandError("a volume model takes --images DIR with --labels DIR of TIFF stacks (or --synthetic N)")
        source = data.volumes_from_folder(args.images, args.labels)
    else:
        if not args.images or not (args.labels or args.masks):
            raise CommandError("give --images DIR with --labels DIR or --masks DIR (or --synthetic N)")
        source = data.from_folder(args.images, labels_dir=args.labels, masks_dir=args.masks)
    if volumes and args.curves:
        raise CommandError("--curves (superpixel curves) are for images")
    result = evaluate(segmenter, source, max_images=args.max_images)
    print_table(result)
    if args.json:
        write_json(result, args.json)
    if args.curves:
        _curves(segmenter, source, args.curves, args.max_images or 8)
    return 0


def _curves(segmenter, source, path, n):
    from keras_pixelembed.evaluation import superpixel_curves
    from keras_pixelembed.viz import plot_curves

    images, gts = zip(*(source.load_labels(i) for i in range(min(n, len(source)))))
    embs = [segmenter.embeddings(segmenter.predict(image)) for image in images]
    plot_curves(superpixel_curves(embs, images, gts), path)


def _export(args) -> int:
    import keras

    from keras_pixelembed.export import export_onnx, export_saved_model
    from keras_pixelembed.export.exporters import metadata

    segmenter = _segmenter(args.model, **_inference_fields(args))
    if args.format == "saved_model":
        export_saved_model(segmenter, args.out, max_instances=args.max_instances)
    else:
        size = tuple(args.image_size) if args.image_size else None
        export_onnx(segmenter, args.out, image_size=size, max_instances=args.max_instances)
    via = (
        ""
        if keras.backend.backend() == "tensorflow"
        else f" (through TensorFlow from the {keras.backend.backend()} backend)"
    )
    print(
        f"exported {args.format} to {args.out}{via}{' with test-time augmentation' if segmenter.tta else ''}: "
        f"input {metadata(segmenter, args.max_instances)['input']}; outputs labels, output, dropped_seeds"
    )
    return 0


def _sample_data(args) -> int:
    from keras_pixelembed.data.samples import write_sample

    counts = write_sample(args.name, args.out)
    print(
        f"wrote {args.out}: " + ", ".join(f"{split}/ {n} images with labels" for split, n in counts.items()),
        flush=True,
    )
    return 0


def _train(args) -> int:
    train_from_args(args.source, args)
    return 0


SYNTHETIC_ONLY = ("validation_images", "test_images", "generator", "families", "backgrounds")  # generated sets


def add_config_arguments(parser: argparse.ArgumentParser, kind: str = "synthetic", **defaults) -> None:
    """One flag per `TrainConfig` field (`--out-dir`, `--loss`, ...), with `defaults` overriding
    the dataclass defaults; a folder or COCO run (`kind`) has no `--validation-images` /
    `--test-images` counts (its `--test-images` names a held-out folder). A synthetic run draws
    from the randomized generator unless `--generator classic`."""
    if kind == "synthetic":
        defaults.setdefault("generator", "randomized")
    for f in dataclasses.fields(TrainConfig):
        if kind in ("folder", "coco") and f.name in SYNTHETIC_ONLY:
            continue
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        flag = "--" + f.name.replace("_", "-")
        if f.name == "loss":
            parser.add_argument(flag, default=default, choices=LOSSES)
        elif f.name == "distribute":
            parser.add_argument(flag, default=default, choices=DISTRIBUTE_CHOICES)
        elif f.name == "tune_metric":
            from keras_pixelembed.evaluation import TUNE_METRICS

            parser.add_argument(
                flag,
                default=default,
                choices=TUNE_METRICS,
                help="what the threshold tuning maximizes on validation: ap (whole-image DSB score, "
                "background segments are false positives), object_sbd; auto: ap for spatial heads, "
                "object_sbd for embedding heads",
            )
        elif f.name == "image_size":
            parser.add_argument(
                flag, default=default, type=int, nargs="+", help="crop size: H W, or D H W for volumes (--ndim 3)"
            )
        elif f.name == "coordinates":
            parser.add_argument(
                flag,
                default=default,
                action=argparse.BooleanOptionalAction,
                help="feed each pixel's position to the network (default: yes for images, no for volumes, "
                "whose models then work at any size)",
            )
        elif f.name in ("ndim", "channels"):
            parser.add_argument(
                flag,
                default=default,
                type=int,
                help="2: images, 3: volumes (TIFF stacks; --image-size D H W)"
                if f.name == "ndim"
                else "volumes: input channels (default: those of the first training volume)",
            )
        elif f.name == "generator":
            from keras_pixelembed.data.synthetic import GENERATORS

            parser.add_argument(
                flag,
                default=default,
                choices=GENERATORS,
                help="randomized: the domain-randomized generator the bundled models train on; "
                "classic: the narrower generator of multicolor and touching objects",
            )
        elif f.name in ("families", "backgrounds"):
            from keras_pixelembed.data.synthetic import BACKGROUNDS, FAMILIES, OBJECT_FAMILIES

            choices = BACKGROUNDS if f.name == "backgrounds" else f"{OBJECT_FAMILIES} (classic: {FAMILIES})"
            parser.add_argument(
                flag, default=default, nargs="+", help=f"synthetic {f.name} to draw from (default all): {choices}"
            )
        elif f.name == "percentiles":
            parser.add_argument(
                flag,
                default=default,
                type=float,
                nargs=2,
                metavar=("LOW", "HIGH"),
                help="percentile-normalize each image (microscopy: 1 99.8); recorded in config.json",
            )
        elif isinstance(default, bool):
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction)
        elif isinstance(default, tuple):
            parser.add_argument(flag, default=default, type=int, nargs=len(default))
        elif isinstance(default, dict):
            parser.add_argument(flag, default=default, type=json.loads, help="JSON object")
        elif default is None:
            helps = {
                "init_weights": "fine-tune: start from the weights of a .keras file, a run directory or a "
                "bundled model (spatial_unet); the run's architecture flags must match it"
            }
            parser.add_argument(flag, default=None, help=helps.get(f.name))
        else:
            parser.add_argument(flag, default=default, type=type(default))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed `add_config_arguments` flags."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("jit_compile") in ("true", "True"):
        values["jit_compile"] = True
    elif values.get("jit_compile") in ("false", "False"):
        values["jit_compile"] = False
    return TrainConfig(**values)


def add_source_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """The data flags of `pixelembed train KIND` and the recipes."""
    if kind == "synthetic":
        parser.add_argument("--train-images", type=int, default=2000, help="size of the synthetic training set")
    elif kind == "folder":
        parser.add_argument("--images", required=True, help="folder of images")
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--labels", help="folder of label images (same file stems)")
        group.add_argument("--masks", help="folder of <stem>/*.png binary masks")
        parser.add_argument("--validation-fraction", type=float, default=0.2)
        held_out = parser.add_argument_group("held-out test set (the final table and metrics.json use only it)")
        held_out.add_argument("--test-images", dest="held_out_images", help="folder of held-out images")
        test = held_out.add_mutually_exclusive_group()
        test.add_argument("--test-labels", help="their label images (same file stems)")
        test.add_argument("--test-masks", help="their <stem>/*.png binary masks")
    elif kind == "coco":
        parser.add_argument("--annotations", required=True, help="COCO instances JSON")
        parser.add_argument("--images", required=True, help="folder of the images")
        parser.add_argument("--validation-fraction", type=float, default=0.2)
        held_out = parser.add_argument_group("held-out test set (the final table and metrics.json use only it)")
        held_out.add_argument("--test-annotations", help="COCO instances JSON of held-out images")
        held_out.add_argument(
            "--test-images", dest="held_out_images", help="folder of those images (default: --images)"
        )


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """The process-group flags of `--distribute data_parallel` across processes; each, when
    given, sets its environment variable (`keras_pixelembed.distribute.ENVIRONMENT`)."""
    from keras_pixelembed.distribute import ENVIRONMENT

    group = parser.add_argument_group("several processes or hosts (--distribute data_parallel, JAX)")
    for variable, (flag, default, meaning) in ENVIRONMENT.items():
        fallback = f"; default {default}" if default else ""
        group.add_argument(
            flag,
            dest=_process_dest(variable),
            default=None,
            metavar="HOST:PORT" if "ADDRESS" in variable else ("SECONDS" if "TIMEOUT" in variable else "N"),
            help=f"{meaning} (env {variable}{fallback})",
        )


def _process_dest(variable: str) -> str:
    return "process_" + variable.lower()


def apply_process_arguments(args: argparse.Namespace) -> None:
    """Sets the environment variables of the process-group flags given on the command line."""
    from keras_pixelembed.distribute import FLAGS

    for variable in FLAGS:
        value = getattr(args, _process_dest(variable), None)
        if value is not None:
            os.environ[variable] = str(value)


def sources_from_args(kind: str, args, config: TrainConfig):
    """(train, validation, test) sources for a recipe; test is None for a folder or COCO run
    without a held-out set (`train` then reports validation figures and says so)."""
    from keras_pixelembed import data

    size = config.image_size
    if config.ndim == 3:
        return _volume_sources(kind, args, config)
    if kind == "synthetic":
        drawn, test = config.synthetic_kwargs(), config.synthetic_kwargs(held_out=True)
        return (
            data.synthetic(args.train_images, size, seed=config.seed, **drawn),
            data.synthetic(config.validation_images, size, seed=config.seed + 10_000, **drawn),
            data.synthetic(config.test_images, size, seed=config.seed + 20_000, **test),
        )
    test_source = None
    if kind == "folder":
        source = data.from_folder(args.images, labels_dir=args.labels, masks_dir=args.masks)
        given = [f for f in ("held_out_images", "test_labels", "test_masks") if getattr(args, f, None)]
        if given and (not args.held_out_images or not (args.test_labels or args.test_masks)):
            raise ValueError("A held-out set needs --test-images and one of --test-labels / --test-masks")
        if given:
            test_source = data.from_folder(args.held_out_images, labels_dir=args.test_labels, masks_dir=args.test_masks)
    else:
        source = data.from_coco(args.annotations, args.images)
        if getattr(args, "held_out_images", None) and not args.test_annotations:
            raise ValueError("--test-images (COCO) names the folder of --test-annotations, which is missing")
        if getattr(args, "test_annotations", None):
            test_source = data.from_coco(args.test_annotations, args.held_out_images or args.images)
    train_source, val_source = data.train_validation_split(source, args.validation_fraction, config.seed)
    return train_source, val_source, test_source


def _volume_sources(kind: str, args, config: TrainConfig):
    """(train, validation, test) volume sources of `--ndim 3`: synthetic volumes of the crop size,
    or TIFF stacks with label stacks (`data.volumes_from_folder`)."""
    from keras_pixelembed import data

    if kind == "synthetic":
        common = dict(shape=config.image_size, z_spacing=config.z_spacing)
        return (
            data.SyntheticVolumes(args.train_images, seed=config.seed, **common),
            data.SyntheticVolumes(config.validation_images, seed=config.seed + 10_000, **common),
            data.SyntheticVolumes(config.test_images, seed=config.seed + 20_000, **common),
        )
    if kind != "folder":
        raise ValueError("--ndim 3 (volumes) trains from `train folder` (TIFF stacks) or `train synthetic`")
    if args.masks or getattr(args, "test_masks", None):
        raise ValueError("Volumes take label stacks (--labels, --test-labels), not mask folders")
    source = data.volumes_from_folder(args.images, args.labels)
    test_source = None
    if getattr(args, "held_out_images", None) or getattr(args, "test_labels", None):
        if not (args.held_out_images and args.test_labels):
            raise ValueError("A held-out set of volumes needs --test-images and --test-labels")
        test_source = data.volumes_from_folder(args.held_out_images, args.test_labels)
    train_source, val_source = data.train_validation_split(source, args.validation_fraction, config.seed)
    return train_source, val_source, test_source


def train_from_args(kind: str, args) -> dict:
    """Trains from parsed recipe arguments (`pixelembed train` and `recipes/*.py`)."""
    from keras_pixelembed.training import train

    apply_process_arguments(args)
    config = config_from_args(args)
    return train(config, *sources_from_args(kind, args, config))


def run_recipe(kind: str, argv=None, description: str | None = None, **defaults) -> dict:
    """Parses a recipe's command line (`recipes/train_*.py`), builds the sources and trains."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, kind, **defaults)
    add_source_arguments(parser, kind)
    add_process_arguments(parser)
    return train_from_args(kind, parser.parse_args(argv))


def _demo(args) -> int:
    import time

    import keras
    import numpy as np

    from keras_pixelembed import data
    from keras_pixelembed.bundled import resolve_model
    from keras_pixelembed.data.convert import masks_to_label_map
    from keras_pixelembed.evaluation import evaluate, format_table, slic_segments
    from keras_pixelembed.viz import panel

    start = time.time()
    path = resolve_model(args.model)
    segmenter = _segmenter(path)
    source = data.synthetic(args.images, (args.size, args.size), families=("multicolor",), seed=args.seed)
    print(
        f"keras-pixelembed demo ({keras.backend.backend()} backend): bundled model {os.path.basename(path)} "
        f"on {args.images} synthetic {args.size}x{args.size} images of multicolor objects (seed {args.seed}, "
        "never used in training), against SLIC and Felzenszwalb at the same number of segments"
    )
    result = evaluate(segmenter, source)
    print(format_table(result))
    image, masks, _ = source.load(0)
    output = segmenter.predict(image)
    ours = segmenter.cluster(output)
    slic = slic_segments(image, max(2, len(np.unique(ours))))
    panel(image, segmenter.embeddings(output), ours, slic, path=args.out)
    print(
        f"wrote {args.out} (image | embedding as RGB | our segments | SLIC) in {time.time() - start:.1f} s; "
        f"ground truth of that image: {len(np.unique(masks_to_label_map(masks))) - 1} objects"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from keras_pixelembed.data.synthetic import GENERATORS

    parser = argparse.ArgumentParser(prog="pixelembed", description="Pixel embeddings for segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment images with a trained (or the bundled) model")
    seg.add_argument(
        "images",
        nargs="+",
        help="image files, folders of images or glob patterns ('data/*.tif'); a volume model reads TIFF stacks",
    )
    seg.add_argument(
        "--out",
        required=True,
        help="output folder: <name>.png (uint16 labels, 0 = background) and <name>_overlay.png (background dimmed); "
        "volumes: <name>.tif (uint16 labels, z y x)",
    )
    seg.add_argument("--model", help="model directory or .keras file (default: the bundled default model)")
    seg.add_argument(
        "--tile-size",
        type=int,
        default=512,
        help="images with a longer side are segmented in overlapping tiles of this size (0: never)",
    )
    seg.add_argument("--tile-overlap", type=int, default=64, help="context pixels on each side of a tile")
    add_inference_arguments(seg)
    seg.set_defaults(func=_segment)

    ev = sub.add_parser("evaluate", help="metrics of a model against SLIC and Felzenszwalb")
    ev.add_argument("--model", help="model directory or .keras file (default: the bundled default model)")
    ev.add_argument("--images", help="folder of images")
    ev.add_argument("--labels", help="folder of label images")
    ev.add_argument("--masks", help="folder of <stem>/*.png masks")
    ev.add_argument("--synthetic", type=int, default=0, help="evaluate on N synthetic images instead")
    ev.add_argument(
        "--generator",
        default="classic",
        choices=GENERATORS,
        help="of --synthetic: classic (multicolor objects, the demo's) or randomized (the bundled models' domain)",
    )
    ev.add_argument("--families", nargs="+", help="of --synthetic: the object families drawn (default: all)")
    ev.add_argument("--backgrounds", nargs="+", help="of --synthetic randomized: the backgrounds drawn (default: all)")
    ev.add_argument("--size", type=int, default=128, help="size of the synthetic images")
    ev.add_argument("--seed", type=int, default=DEMO_SEED, help="seed of the synthetic images")
    ev.add_argument("--max-images", type=int, default=None)
    ev.add_argument("--json", help="also write the table as JSON here")
    ev.add_argument("--curves", help="write ASA / UE / boundary-recall curves (embedding SLIC vs SLIC) as PNG")
    add_inference_arguments(ev)
    ev.set_defaults(func=_evaluate)

    ex = sub.add_parser("export", help="export to a TF SavedModel or ONNX")
    ex.add_argument("--format", required=True, choices=("saved_model", "onnx"))
    ex.add_argument("--out", required=True)
    ex.add_argument("--model", help="model directory or .keras file (default: the bundled default model)")
    ex.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        help="fix (h, w) of the ONNX input, (d, h, w) for volumes (default: any size)",
    )
    ex.add_argument("--max-instances", type=int, default=256, help="bound on instances per image in the graph")
    add_inference_arguments(ex, scale=False)
    ex.set_defaults(func=_export)

    sd = sub.add_parser("sample-data", help="write a real labelled sample as folders that `train folder` reads")
    sd.add_argument("name", choices=("hela",), help="hela: 20 HeLa nuclei frames (Cell Tracking Challenge)")
    sd.add_argument("--out", required=True, help="a new folder: OUT/{train,test}/{images,labels}")
    sd.set_defaults(func=_sample_data)

    tr = sub.add_parser("train", help="train with a recipe (synthetic, folder or coco data)")
    tr_sub = tr.add_subparsers(dest="source", required=True)
    for kind in ("synthetic", "folder", "coco"):
        p = tr_sub.add_parser(kind, help=f"train on {kind} data")
        add_config_arguments(p, kind, out_dir=f"runs/{kind}")
        add_source_arguments(p, kind)
        add_process_arguments(p)
        p.set_defaults(func=_train)

    demo = sub.add_parser("demo", help="segment sample images with the bundled model; table against SLIC; demo.png")
    demo.add_argument("--model", help="model directory (default: the bundled default model)")
    demo.add_argument("--images", type=int, default=16)
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=DEMO_SEED)
    demo.add_argument("--out", default="demo.png")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="pixelembed: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, FileNotFoundError, ValueError, RuntimeError, ImportError, OSError, TypeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"pixelembed: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
