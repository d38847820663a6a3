"""The training recipe shared by `recipes/*.py` and `pixelembed train`: config, fit, tune, evaluate, save."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger("keras_pixelembed")

LOSSES = ("push_pull_centroid", "push_pull_balls", "discriminative", "metric_learning", "spatial_embedding")
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as `config.json` beside the checkpoints."""

    out_dir: str = "runs/default"
    loss: str = "spatial_embedding"
    backbone: str = "unet"
    width: int = 16
    depth: int = 3
    embedding_dim: int = 8
    residual: bool = True
    n_sigma: int = 1
    image_size: tuple = (128, 128)
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 100
    validation_images: int = 16
    test_images: int = 32
    learning_rate: float = 2e-3
    max_instances: int = 32
    augment: bool = True
    seed: int = 0
    mixed_precision: str | None = None
    early_stopping_patience: int = 0
    jit_compile: str | bool = "auto"
    export: bool = True
    tensorboard: bool = True
    loss_pixel_size: float = 1.0 / 1024
    sigma_scale: float = 10.0
    input_pixel_size: float = 1.0 / 64
    loss_args: dict = field(default_factory=dict)
    background_as_instance: bool = True
    init_weights: str | None = None
    distribute: str = "none"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"Invalid value for `loss`. Expected one of {LOSSES}. Received: loss={self.loss!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"Invalid value for `mixed_precision`. Expected one of {PRECISIONS}. Received: {self.mixed_precision!r}")
        self.image_size = tuple(int(s) for s in self.image_size)
        from keras_pixelembed.distribute import CHOICES

        if self.distribute not in CHOICES:
            raise ValueError(f"Invalid value for `distribute`. Expected one of {CHOICES}. Received: {self.distribute!r}")
        if any(s % 2**self.depth for s in self.image_size):
            raise ValueError(f"`image_size` {self.image_size} must be divisible by 2 ** depth = {2 ** self.depth}")

    @property
    def head(self) -> str:
        return "spatial" if self.loss == "spatial_embedding" else "embedding"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["head"] = self.head
        d["multiple"] = 2**self.depth
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_loss(config: TrainConfig):
    from keras_pixelembed import losses

    kwargs = dict(config.loss_args)
    if config.loss == "spatial_embedding":
        return losses.SpatialEmbeddingLoss(n_sigma=config.n_sigma, pixel_size=config.loss_pixel_size,
                                           sigma_scale=config.sigma_scale, max_instances=config.max_instances, **kwargs)
    cls = {"push_pull_centroid": losses.PushPullCentroidLoss, "push_pull_balls": losses.PushPullBallsLoss,
           "discriminative": losses.DiscriminativeLoss, "metric_learning": losses.MetricLearningLoss}[config.loss]
    if config.loss == "discriminative":
        kwargs = {"delta_v": 0.5, "delta_d": 1.5, **kwargs}
    return cls(max_instances=config.max_instances, **kwargs)


def make_model(config: TrainConfig):
    from keras_pixelembed.models import build_pixel_embedder

    return build_pixel_embedder(backbone=config.backbone, head=config.head, embedding_dim=config.embedding_dim,
                                residual=config.residual, width=config.width, depth=config.depth, n_sigma=config.n_sigma,
                                pixel_size=config.input_pixel_size)


def _callbacks(config: TrainConfig, has_validation: bool):
    import tempfile

    import keras

    from keras_pixelembed.distribute import is_chief

    monitor = "val_loss" if has_validation else "loss"
    # every worker must run the same callbacks; only the chief writes where the user looks
    out = config.out_dir if is_chief() else tempfile.mkdtemp(prefix="pixelembed_worker_")
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(config.out_dir, "backup")),
        keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoint.keras"), monitor=monitor, save_best_only=True),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(os.path.join(out, "log.csv"), append=True),
    ]
    if config.tensorboard and is_chief():
        try:
            import tensorboard  # noqa: F401
            import tensorflow  # noqa: F401

            callbacks.append(keras.callbacks.TensorBoard(os.path.join(config.out_dir, "tensorboard"), write_graph=False))
        except ImportError:
            logger.warning("TensorBoard logs need tensorflow and tensorboard installed; skipped (CSV log kept)")
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping_patience,
                                                       restore_best_weights=True))
    return callbacks


