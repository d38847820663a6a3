"""The activation a loss applies to `y_pred` before it computes anything."""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_pixelembed.ops.numerics import l2_normalize

_SPECIAL = ("l2_normalize",)


def get_activation(activation: str | None) -> Callable:
    """Resolves an activation name for a loss.

    Args:
        activation: `None` (identity), `"l2_normalize"` (unit vectors along the channel
            axis) or any Keras activation name such as `"sigmoid"` or `"tanh"`.

    Returns:
        A function of one tensor.
    """
    if activation is None:
        return lambda x: x
    if not isinstance(activation, str):
        raise ValueError(
            "Invalid value for argument `activation`. Expected None, 'l2_normalize' or the "
            f"name of a Keras activation (a string). Received: activation={activation!r}"
        )
    if activation == "l2_normalize":
        return l2_normalize
    try:
        return keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "Invalid value for argument `activation`. Expected None, 'l2_normalize' or the "
            f"name of a Keras activation. Received: activation={activation!r}"
        ) from error
