"""The run directory: the one module that writes and reads a trained model's files.

A run directory (what `pixelembed train` and the recipes write, what `Segmenter.load`,
`pixelembed segment` and the bundled models read) holds

* `model.keras`: the model, compiled with its loss, without optimizer state (`safe_mode=True`);
* `config.json`: the training configuration, with the head (`"spatial"` or `"embedding"`) and
  the input multiple recorded explicitly;
* `thresholds.json`: the clustering thresholds tuned on validation images;
* `metrics.json`: the evaluation table;
* `README.md`: the model card (bundled models).

Every file is written through a temporary file moved into place, so a crash never leaves a
half-written file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

MODEL = "model.keras"
CONFIG = "config.json"
THRESHOLDS = "thresholds.json"
METRICS = "metrics.json"
CARD = "README.md"

# keys an older config.json used for today's names
_RENAMED = {"loss_pixel_size": "pixel_size", "input_pixel_size": "position_scale"}


@dataclass
class Run:
    """What a run directory (or a bare `.keras` file) holds.

    Attributes:
        model: the Keras model (not compiled).
        config: the training configuration; always has `"head"` and `"multiple"`.
        thresholds: the tuned clustering thresholds (empty when the run has none).
        metrics: the evaluation table (empty when the run has none).
        path: where it was read from.
    """

    model: object
    config: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    path: str = ""

    @property
    def head(self) -> str:
        return self.config["head"]


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, value) -> None:
    """Writes `value` as indented JSON through a temporary file."""
    _write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: str, default=None):
    """The JSON in `path`, `default` when the file does not exist; a `ValueError` naming the
    file when it cannot be parsed."""
    if not os.path.isfile(path):
        return default
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}") from error


def normalize_config(config: dict) -> dict:
    """Today's key names for a config (older runs wrote `loss_pixel_size` / `input_pixel_size`)."""
    out = dict(config)
    for old, new in _RENAMED.items():
        if old in out:
            out.setdefault(new, out.pop(old))
    return out


def save_config(out_dir: str, config: dict) -> None:
    """Writes `config.json`; the config must say which head it trains."""
    from keras_pixelembed.models.builders import HEADS

    if config.get("head") not in HEADS:
        raise ValueError(f"A run's config must record its head, one of {HEADS}. Received: head={config.get('head')!r}")
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, CONFIG), config)


def save_thresholds(out_dir: str, thresholds: dict) -> None:
    write_json(os.path.join(out_dir, THRESHOLDS), thresholds)


def save_metrics(out_dir: str, metrics: dict) -> None:
    write_json(os.path.join(out_dir, METRICS), metrics)


def save_card(out_dir: str, text: str) -> None:
    _write_text(os.path.join(out_dir, CARD), text)


def save_model(out_dir: str, model, loss) -> None:
    """Writes `model.keras`: `model` compiled with `loss` but without optimizer state (small,
    reloadable with `safe_mode=True`), through a temporary file moved into place."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(optimizer="adam", loss=loss)
    path = os.path.join(out_dir, MODEL)
    tmp = path + ".tmp.keras"
    clone.save(tmp)
    os.replace(tmp, path)


def load_model(path: str):
    """A `.keras` file, loaded with `safe_mode=True` and without compiling; errors name the file."""
    import keras

    import keras_pixelembed  # noqa: F401  (registers the custom objects)

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file: {path}")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001  (any loader failure becomes one message naming the file)
        raise ValueError(f"Cannot load the model {path}: {error}") from error


def _layers(model):
    """Every layer of `model`, nested models' included."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)


def guess_head(model, source: str = "the model") -> str:
    """The head of a model saved without its config, read off its layers: a
    `SpatialEmbeddingHead` makes it spatial, a `ResidualEmbedding` an embedding head. A model
    with neither is an embedding head unless its output has 4 or 5 channels, which both heads
    can have (`[dy, dx, sigma x 1 or 2, seed]`, or a 4- or 5-dimensional embedding): that one
    is refused with a message saying how to state the head (`source` names the file)."""
    from keras_pixelembed.layers import SpatialEmbeddingHead
    from keras_pixelembed.models.builders import ResidualEmbedding

    kinds = {type(layer) for layer in _layers(model)}
    if SpatialEmbeddingHead in kinds:
        return "spatial"
    if ResidualEmbedding in kinds or model.output_shape[-1] not in (4, 5):
        return "embedding"
    raise ValueError(
        f"Cannot tell the head of {source}: its output has {model.output_shape[-1]} channels, which "
        "fits a spatial head ([dy, dx, sigma, seed]) and an embedding head, and it has neither a "
        "SpatialEmbeddingHead nor a ResidualEmbedding layer. Record it in the run's config.json "
        '({"head": "spatial"} or {"head": "embedding"}) or pass Segmenter(model, head=...).'
    )


def load_run(path: str) -> Run:
    """Reads a run directory, or a bare `.keras` file (no thresholds, default settings).

    A bare file (or a config without a head) has its head read off the model's layers
    (`guess_head`).
    """
    if os.path.isdir(path):
        model = load_model(os.path.join(path, MODEL))
        config = normalize_config(read_json(os.path.join(path, CONFIG), {}))
        thresholds = read_json(os.path.join(path, THRESHOLDS), {})
        metrics = read_json(os.path.join(path, METRICS), {})
    else:
        model, config, thresholds, metrics = load_model(path), {}, {}, {}
    if "head" not in config:
        config["head"] = guess_head(model, path)
    from keras_pixelembed.models.builders import HEADS, input_multiple

    if config["head"] not in HEADS:
        raise ValueError(f"{path}: unknown head {config['head']!r} in {CONFIG}; expected one of {HEADS}")
    config.setdefault("multiple", input_multiple(config.get("backbone", "unet"), int(config.get("depth", 3))))
    return Run(model=model, config=config, thresholds=thresholds, metrics=metrics, path=path)


def model_card(
    name: str,
    config: dict,
    thresholds: dict,
    table: str,
    command: str = "",
    tuning: str = "",
    test: str = "",
    domain: str = "",
) -> str:
    """The text of a model's `README.md`: what it is, how it was trained, tuned and tested,
    and (`domain`) what it was trained on, the object scale and what to expect outside it."""
    size = config.get("image_size", ["?", "?"])
    return (
        f"# {name}\n\n{config.get('backbone', '?')} backbone (width {config.get('width', '?')}, depth "
        f"{config.get('depth', '?')}), {config['head']} head, trained with `{config.get('loss', '?')}` on "
        f"{size[0]}x{size[1]} crops.\n\nTrained by:\n\n```\n{command or '(see the README of keras-pixelembed)'}\n```\n\n"
        f"Thresholds tuned on {tuning}: `{json.dumps(thresholds)}`.\n\nHeld-out test: {test}\n\n{table}\n"
        + (f"\n## Training domain, object scale, out of domain\n\n{domain}\n" if domain else "")
    )


def publish(tmp_dir: str, out_dir: str) -> None:
    """Replaces `out_dir` by the finished `tmp_dir` (so readers never see a half-written run)."""
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)
