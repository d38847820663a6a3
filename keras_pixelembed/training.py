"""The training workflow shared by `recipes/*.py` and `pixelembed train`: the configuration,
then fit -> tune the clustering -> evaluate -> save the run directory (`run_dir`).

The command-line wiring (flags from `TrainConfig`, sources from flags) lives in `cli.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

from keras_pixelembed import run_dir
from keras_pixelembed.distribute import CHOICES as DISTRIBUTE_CHOICES
from keras_pixelembed.validation import check_choice

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
    pixel_size: float = 1.0 / 1024
    sigma_scale: float = 10.0
    position_scale: float = 1.0 / 64
    loss_args: dict = field(default_factory=dict)
    background_as_instance: bool = True
    init_weights: str | None = None
    distribute: str = "none"
    percentiles: tuple | None = None
    tune_metric: str = "auto"
    ndim: int = 2
    z_spacing: float = 1.0
    channels: int | None = None
    coordinates: bool | None = None
    generator: str = "classic"
    families: tuple | None = None
    backgrounds: tuple | None = None

    def __post_init__(self):
        check_choice("loss", self.loss, LOSSES)
        check_choice("mixed_precision", self.mixed_precision, PRECISIONS)
        check_choice("distribute", self.distribute, DISTRIBUTE_CHOICES)
        from keras_pixelembed.evaluation import TUNE_METRICS

        check_choice("tune_metric", self.tune_metric, TUNE_METRICS)
        from keras_pixelembed.data.normalize import check_percentiles

        self.percentiles = check_percentiles("percentiles", self.percentiles)
        self.image_size = tuple(int(s) for s in self.image_size)
        self._check_volumes()
        self._check_synthetic()
        if any(s % self.multiple for s in self.image_size):
            raise ValueError(
                f"`image_size` {self.image_size} must be divisible by {self.multiple} "
                f"(the input multiple of backbone={self.backbone!r}, depth={self.depth})"
            )

    def _check_volumes(self) -> None:
        """`ndim`, `image_size`, `z_spacing` and `channels` agree; volumes train a spatial 3D U-Net on one device."""
        from keras_pixelembed.validation import check_integer, check_number

        self.ndim = check_integer("ndim", self.ndim, minimum=2)
        if self.ndim > 3:
            raise ValueError(
                f"Invalid value for argument `ndim`. Expected 2 (images) or 3 (volumes). Received: {self.ndim}"
            )
        self.z_spacing = check_number("z_spacing", self.z_spacing, minimum=0.0, strict=True)
        if self.channels is not None:
            self.channels = check_integer("channels", self.channels, minimum=1)
        if self.coordinates is None:
            # volumes: no position channels, so that the 3D U-Net does not learn the crops' positions
            # and works on volumes (and tiles) of any size; images keep theirs
            self.coordinates = self.ndim == 2
        self.coordinates = bool(self.coordinates)
        if len(self.image_size) != self.ndim:
            sizes = "(depth, height, width): --image-size D H W" if self.ndim == 3 else "(height, width)"
            raise ValueError(
                f"`image_size` {self.image_size} must give {self.ndim} sizes for ndim={self.ndim}: {sizes}"
            )
        if self.ndim == 3:
            if self.loss != "spatial_embedding" or self.backbone != "unet":
                raise ValueError(
                    "Volumes (ndim=3) train a 3D U-Net with the spatial-embedding loss (loss='spatial_embedding', "
                    f"backbone='unet'). Received: loss={self.loss!r}, backbone={self.backbone!r}"
                )
            if self.distribute != "none" or self.mixed_precision:
                raise ValueError(
                    "Volumes (ndim=3) train on one device in float32 (distribute='none', no mixed_precision). "
                    f"Received: distribute={self.distribute!r}, mixed_precision={self.mixed_precision!r}"
                )

    def _check_synthetic(self) -> None:
        """`generator`, `families` and `backgrounds` name what `train synthetic` draws (recorded
        in config.json, so a model card can say what a model saw)."""
        from keras_pixelembed.data import SyntheticSource

        source = SyntheticSource(1, (16, 16), self.families, generator=self.generator, backgrounds=self.backgrounds)
        self.families = None if self.families is None else source.families
        self.backgrounds = None if self.backgrounds is None else source.backgrounds

    @property
    def head(self) -> str:
        return "spatial" if self.loss == "spatial_embedding" else "embedding"

    def synthetic_kwargs(self, held_out: bool = False) -> dict:
        """What a synthetic run draws (`data.drawn_from`): `data.synthetic`'s keyword arguments
        for its training images, or (`held_out`) for its test images."""
        from keras_pixelembed.data.sources import drawn_from

        return drawn_from(self, held_out)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["head"] = self.head
        d["multiple"] = self.multiple
        return d

    @property
    def multiple(self) -> int:
        from keras_pixelembed.models.builders import input_multiple

        return input_multiple(self.backbone, self.depth)

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in run_dir.normalize_config(d).items() if k in names})


def make_loss(config: TrainConfig):
    from keras_pixelembed import losses

    kwargs = dict(config.loss_args)
    if config.loss == "spatial_embedding":
        if config.ndim == 3:
            kwargs.setdefault("z_spacing", config.z_spacing)
        return losses.SpatialEmbeddingLoss(
            n_sigma=config.n_sigma,
            pixel_size=config.pixel_size,
            sigma_scale=config.sigma_scale,
            max_instances=config.max_instances,
            **kwargs,
        )
    cls = {
        "push_pull_centroid": losses.PushPullCentroidLoss,
        "push_pull_balls": losses.PushPullBallsLoss,
        "discriminative": losses.DiscriminativeLoss,
        "metric_learning": losses.MetricLearningLoss,
    }[config.loss]
    if config.loss == "discriminative":
        kwargs = {"delta_v": 0.5, "delta_d": 1.5, **kwargs}
    return cls(max_instances=config.max_instances, **kwargs)


def make_model(config: TrainConfig):
    from keras_pixelembed.models import build_pixel_embedder

    return build_pixel_embedder(
        backbone=config.backbone,
        head=config.head,
        embedding_dim=config.embedding_dim,
        residual=config.residual,
        width=config.width,
        depth=config.depth,
        n_sigma=config.n_sigma,
        position_scale=config.position_scale,
        coordinates=config.coordinates,
        **(dict(ndim=3, channels=config.channels, z_spacing=config.z_spacing) if config.ndim == 3 else {}),
    )


def _backup_dir(config: TrainConfig, out: str) -> str:
    """Where `BackupAndRestore` keeps the last completed epoch: the run directory's `backup/` for
    the chief; other processes restore from a copy of it in their own folder `out` and write
    there (one writer per file; the run directory must be on storage every process sees for a
    restart to resume)."""
    import shutil

    from keras_pixelembed.distribute import is_chief

    backup = os.path.join(config.out_dir, "backup")
    if is_chief():
        return backup
    mine = os.path.join(out, "backup")
    if os.path.isdir(backup):
        shutil.copytree(backup, mine)
    return mine


def _where(distribute: str, group) -> str:
    """This process, as error messages name it: `process 1 of 2`, `worker 0`."""
    import json

    if distribute == "multi_worker":
        task = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("task", {})
        return f"{task.get('type', 'worker')} {task.get('index', 0)}"
    return group.describe()


def best_weights_callback(directory: str, monitor: str = "val_loss"):
    """A callback that keeps the weights of the epoch with the lowest `monitor` and puts them
    back in the model when training ends, so the run's `model.keras` is its best epoch, not
    its last. The best weights and their epoch are files in `directory` (the run's `backup/`),
    so a run killed and started again (`BackupAndRestore`) still knows its best epoch before
    the restart; it must come before `BackupAndRestore` in the list, which deletes that folder
    when training ends. `callback.best` is `{"epoch" (1-based, as `fit` prints it), "monitor",
    "value", "epochs"}` after training, or None when no epoch gave a finite value."""
    import json
    import math

    import keras

    class BestWeights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights_path = os.path.join(directory, "best.weights.h5")
            self.state_path = os.path.join(directory, "best.json")
            self.best = None
            self.epochs = 0

        def on_train_begin(self, logs=None):
            self.best = None
            if os.path.isfile(self.state_path) and os.path.isfile(self.weights_path):  # a resumed run
                with open(self.state_path) as f:
                    self.best = json.load(f)

        def on_epoch_end(self, epoch, logs=None):
            self.epochs = epoch + 1
            value = (logs or {}).get(monitor)
            if value is None or not math.isfinite(float(value)):
                return
            if self.best is not None and float(value) >= self.best["value"]:
                return
            os.makedirs(directory, exist_ok=True)
            temporary = os.path.join(directory, "best.partial.weights.h5")
            self.model.save_weights(temporary, overwrite=True)
            os.replace(temporary, self.weights_path)
            self.best = {"epoch": epoch + 1, "monitor": monitor, "value": float(value)}
            run_dir.write_json(self.state_path, self.best)

        def on_train_end(self, logs=None):
            if self.best is not None and os.path.isfile(self.weights_path):
                self.model.load_weights(self.weights_path)
                self.best["epochs"] = self.epochs

    return BestWeights()


def _callbacks(config: TrainConfig, has_validation: bool):
    import tempfile

    import keras

    from keras_pixelembed.distribute import is_chief

    monitor = "val_loss" if has_validation else "loss"
    # every worker must run the same callbacks; only the chief writes where the user looks
    out = config.out_dir if is_chief() else tempfile.mkdtemp(prefix="pixelembed_worker_")
    backup = _backup_dir(config, out)
    callbacks = [
        best_weights_callback(backup, monitor),  # before BackupAndRestore, which deletes `backup`
        keras.callbacks.BackupAndRestore(backup),
        keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoint.keras"), monitor=monitor, save_best_only=True),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(os.path.join(out, "log.csv"), append=True),
    ]
    if config.tensorboard and is_chief():
        try:
            import tensorboard  # noqa: F401
            import tensorflow  # noqa: F401

            callbacks.append(
                keras.callbacks.TensorBoard(os.path.join(config.out_dir, "tensorboard"), write_graph=False)
            )
        except ImportError:
            logger.warning("TensorBoard logs need tensorflow and tensorboard installed; skipped (CSV log kept)")
    if config.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=config.early_stopping_patience, restore_best_weights=True
            )
        )
    return callbacks


ARCHITECTURE = ("loss", "backbone", "width", "depth", "embedding_dim", "residual", "n_sigma", "ndim", "coordinates")


def init_weights_path(spec: str) -> str:
    """The `.keras` file that `TrainConfig.init_weights` names: a `.keras` file, a run directory
    (its `model.keras`) or a bundled model's name (`spatial_unet`); errors name the value."""
    from keras_pixelembed.bundled import resolve_model

    try:
        path = resolve_model(spec)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"init_weights={spec!r}: {error}") from None
    if os.path.isdir(path):
        path = os.path.join(path, run_dir.MODEL)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"init_weights={spec!r}: the directory has no {run_dir.MODEL}")
    return path


