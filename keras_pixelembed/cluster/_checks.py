"""Argument checks shared by the clustering functions."""

from __future__ import annotations

import numpy as np


def check_map(name: str, array, ndim: int, min_channels: int = 1) -> np.ndarray:
    """`array` as float32 with `ndim` dimensions, finite, or a ValueError naming `name`."""
    out = np.asarray(array)
    if out.ndim != ndim:
        what = "(height, width, channels)" if ndim == 3 else "(height, width)"
        raise ValueError(f"Expected `{name}` of shape {what}, one image. Received: {name}.shape={out.shape}")
    if ndim == 3 and out.shape[-1] < min_channels:
        raise ValueError(f"Expected `{name}` with at least {min_channels} channels. Received: {name}.shape={out.shape}")
    if not np.issubdtype(out.dtype, np.number) or np.issubdtype(out.dtype, np.complexfloating):
        raise ValueError(f"Expected `{name}` to hold real numbers. Received dtype {out.dtype}")
    out = out.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"`{name}` holds {int(np.sum(~np.isfinite(out)))} NaN or infinite values")
    return out


def check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Invalid value for argument `{name}`. Expected a number in [0, 1]. Received: {name}={value!r}")
    return float(value)