def _background_as_instance(images, labels):
    """Label maps: background (0) becomes id K + 1 of each image; ignored pixels stay -1."""
    import tensorflow as tf

    top = tf.reduce_max(labels, axis=[1, 2], keepdims=True)
    return images, tf.where(tf.equal(labels, 0), top + 1, labels)


def save_for_inference(model, loss, path: str) -> None:
    """Saves `model` compiled with `loss` but without optimizer state (small, reloadable with
    `safe_mode=True`), through a temporary file moved into place."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(optimizer="adam", loss=loss)
    tmp = path + ".tmp.keras"
    clone.save(tmp)
    os.replace(tmp, path)


def train(config: TrainConfig, train_source, val_source, test_source=None, verbose: int = 1, callbacks=()) -> dict:
    """Fits, tunes the clustering on `val_source`, evaluates on `test_source` against SLIC and
    Felzenszwalb, and writes `model.keras`, `config.json`, `thresholds.json`, `metrics.json`
    (and the SavedModel / ONNX exports when asked and possible) into `config.out_dir`."""
    import keras

    from keras_pixelembed import data
    from keras_pixelembed.distribute import check_distribute, is_chief, shard_by_data, strategy_scope
    from keras_pixelembed.evaluation import evaluate, format_table
    from keras_pixelembed.segmenter import Segmenter, tune_thresholds

    check_distribute(config.distribute)
    # MultiWorkerMirroredStrategy must exist before any TensorFlow op (the pipeline's included)
    scope, _ = strategy_scope(config.distribute)
    os.makedirs(config.out_dir, exist_ok=True)
    with open(os.path.join(config.out_dir, "config.json"), "w") as f:
        json.dump(config.to_json(), f, indent=2)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    # embedding heads: the background is one more instance, so that clustering can find it
    extra = 1 if (config.head == "embedding" and config.background_as_instance) else 0
    train_ds = data.make_dataset(train_source, config.batch_size, image_size=config.image_size,
                                 max_instances=config.max_instances - extra, augment=config.augment, shuffle=True,
                                 repeat=True, seed=config.seed, on_overflow="drop_smallest")
    val_ds = data.make_dataset(val_source, config.batch_size, image_size=config.image_size,
                               max_instances=config.max_instances - extra, seed=config.seed, on_overflow="drop_smallest",
                               cache=True)
    if extra:
        train_ds, val_ds = train_ds.map(_background_as_instance), val_ds.map(_background_as_instance)
    if config.distribute == "multi_worker":
        train_ds, val_ds = shard_by_data(train_ds), shard_by_data(val_ds)
    with scope:
        model = make_model(config)
        if config.init_weights:  # fine-tune: start from a trained model of the same architecture
            trained = keras.saving.load_model(config.init_weights, safe_mode=True, compile=False)
            model.set_weights(trained.get_weights())
        loss = make_loss(config)
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * config.steps_per_epoch,
                                                          warmup_target=None, alpha=0.05)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, jit_compile=config.jit_compile)
    start = time.time()
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                        callbacks=_callbacks(config, True) + list(callbacks), verbose=verbose)
    seconds = time.time() - start
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
    if not is_chief():  # workers other than the chief stop here: the chief tunes, evaluates and saves
        return {"final_loss": float(history.history["loss"][-1]), "train_seconds": seconds}

    segmenter = Segmenter(model, head=config.head, multiple=2**config.depth, pixel_size=config.loss_pixel_size,
                          sigma_scale=config.sigma_scale)
    val_images, val_labels = zip(*(val_source.load_labels(i) for i in range(len(val_source))))
    outputs = [segmenter.predict(im) for im in val_images]
    thresholds, val_score = tune_thresholds(segmenter, outputs, val_labels)
    segmenter.thresholds = {**segmenter.thresholds, **thresholds}
    with open(os.path.join(config.out_dir, "thresholds.json"), "w") as f:
        json.dump(segmenter.thresholds, f, indent=2)
    result = evaluate(segmenter, test_source or val_source)
    result["validation_object_sbd"] = val_score
    result["train_seconds"] = seconds
    result["final_loss"] = float(history.history["loss"][-1])
    with open(os.path.join(config.out_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    save_for_inference(model, loss, os.path.join(config.out_dir, "model.keras"))
    if verbose:
        print(format_table(result))
    if config.export:
        _export(model, config.out_dir)
    return result


def _export(model, out_dir: str) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        logger.warning("SavedModel / ONNX export needs the TensorFlow backend (dynamic sizes); skipped. "
                       "Run `KERAS_BACKEND=tensorflow pixelembed export --model %s` later.", out_dir)
        return
    from keras_pixelembed.export import export_onnx, export_saved_model

    export_saved_model(model, os.path.join(out_dir, "saved_model"))
    try:
        export_onnx(model, os.path.join(out_dir, "model.onnx"))
    except ImportError as error:
        logger.warning("ONNX export skipped: %s", error)


def add_config_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    for f in dataclasses.fields(TrainConfig):
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        flag = "--" + f.name.replace("_", "-")
        if f.name == "loss":
            parser.add_argument(flag, default=default, choices=LOSSES)
        elif f.name == "distribute":
            parser.add_argument(flag, default=default, choices=("none", "mirrored", "multi_worker", "data_parallel"))
        elif isinstance(default, bool):
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction)
        elif isinstance(default, tuple):
            parser.add_argument(flag, default=default, type=int, nargs=len(default))
        elif isinstance(default, dict):
            parser.add_argument(flag, default=default, type=json.loads, help="JSON object")
        elif default is None:
            parser.add_argument(flag, default=None)
        else:
            parser.add_argument(flag, default=default, type=type(default))


def config_from_args(args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("jit_compile") in ("true", "True"):
        values["jit_compile"] = True
    elif values.get("jit_compile") in ("false", "False"):
        values["jit_compile"] = False
    return TrainConfig(**values)


def split(source, validation_fraction: float, seed: int):
    """A shuffled train / validation split; at least one image on each side (the same image on
    both when there is only one, the design note's overfit-one-image first step)."""
    from keras_pixelembed.data.sources import Subset

    n = len(source)
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(round(validation_fraction * n)))) if n > 1 else 0
    if n_val == 0:
        return source, source
    return Subset(source, order[n_val:]), Subset(source, order[:n_val])


