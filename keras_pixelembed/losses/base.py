"""Shared machinery of the losses: dtype config, activation, mask parsing."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.ops.activations import get_activation
from keras_pixelembed.ops.instance_stats import Instances
from keras_pixelembed.ops.masks import parse_mask_set, validate_max_instances

__all__ = ["MaskSetLoss", "PixelLoss"]


class PixelLoss(keras.losses.Loss):
    """A `keras.losses.Loss` whose config also holds its `dtype` (Keras' own leaves it out)."""

    def __init__(self, reduction: str = "sum_over_batch_size", name: str | None = None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._dtype_arg = None if dtype is None else self.dtype

    def get_config(self) -> dict:
        config = super().get_config()
        config["dtype"] = self._dtype_arg
        return config


class MaskSetLoss(PixelLoss):
    """Base class of the losses that take a mask set (label map or mask stack) as `y_true`.

    Subclasses implement `compute(instances)` returning per-image losses `(batch,)`, from the
    per-instance statistics of the embeddings (after the activation) and the mask set.
    """

    def __init__(
        self,
        activation: str | None = None,
        max_instances: int = 64,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._activation_fn = get_activation(activation)
        self.activation = activation
        self.max_instances = validate_max_instances(max_instances)

    def instances(self, y_true, y_pred) -> Instances:
        """Activation, mask parsing and per-instance statistics, shared by every subclass."""
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        mask_set = parse_mask_set(y_true, y_pred, self.max_instances, dtype=y_pred.dtype)
        z = self._activation_fn(y_pred)
        z = ops.reshape(z, (ops.shape(z)[0], -1, z.shape[-1]))
        return Instances(z, mask_set)

    def call(self, y_true, y_pred):
        return self.compute(self.instances(y_true, y_pred))

    def compute(self, instances: Instances):
        raise NotImplementedError

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"activation": self.activation, "max_instances": self.max_instances})
        return config
