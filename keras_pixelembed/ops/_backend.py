"""Backend checks that need a framework, imported lazily."""

from __future__ import annotations

import math
import sys

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


# Below this many values per row, PyTorch's row-wise `index_select` / `index_add` (a loop over
# rows) are far slower than the element-wise `gather` / `scatter_add`.
_SHORT_ROWS = 64


def gather_rows(x, indices):
    """`x[indices]` along the first axis, for valid int32 indices (in `[0, len(x))`: no
    negative-index handling). `keras.ops.take` on PyTorch
    normalizes negative indices and goes through `embedding`, whose backward is slow on
    millions of indices; here 1-D and long rows use `index_select`, and so do short rows
    without a gradient (its forward is the fastest), short rows with one `gather` (whose
    backward is several times faster than `index_select`'s on short rows)."""
    if keras.backend.backend() == "torch":
        import torch

        width = math.prod(x.shape[1:])
        if x.ndim == 1 or width >= _SHORT_ROWS or not x.requires_grad:
            return torch.index_select(x, 0, indices)
        index = indices.long().reshape(-1, *([1] * (x.ndim - 1))).expand(-1, *x.shape[1:])
        return torch.gather(x, 0, index)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # `keras.ops.take` adds the negative-index handling (a select by `indices < 0`), about ten
        # nodes per gather in an exported graph, run at every step of the in-graph clustering loop
        return tf.gather(x, indices, axis=0)
    return keras.ops.take(x, indices, axis=0)


def segment_sum(data, segment_ids, num_segments: int):
    """`keras.ops.segment_sum` with int32 ids in `[0, num_segments)`, in `data`'s dtype
    (PyTorch's Keras version repeats the ids and computes in float32; here `index_add` for 1-D
    data and long rows, `scatter_add` for short rows)."""
    if keras.backend.backend() == "torch":
        import torch

        out = torch.zeros((num_segments, *data.shape[1:]), dtype=data.dtype, device=data.device)
        width = math.prod(data.shape[1:])
        if data.ndim == 1 or width >= _SHORT_ROWS:
            return out.index_add(0, segment_ids, data)
        index = segment_ids.long().reshape(-1, *([1] * (data.ndim - 1))).expand(-1, *data.shape[1:])
        return out.scatter_add(0, index, data)
    return keras.ops.segment_sum(data, segment_ids, num_segments=num_segments)


def segment_min(data, segment_ids, num_segments: int):
    """`keras.ops.segment_min` (no gradient needed) with int32 ids in `[0, num_segments)`;
    `inf` for an empty segment."""
    if keras.backend.backend() == "torch":
        import torch

        out = torch.full((num_segments,), float("inf"), dtype=data.dtype, device=data.device)
        return out.scatter_reduce(0, segment_ids.long(), data, "amin")
    out = keras.ops.segment_min(data, segment_ids, num_segments=num_segments)
    return keras.ops.where(keras.ops.isfinite(out), out, float("inf"))


def channel_planes(x):
    """`(pixels, channels)` -> `(channels, pixels)`, each channel one contiguous row. On
    PyTorch's CPU as a product with the identity matrix (BLAS reads the transposed operand in
    place, and the gradient comes back in `x`'s layout: no strided copy either way; exact,
    `1 * v + 0 * w` is `v` for finite values); elsewhere a transpose (a copy on TensorFlow,
    the compiler's layout on JAX) or, on a PyTorch accelerator, a contiguous transposed copy."""
    transposed = keras.ops.transpose(x)
    if keras.backend.backend() != "torch":
        return transposed
    if x.device.type == "cpu":
        import torch

        return torch.matmul(torch.eye(x.shape[1], dtype=x.dtype), transposed)
    return transposed.contiguous()


def on_cpu(x) -> bool:
    """Whether the concrete tensor `x` lives in host memory."""
    backend = keras.backend.backend()
    if backend == "torch":
        return x.device.type == "cpu"
    if backend == "jax":
        return all(device.platform == "cpu" for device in x.devices())
    if backend == "tensorflow":
        return "CPU" in x.device.upper() or not x.device
    return True


def sort_with_indices(x, descending: bool = False):
    """`(sorted x, indices)` along the last axis, in no particular order among equal values.

    Concrete int32 tensors in host memory are sorted by NumPy: each value and its position are
    packed into one int64 (`value << 32 | position`, the same order as the value's, ties by
    position) and `np.sort` (SIMD sorting networks on x86) orders the packed keys without an
    index array, about 5x faster than PyTorch's or TensorFlow's sort with indices on this
    kind of row; the positions come back from the low 32 bits. Elsewhere (floats, traced
    tensors, accelerators) the backend's sort: on PyTorch `sort` without `stable`, faster than
    `keras.ops.argsort`, which asks for a stable sort there."""
    host = keras.backend.backend() != "numpy" and sys.byteorder == "little"
    if host and keras.ops.dtype(x) == "int32" and is_concrete(x) and on_cpu(x):
        import numpy as np

        values = keras.ops.convert_to_numpy(x)
        packed = values.astype(np.int64, order="C")
        if descending:
            np.invert(packed, out=packed)  # -v - 1: the reverse order
        np.left_shift(packed, 32, out=packed)
        np.bitwise_or(packed, np.arange(values.shape[-1], dtype=np.int64), out=packed)
        packed.sort(axis=-1)
        halves = packed.view(np.int32)  # little-endian: (position, value) pairs
        keys = np.invert(halves[..., 1::2]) if descending else np.ascontiguousarray(halves[..., 1::2])
        index_dtype = np.int64 if keras.backend.backend() == "torch" else np.int32
        indices = halves[..., 0::2].astype(index_dtype)
        return keras.ops.convert_to_tensor(keys), keras.ops.convert_to_tensor(indices)
    if keras.backend.backend() == "torch":
        import torch

        values, indices = torch.sort(x, dim=-1, descending=descending)
        return values, indices
    indices = keras.ops.argsort(-x if descending else x, axis=-1)
    return keras.ops.take_along_axis(x, indices, axis=-1), indices


def take_along_last(x, indices):
    """`keras.ops.take_along_axis(x, indices, axis=-1)` for valid indices (on PyTorch without
    the negative-index correction, a pass over the indices)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.gather(x, -1, indices.long())
    return keras.ops.take_along_axis(x, indices, axis=-1)


def float_bits(x):
    """The bits of a float32 tensor read as int32 (`keras.ops.view`, which on TensorFlow fails on
    a symbolic last dimension; `tf.bitcast` does not)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.bitcast(x, tf.int32)
    return keras.ops.view(x, "int32")
