"""Training on several devices or hosts with the engines users already run.

* `mirrored`: `tf.distribute.MirroredStrategy` over the visible devices (TensorFlow backend).
* `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG` (TensorFlow).
* `data_parallel`: `keras.distribution.DataParallel` over the JAX devices; across hosts when the
  user sets `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`
  (`jax.distributed.initialize`).

The losses are per-image losses reduced over the global batch, so N devices give the result
of one device on the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import os

from keras_pixelembed.validation import check_choice

CHOICES = ("none", "mirrored", "multi_worker", "data_parallel")
_BACKENDS = {"mirrored": "tensorflow", "multi_worker": "tensorflow", "data_parallel": "jax"}


def check_distribute(distribute: str, backend: str | None = None) -> str:
    """Raises a ValueError naming the backend and the choices that fit it."""
    import keras

    backend = backend or keras.backend.backend()
    check_choice("distribute", distribute, CHOICES)
    needed = _BACKENDS.get(distribute)
    if needed and needed != backend:
        fits = ["none"] + [c for c, b in _BACKENDS.items() if b == backend]
        raise ValueError(
            f"--distribute {distribute} needs the {needed} backend, but KERAS_BACKEND is {backend}. "
            f"Choices on {backend}: {', '.join(fits)}"
        )
    return distribute


def is_chief() -> bool:
    """Whether this process writes checkpoints: the chief of `TF_CONFIG` (or worker 0), or the
    only process."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    if not task:
        return int(os.environ.get("JAX_PROCESS_ID", "0")) == 0
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in config.get("cluster", {})


def strategy_scope(distribute: str):
    """`(context manager for building and compiling the model, tf strategy or None)`."""
    import keras

    check_distribute(distribute)
    if distribute == "none":
        return contextlib.nullcontext(), None
    if distribute in ("mirrored", "multi_worker"):
        import tensorflow as tf

        strategy = (
            tf.distribute.MirroredStrategy()
            if distribute == "mirrored"
            else tf.distribute.MultiWorkerMirroredStrategy()
        )
        return strategy.scope(), strategy
    import jax

    if os.environ.get("JAX_COORDINATOR_ADDRESS") and jax.process_count() == 1:
        jax.distributed.initialize()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
    return contextlib.nullcontext(), None


def shard_by_data(dataset):
    """Shards a `make_dataset` pipeline by element across workers (the sources are indexed and
    cheap to skip, and synthetic sources have no files to shard by)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