def add_source_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    if kind == "synthetic":
        parser.add_argument("--train-images", type=int, default=2000, help="size of the synthetic training set")
    elif kind == "folder":
        parser.add_argument("--images", required=True, help="folder of images")
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--labels", help="folder of label images (same file stems)")
        group.add_argument("--masks", help="folder of <stem>/*.png binary masks")
        parser.add_argument("--validation-fraction", type=float, default=0.2)
    elif kind == "coco":
        parser.add_argument("--annotations", required=True, help="COCO instances JSON")
        parser.add_argument("--images", required=True, help="folder of the images")
        parser.add_argument("--validation-fraction", type=float, default=0.2)


def sources_from_args(kind: str, args, config: TrainConfig):
    """(train, validation, test) sources for a recipe."""
    from keras_pixelembed import data

    size = config.image_size
    if kind == "synthetic":
        return (data.synthetic(args.train_images, size, seed=config.seed),
                data.synthetic(config.validation_images, size, seed=config.seed + 10_000),
                data.synthetic(config.test_images, size, families=("multicolor",), seed=config.seed + 20_000))
    if kind == "folder":
        source = data.from_folder(args.images, labels_dir=args.labels, masks_dir=args.masks)
    else:
        source = data.from_coco(args.annotations, args.images)
    train_source, val_source = split(source, args.validation_fraction, config.seed)
    return train_source, val_source, val_source


def run_recipe(kind: str, argv=None, description: str | None = None, **defaults) -> dict:
    """Parses a recipe's command line, builds the sources and trains."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, **defaults)
    add_source_arguments(parser, kind)
    return train_from_args(kind, parser.parse_args(argv))


def train_from_args(kind: str, args) -> dict:
    """Trains from parsed recipe arguments (`pixelembed train` and `recipes/*.py`)."""
    config = config_from_args(args)
    return train(config, *sources_from_args(kind, args, config))
