"""Numerically guarded primitives shared by every loss (finite values and gradients)."""

from __future__ import annotations

from keras import ops


def safe_divide(x, y):
    """`x / y` where `y != 0`, else 0, with finite gradients on every backend.

    `ops.divide_no_nan` is not enough on PyTorch: the backward pass of the unselected
    branch multiplies a zero by `1 / 0` and gives NaN. Here the denominator is replaced
    before dividing.
    """
    nonzero = ops.not_equal(y, 0)
    safe_y = ops.where(nonzero, y, ops.ones_like(y))
    return ops.where(nonzero, ops.divide(x, safe_y), ops.zeros_like(x * safe_y))


# Squared values at or below this count as 0 in `safe_sqrt` (and `distance_sums`).
SQRT_EPS = 1e-12


def safe_sqrt(x, eps: float = SQRT_EPS, fast: bool = False):
    """`sqrt(max(x, 0))` with a zero (not infinite) gradient where `x <= eps`.

    `fast=True` returns `sqrt(max(x, eps))` (off by at most `sqrt(eps) = 1e-6` near 0), two
    passes over `x` instead of four, for the large `(batch, pixels, K)` distance tensors.
    """
    if fast:
        return ops.sqrt(ops.maximum(x, eps))
    positive = ops.greater(x, eps)
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), ops.zeros_like(x))


def safe_norm(x, axis: int = -1):
    """Euclidean norm over `axis` whose gradient stays finite (zero) where `x == 0`."""
    return safe_sqrt(ops.sum(ops.square(x), axis=axis))


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """Unit vectors along `axis`; zero vectors stay zero with finite gradients."""
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, eps))
