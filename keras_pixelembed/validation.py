"""Argument checks whose errors name the argument, the value and what was expected, and the
import of optional packages with the install command that brings them.

Every public constructor and function of the package checks its arguments here, so that one
wording serves the losses, the layers, the data sources and the clustering.
"""

from __future__ import annotations

import importlib
import math

import numpy as np


def check_number(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    """Returns `float(value)` or raises a `ValueError` that names the argument."""
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else (f" {'>' if strict else '>='} {minimum}")
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a finite number{bound}. Received: {name}={value!r}"
        )
    return float(value)


def check_integer(name: str, value, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """Returns `int(value)` (or None when allowed) or raises a `ValueError` that names the argument."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and minimum is not None:
        ok = value >= minimum
    if not ok:
        bound = "" if minimum is None else f" >= {minimum}"
        either = " or None" if allow_none else ""
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected an integer{bound}{either}. Received: {name}={value!r}"
        )
    return int(value)


def check_fraction(name: str, value) -> float:
    """Returns `float(value)` for a number in [0, 1], or raises a `ValueError` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a number in [0, 1]. Received: {name}={value!r}"
        )
    return float(value)


def check_choice(name: str, value, choices) -> str:
    """Returns `value` when it is one of `choices`, or raises a `ValueError` listing them."""
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of {tuple(choices)}. Received: {name}={value!r}"
        )
    return value


def check_map(name: str, array, ndim: int, min_channels: int = 1, finite: bool = True) -> np.ndarray:
    """One image's map as finite float32 with `ndim` dimensions, or a `ValueError` naming `name`.

    Args:
        name: the argument, for the message.
        array: `(height, width)` (`ndim=2`), `(height, width, channels)` (`ndim=3`) or a
            volume's `(depth, height, width, channels)` (`ndim=4`).
        ndim: 2, 3 or 4.
        min_channels: smallest number of channels accepted when there are channels.
        finite: check that every value is finite (`check_finite` does it for a part).
    """
    out = np.asarray(array)
    if out.ndim != ndim:
        what = {2: "(height, width)", 3: "(height, width, channels)", 4: "(depth, height, width, channels)"}[ndim]
        raise ValueError(f"Expected `{name}` of shape {what}, one image. Received: {name}.shape={out.shape}")
    if ndim >= 3 and out.shape[-1] < min_channels:
        raise ValueError(f"Expected `{name}` with at least {min_channels} channels. Received: {name}.shape={out.shape}")
    if not np.issubdtype(out.dtype, np.number) or np.issubdtype(out.dtype, np.complexfloating):
        raise ValueError(f"Expected `{name}` to hold real numbers. Received dtype {out.dtype}")
    out = out.astype(np.float32, copy=False)
    if finite:
        check_finite(name, out)
    return out


def check_finite(name: str, array) -> None:
    """A `ValueError` naming `name` and the count when `array` holds NaN or infinite values."""
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` holds {int(np.sum(~np.isfinite(array)))} NaN or infinite values")


# optional package -> the extra of keras-pixelembed that installs it
_EXTRAS = {
    "scipy": "cluster",
    "skimage": "cluster",
    "pycocotools": "coco",
    "matplotlib": "viz",
    "tensorflow": "tensorflow-cpu",
    "tf2onnx": "export",
    "onnx": "export",
    "onnxruntime": "export",
    "tifffile": "test",
}


def require(module: str, purpose: str):
    """Imports an optional package, or raises an `ImportError` that says what needs it and
    which extra installs it: `require("scipy.ndimage", "merge_small")`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top)
        hint = f"pip install 'keras-pixelembed[{extra}]'" if extra else f"pip install {top}"
        raise ImportError(f"{purpose} needs {top}: {hint}") from error
