"""Helpers of the tests: random mask sets, tiny models and run directories, config round trips."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_pixelembed.testing import per_image_value_and_grad, value_and_grad

__all__ = [
    "BACKEND",
    "TINY_TRAIN_CONFIG",
    "TINY_SYNTHETIC_FLAGS",
    "TINY_TRAIN_FLAGS",
    "per_image_value_and_grad",
    "value_and_grad",
]

BACKEND = keras.backend.backend()

# the `TrainConfig` fields of a training run that takes seconds, and the same as flags
TINY_TRAIN_CONFIG = dict(
    epochs=1,
    steps_per_epoch=2,
    image_size=(32, 32),
    width=4,
    depth=2,
    batch_size=2,
    validation_images=2,
    test_images=2,
    export=False,
    tensorboard=False,
)
# the flags of a training run that takes seconds: one epoch of two steps on 32 x 32 images
TINY_TRAIN_FLAGS = (
    "--epochs 1 --steps-per-epoch 2 --image-size 32 32 --width 4 --depth 2 --batch-size 2 --no-export --no-tensorboard"
).split()
# `pixelembed train synthetic` also sizes its generated validation and test sets
TINY_SYNTHETIC_FLAGS = [*TINY_TRAIN_FLAGS, "--validation-images", "2", "--test-images", "2"]


def random_label_maps(rng: np.random.Generator, batch: int, h: int, w: int, n_ids: int, p_ignore: float = 0.1):
    labels = rng.integers(0, n_ids + 1, size=(batch, h, w))
    labels[rng.random((batch, h, w)) < p_ignore] = -1
    return labels.astype(np.float32)


def random_mask_stack(rng: np.random.Generator, batch: int, h: int, w: int, m: int, padding: int = 1):
    """Overlapping random masks with `padding` all-zero channels at the end."""
    stack = (rng.random((batch, h, w, m)) < 0.35).astype(np.float32)
    if padding:
        stack[..., m - padding :] = 0
    return stack


def assert_compiled_equals_eager(loss, labels, pred) -> None:
    """The mean loss and its gradient, eager and compiled (`jit_compile`), agree. XLA fuses and
    rounds differently (a few tied pixels split): tiny gradients may move a little."""
    from keras import ops

    labels, pred = ops.convert_to_tensor(labels), ops.convert_to_tensor(pred)
    outputs = [value_and_grad(lambda p: ops.mean(loss.call(labels, p)), jit=jit)(pred) for jit in (False, True)]
    np.testing.assert_allclose(*(float(ops.convert_to_numpy(o[0])) for o in outputs), rtol=1e-5)
    np.testing.assert_allclose(*(ops.convert_to_numpy(o[1]) for o in outputs), rtol=1e-4, atol=1e-6)


def assert_config_round_trip(obj, ctor_args: dict) -> None:
    """get_config holds every constructor argument, survives JSON, and from_config rebuilds it."""
    import inspect

    config = obj.get_config()
    for name in inspect.signature(type(obj).__init__).parameters:
        if name not in ("self", "args", "kwargs"):
            assert name in config, f"constructor argument {name!r} missing from get_config()"
    for key, value in ctor_args.items():
        assert config[key] == value, (key, config[key], value)
    json.dumps(config)
    clone = type(obj).from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(obj)
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(again) is type(obj) and again.get_config() == config


def tiny_model(channels: int, h: int = 16, w: int = 16, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((h, w, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(channels, 1)(x)
    return keras.Model(inputs, outputs)


def synthetic_batch(seed: int = 0, batch: int = 2, h: int = 16, w: int = 16):
    """Images whose colors tell three rectangles apart, and their label maps."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch, h, w, 3)).astype(np.float32) * 0.1
    labels = np.zeros((batch, h, w), np.float32)
    for b in range(batch):
        for k in range(1, 4):
            r, c = rng.integers(0, h - 6), rng.integers(0, w - 6)
            labels[b, r : r + 6, c : c + 6] = k
            images[b, r : r + 6, c : c + 6] = rng.random(3)
    return images, labels


def tiny_model_dir(path, head: str = "spatial", seed: int = 0) -> str:
    """An (untrained) run directory as the recipes write it: model.keras, config.json, thresholds.json."""
    from keras_pixelembed import run_dir
    from keras_pixelembed.training import TrainConfig, make_loss, make_model

    keras.utils.set_random_seed(seed)
    loss = "spatial_embedding" if head == "spatial" else "discriminative"
    config = TrainConfig(out_dir=str(path), loss=loss, width=4, depth=2, embedding_dim=6, image_size=(32, 32))
    run_dir.save_config(str(path), config.to_json())
    run_dir.save_model(str(path), make_model(config), make_loss(config))
    thresholds = (
        {"seed_threshold": 0.5, "fg_threshold": 0.4, "min_size": 2}
        if head == "spatial"
        else {"radius": 0.5, "min_size": 2}
    )
    run_dir.save_thresholds(str(path), thresholds)
    return str(path)


# JAX and PyTorch export through the same TensorFlow subprocess (the model saved as `.keras`,
# then `python -m keras_pixelembed.export`): the PyTorch run covers it, the JAX run skips the
# slow exports (minutes of the suite's time)
THROUGH_TENSORFLOW_ONCE = pytest.mark.skipif(
    BACKEND == "jax", reason="JAX exports through the same TensorFlow subprocess as PyTorch, tested there"
)
