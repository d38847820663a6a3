"""Values and gradients on the current Keras backend, for the test suite and the benchmarks.

Keras 3 has no backend-neutral gradient call outside `fit`; this module is the one place that
calls TensorFlow's tape, `jax.value_and_grad` or `torch.autograd` for a plain function.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np


def value_and_grad(fn: Callable, jit: bool = False, has_aux: bool = False) -> Callable:
    """`x -> (fn(x), d fn / dx)` on the current backend.

    Args:
        fn: a function of one tensor returning a scalar, or `(scalar, aux)` with `has_aux`.
        jit: compile the step (`tf.function(jit_compile=True)` / `jax.jit`); ignored on torch.
        has_aux: `fn` returns `(scalar, aux)`; the step then returns `((scalar, aux), grad)`.
    """
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = fn(x)
            return out, tape.gradient(out[0] if has_aux else out, x)

        return tf.function(step, jit_compile=True) if jit else step
    if name == "jax":
        import jax

        step = jax.value_and_grad(fn, has_aux=has_aux)
        return jax.jit(step) if jit else step
    if name == "torch":
        import torch

        def step(x):
            x = x.detach().requires_grad_(True)
            out = fn(x)
            (grad,) = torch.autograd.grad(out[0] if has_aux else out, x)
            return out, grad

        return step
    raise RuntimeError(f"unsupported backend {name}")


def per_image_value_and_grad(loss: keras.losses.Loss, y_true, y_pred):
    """A loss's per-image values `(batch,)` and the gradient of their sum with respect to
    `y_pred`, as float32 numpy arrays."""
    from keras import ops

    labels = ops.convert_to_tensor(np.asarray(y_true, np.float32))

    def total(x):
        values = loss.call(labels, x)
        return ops.sum(values), values

    (_, values), grad = value_and_grad(total, has_aux=True)(ops.convert_to_tensor(np.asarray(y_pred, np.float32)))
    return ops.convert_to_numpy(values), ops.convert_to_numpy(grad)