def _init_weights(config: TrainConfig, path: str | None, model) -> None:
    """Sets `model`'s weights to those of the `.keras` file `path` (`init_weights_path` of
    `config.init_weights`; nothing when None), refusing a model of another architecture with the
    settings that differ (from the config.json beside it, when it has one)."""
    if path is None:
        return
    weights = run_dir.load_model(path).get_weights()
    expected = [tuple(w.shape) for w in model.weights]
    got = [tuple(w.shape) for w in weights]
    if got != expected:
        theirs = run_dir.normalize_config(run_dir.read_json(os.path.join(os.path.dirname(path), run_dir.CONFIG), {}))
        ours = config.to_json()
        differ = [
            f"--{k.replace('_', '-')} {theirs[k]} (this run: {ours.get(k)})"
            for k in ARCHITECTURE
            if k in theirs and theirs[k] != ours.get(k)
        ]
        hint = "; it was trained with " + ", ".join(differ) if differ else ""
        raise ValueError(
            f"init_weights={config.init_weights!r}: the model in {path} has another architecture than this run's "
            f"({len(got)} weight arrays against {len(expected)}, or other shapes){hint}"
        )
    model.set_weights(weights)


def train(config: TrainConfig, train_source, val_source, test_source=None, verbose: int = 1, callbacks=()) -> dict:
    """Fits, tunes the clustering on `val_source`, evaluates on `test_source` against SLIC and
    Felzenszwalb, and writes the run directory
    `config.out_dir` (`run_dir`: model, config, thresholds, metrics; the SavedModel / ONNX
    exports when asked and possible).

    `test_source` is the held-out set (checked first: `data.check_test_source`); without one the
    figures are the validation set's, which also tuned the thresholds and chose the checkpoint:
    the result's `"evaluated_on"` says `"test"` or `"validation"` and `"evaluated_images"` names
    the images, and the printed table says which.

    With `distribute="data_parallel"` across processes (`distribute.process_group`), every
    process calls `train` with the same arguments: each fits on its own shard of `train_source`
    with `config.batch_size` images a step (the global batch is the sum), every process
    evaluates the whole `val_source` each epoch, and process 0 alone tunes, evaluates and writes
    the run directory; the others return after the fit."""
    import keras

    from keras_pixelembed import data
    from keras_pixelembed.distribute import (
        GroupError,
        GroupGuard,
        check_distribute,
        end_distribution,
        is_chief,
        process_group,
        shard_by_data,
        shard_source,
        strategy_scope,
    )
    from keras_pixelembed.evaluation import format_table, tune_and_evaluate
    from keras_pixelembed.segmenter import Segmenter
    from keras_pixelembed.watchdog import Watchdog

    check_distribute(config.distribute)
    if config.ndim == 3:  # before anything is written
        _check_volume_sources(config, train_source, val_source, test_source)
    if test_source is not None:  # before anything is written
        data.check_test_source(test_source, train_source, val_source)
    group = process_group()
    # MultiWorkerMirroredStrategy must exist before any TensorFlow op (the pipeline's included);
    # the JAX process group before any JAX computation
    scope, _ = strategy_scope(config.distribute)
    init_path = init_weights_path(config.init_weights) if config.init_weights else None  # an unknown one: now
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    # the same seed everywhere: the processes must start from the same weights
    keras.utils.set_random_seed(config.seed)
    # embedding heads: the background is one more instance, so that clustering can find it
    background = config.head == "embedding" and config.background_as_instance
    common = dict(
        batch_size=config.batch_size,
        image_size=config.image_size,
        max_instances=config.max_instances,
        seed=config.seed,
        on_overflow="drop_smallest",
        background_as_instance=background,
    )
    fit_train, fit_val = train_source, val_source
    if config.ndim == 3:  # volumes: random crops from numpy, any backend (`data.VolumeBatches`)
        train_ds, val_ds = _volume_batches(config, train_source, val_source)
    elif config.percentiles is not None:  # the segmenter normalizes its inputs itself (in its graph)
        from keras_pixelembed.data.normalize import PercentileNormalized

        fit_train, fit_val = (PercentileNormalized(s, config.percentiles) for s in (train_source, val_source))
    if config.ndim == 2:
        fit_train = shard_source(fit_train, group) if config.distribute == "data_parallel" else fit_train
        train_ds = data.make_dataset(fit_train, augment=config.augment, shuffle=True, repeat=True, **common)
        # every process evaluates the whole validation set: the same number of batches everywhere
        if config.image_size is not None:  # native-scale tiles, not whole images squashed to the crop size
            fit_val = data.Tiles(fit_val, config.image_size)
        val_ds = data.make_dataset(fit_val, cache=True, **common)
    if config.distribute == "multi_worker":
        train_ds, val_ds = shard_by_data(train_ds), shard_by_data(val_ds)
    with scope:
        model = make_model(config)
        # fine-tune: start from a trained model of the same architecture (refused otherwise,
        # before anything is written)
        _init_weights(config, init_path, model)
        loss = make_loss(config)
        schedule = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, config.epochs * config.steps_per_epoch, warmup_target=None, alpha=0.05
        )
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, jit_compile=config.jit_compile)
    if is_chief():
        run_dir.save_config(config.out_dir, config.to_json())
    guarded = group.multi_process or config.distribute == "multi_worker"
    where = _where(config.distribute, group)
    watchdog = (
        Watchdog(
            group.step_timeout,
            f"--distribute {config.distribute}: no training step finished for {group.step_timeout:g} s in "
            f"{where} (a peer is stuck or gone); ended by the watchdog (PIXELEMBED_STEP_TIMEOUT sets the wait)",
        )
        if guarded
        else None
    )
    fit_callbacks = _callbacks(config, True) + list(callbacks)
    best = next(c for c in fit_callbacks if type(c).__name__ == "BestWeights")
    if watchdog is not None:
        fit_callbacks.append(GroupGuard(watchdog, check_epoch=group.multi_process))
    start = time.time()
    try:
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            steps_per_epoch=config.steps_per_epoch,
            callbacks=fit_callbacks,
            verbose=verbose,
        )
    except Exception as error:
        if watchdog is None:
            raise
        # a distributed runtime can wait for its gone peers on the way out: the watchdog stays
        # armed, so this process ends even if it cannot exit by itself
        watchdog.arm(
            max(30.0, group.heartbeat_timeout + 30.0),
            f"--distribute {config.distribute}: {where} did not exit after its training failed; ended by the watchdog",
        )
        if isinstance(error, GroupError):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(
            f"--distribute {config.distribute}: training stopped in {where} ({first}). The last completed epoch is "
            f"in {os.path.join(config.out_dir, 'backup')}: start every process again to resume from it"
        ) from error
    seconds = time.time() - start
    if watchdog is not None:
        watchdog.close()
    if config.distribute == "data_parallel":
        # back to one device, out of the process group: the chief goes on alone
        weights = model.get_weights()
        end_distribution(config.distribute)
        model = make_model(config)
        model.set_weights(weights)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
    if not is_chief():  # workers other than the chief stop here: the chief tunes, evaluates and saves
        return {"final_loss": float(history.history["loss"][-1]), "train_seconds": seconds}

    segmenter = Segmenter(
        model,
        head=config.head,
        multiple=config.multiple,
        pixel_size=config.pixel_size,
        sigma_scale=config.sigma_scale,
        percentiles=config.percentiles,
        z_spacing=config.z_spacing,
    )
    result = tune_and_evaluate(segmenter, val_source, test_source or val_source, metric=config.tune_metric)
    evaluated = test_source or val_source
    result["evaluated_on"] = "test" if test_source is not None else "validation"
    result["evaluated_images"] = [evaluated.name(i) for i in range(len(evaluated))][: result["images"]]
    run_dir.save_thresholds(config.out_dir, segmenter.thresholds)
    result["train_seconds"] = seconds
    result["final_loss"] = float(history.history["loss"][-1])
    # model.keras holds the epoch with the lowest validation loss (`best_weights_callback`)
    result["weights"] = best.best or {"epoch": None, "monitor": "val_loss", "value": None, "epochs": best.epochs}
    run_dir.save_metrics(config.out_dir, result)
    run_dir.save_model(config.out_dir, model, loss)
    if verbose:
        print(format_table(result))
        if best.best is not None:
            print(
                f"model.keras: the weights of epoch {best.best['epoch']} of {best.best['epochs']}, "
                f"the lowest validation loss ({best.best['value']:.4g})"
            )
    if config.export:
        _export(segmenter, config.out_dir)
    return result


