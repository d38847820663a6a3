"""Backend checks that need a framework, imported lazily."""

from __future__ import annotations

import keras


def is_concrete(x) -> bool:
    """Whether `x` holds values now (eager), as opposed to a traced or symbolic tensor.

    Value checks that raise a Python error (such as the `max_instances` bound) only run on
    concrete tensors: under `jit_compile` or `tf.function` the values are not known yet.
    """
    if isinstance(x, keras.KerasTensor):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.executing_eagerly())
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    return True