def _check_volume_sources(config: TrainConfig, *sources) -> None:
    """Volume runs take volume sources (`data.VolumeSource`, or subsets of one); the input
    channels are read off the first training volume when the config does not give them."""
    from keras_pixelembed.data.volumes import is_volume_source

    for what, source in zip(("training", "validation", "test"), sources):
        if source is not None and not is_volume_source(source):
            raise ValueError(
                f"ndim=3 trains on volumes: the {what} source must be a volume source (data.volumes_from_folder, "
                f"data.SyntheticVolumes, data.volumes_from_arrays). Received: {type(source).__name__}"
            )
    if len(sources[0]) == 0 or len(sources[1]) == 0:
        raise ValueError("A volume run needs at least one training and one validation volume")
    channels = sources[0].load_labels(0)[0].shape[-1]
    if config.channels is None:
        config.channels = int(channels)
    if channels != config.channels:
        raise ValueError(f"{sources[0].name(0)} has {channels} channels but the run's `channels` is {config.channels}")


def _volume_batches(config: TrainConfig, train_source, val_source):
    """The fit's training and validation batches of a volume run: random crops of `image_size`
    (with flips and yx rotations when `augment`), and the validation volumes' central crops."""
    from keras_pixelembed.data.volumes import VolumeBatches

    common = dict(
        size=config.image_size,
        batch_size=config.batch_size,
        max_instances=config.max_instances,
        seed=config.seed,
        percentiles=config.percentiles,
    )
    train = VolumeBatches(train_source, random=True, flip=config.augment, steps=config.steps_per_epoch, **common)
    return train, VolumeBatches(val_source, random=False, **common)


def _export(segmenter, out_dir: str) -> None:
    """The SavedModel and ONNX exports of the tuned segmenter (labels in the graph), from any
    backend (through TensorFlow when needed)."""
    from keras_pixelembed.export import export_onnx, export_saved_model

    try:
        export_saved_model(segmenter, os.path.join(out_dir, "saved_model"))
        export_onnx(segmenter, os.path.join(out_dir, "model.onnx"))
    except (ImportError, RuntimeError) as error:
        logger.warning("export skipped: %s (the run is saved; `pixelembed export --model %s` retries)", error, out_dir)
