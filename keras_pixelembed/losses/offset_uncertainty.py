"""OffsetUncertaintyLoss: semantic segmentation with offsets, uncertainty and OHEM cross-entropy."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.losses.base import PixelLoss
from keras_pixelembed.ops._backend import is_concrete
from keras_pixelembed.ops.numerics import safe_divide
from keras_pixelembed.ops.sampling import bilinear_sample, nearest_targets
from keras_pixelembed.validation import check_integer, check_number

_EPS = 1e-7


def ohem_cross_entropy(ce, p_true, valid, threshold: float, min_kept: float):
    """Online hard example mining: the mean cross-entropy of the kept pixels of each image.

    A valid pixel is kept when its probability of the true class is below `threshold`, and the
    hardest `ceil(min_kept * |valid|)` valid pixels (lowest probability; ties at the boundary
    are all kept) are kept whatever their probability. The selection carries no gradient.

    Args:
        ce: `(batch, pixels)` cross-entropy of each pixel.
        p_true: `(batch, pixels)` probability of the true class.
        valid: `(batch, pixels)` bool.
        threshold: `ohem_threshold`.
        min_kept: fraction of valid pixels always kept.

    Returns:
        `(batch,)`, 0 for an image without valid pixels.
    """
    ce, valid = ops.convert_to_tensor(ce), ops.convert_to_tensor(valid)
    p = ops.stop_gradient(ops.convert_to_tensor(p_true))
    ordered = ops.sort(ops.where(valid, p, 2.0 * ops.ones_like(p)), axis=-1)
    n_valid = ops.sum(ops.cast(valid, "float32"), axis=-1)
    k = ops.cast(ops.ceil(min_kept * n_valid), "int32")
    kth = ops.take_along_axis(ordered, ops.expand_dims(ops.maximum(k - 1, 0), -1), axis=-1)
    hardest = ops.logical_and(ops.greater(ops.expand_dims(k, -1), 0), ops.less_equal(p, kth))
    keep = ops.cast(ops.logical_and(valid, ops.logical_or(ops.less(p, threshold), hardest)), ce.dtype)
    return safe_divide(ops.sum(keep * ce, axis=-1), ops.sum(keep, axis=-1))


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class OffsetUncertaintyLoss(PixelLoss):
    """Offset + uncertainty semantic-segmentation loss with OHEM cross-entropy.

    This loss needs full semantic supervision (a class for every pixel), unlike the embedding
    losses of this package. `y_true` is a class map `(batch, h, w)` (or `(batch, h, w, 1)`) with
    `ignore_index` for pixels left out; `y_pred` is `(batch, h, w, num_classes + 3)`, channels
    `[class logits, dy, dx, u_logit]`. Volumes: a class map `(batch, d, h, w)` and `y_pred`
    `(batch, d, h, w, num_classes + 4)`, `[class logits, dz, dy, dx, u_logit]`, with trilinear
    sampling and offsets in fractions of (depth, height, width).

        o(x)   = max_offset * tanh(raw offsets)           fractions of (height, width)
        y_i    = softmax(logits)
        y_s(x) = y_i(x + o(x))                            bilinear, clamped at the border
        U      = sigmoid(u_logit);  y_f = (1 - U) y_i + U y_s
        L_sem  = OHEM(y_f) + kappa OHEM(y_s) + lam OHEM(y_i)
        L_u    = BCE(U, t),  t(x) = 1[H(x) = H(nearest pixel to x + o(x))]  (no gradient;
                 0 when that pixel is outside the image)
        L      = L_sem + L_u

    L_u is the binary cross-entropy -[t log U + (1 - t) log(1 - U)] (a "(1 - log U)" second
    term, as sometimes written, would not be a cross-entropy). An offset of `o` moves
    `o * height` rows and `o * width` columns. Pixels whose offset target is an ignored pixel are
    left out of L_u (their target is unknown).

    Args:
        num_classes: number of classes C; `y_pred` has C + 3 channels.
        max_offset: bound on the offsets, in fractions of the image size. Defaults to `0.5`.
        kappa: weight of OHEM(y_s). Defaults to `0.5`.
        lam: weight of OHEM(y_i). Defaults to `0.5`.
        ohem_threshold: pixels whose true-class probability is below it are kept.
            Defaults to `0.7`.
        min_kept: fraction of the valid pixels always kept (the hardest). Defaults to `0.2`.
        ignore_index: class value of ignored pixels. Defaults to `-1`.
        reduction: Keras reduction of the per-image losses. Defaults to
            `"sum_over_batch_size"`.
        name: optional name of the loss.
        dtype: dtype of the computation. Defaults to `None`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=OffsetUncertaintyLoss(num_classes=5))
    ```
    """

    def __init__(
        self,
        num_classes: int,
        max_offset: float = 0.5,
        kappa: float = 0.5,
        lam: float = 0.5,
        ohem_threshold: float = 0.7,
        min_kept: float = 0.2,
        ignore_index: int = -1,
        reduction: str = "sum_over_batch_size",
        name: str | None = "offset_uncertainty_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = check_integer("num_classes", num_classes, minimum=2)
        self.max_offset = check_number("max_offset", max_offset, minimum=0.0)
        self.kappa = check_number("kappa", kappa, minimum=0.0)
        self.lam = check_number("lam", lam, minimum=0.0)
        self.ohem_threshold = check_number("ohem_threshold", ohem_threshold, minimum=0.0)
        self.min_kept = check_number("min_kept", min_kept, minimum=0.0)
        if self.min_kept > 1.0:
            raise ValueError(
                f"Invalid value for argument `min_kept`. Expected a fraction in [0, 1]. Received: min_kept={min_kept!r}"
            )
        self.ignore_index = check_integer("ignore_index", ignore_index)

    def _labels(self, y_true, y_pred):
        dims = len(y_pred.shape) - 2
        if dims not in (2, 3) or y_pred.shape[-1] != self.num_classes + dims + 1:
            raise ValueError(
                f"Expected `y_pred` of shape (batch, height, width, num_classes + 3 = {self.num_classes + 3}), "
                f"channels [logits, dy, dx, u_logit], or a volume's (batch, depth, height, width, num_classes + 4 = "
                f"{self.num_classes + 4}), channels [logits, dz, dy, dx, u_logit]. "
                f"Received: y_pred.shape={tuple(y_pred.shape)}"
            )
        if len(y_true.shape) == dims + 2 and y_true.shape[-1] == 1:
            y_true = y_true[..., 0]
        if len(y_true.shape) != dims + 1:
            what = "(batch, depth, height, width)" if dims == 3 else "(batch, height, width)"
            raise ValueError(
                f"Expected `y_true` to be a class map {what}. Received: y_true.shape={tuple(y_true.shape)}"
            )
        labels = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")
        valid = ops.not_equal(labels, self.ignore_index)
        if is_concrete(labels):
            bad = ops.logical_and(
                valid, ops.logical_or(ops.less(labels, 0), ops.greater_equal(labels, self.num_classes))
            )
            bad_values = ops.convert_to_numpy(labels)[ops.convert_to_numpy(bad)]
            if bad_values.size:
                value = int(bad_values[0])
                raise ValueError(
                    f"`y_true` holds class {value}, outside 0..{self.num_classes - 1} "
                    f"(num_classes={self.num_classes}) and not ignore_index={self.ignore_index}."
                )
        return labels, valid

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        labels, valid = self._labels(ops.convert_to_tensor(y_true), y_pred)
        c = self.num_classes
        dims = len(y_pred.shape) - 2
        shape = ops.shape(y_pred)
        size = ops.cast(ops.stack([shape[1 + a] for a in range(dims)]), y_pred.dtype)
        offsets = self.max_offset * ops.tanh(y_pred[..., c : c + dims]) * size
        u_logit = y_pred[..., c + dims]
        log_p_i = ops.log_softmax(y_pred[..., :c], axis=-1)
        y_i = ops.exp(log_p_i)
        y_s = bilinear_sample(y_i, offsets)
        u = ops.expand_dims(ops.sigmoid(u_logit), -1)
        y_f = (1.0 - u) * y_i + u * y_s

        onehot = ops.one_hot(ops.clip(labels, 0, c - 1), c, dtype=y_pred.dtype)
        flat = lambda x: ops.reshape(x, (shape[0], -1))  # noqa: E731
        valid_flat = flat(valid)

        def ohem_of(probs, log_probs=None):
            p_true = ops.sum(probs * onehot, axis=-1)
            ce = -ops.sum(log_probs * onehot, axis=-1) if log_probs is not None else -ops.log(ops.maximum(p_true, _EPS))
            return ohem_cross_entropy(flat(ce), flat(p_true), valid_flat, self.ohem_threshold, self.min_kept)

        semantic = ohem_of(y_f) + self.kappa * ohem_of(y_s) + self.lam * ohem_of(y_i, log_p_i)

        target, inside = nearest_targets(labels, ops.stop_gradient(offsets))
        agree = ops.logical_and(inside, ops.equal(target, labels))
        known = ops.logical_and(
            valid, ops.logical_or(ops.logical_not(inside), ops.not_equal(target, self.ignore_index))
        )
        t = ops.cast(agree, y_pred.dtype)
        bce = ops.softplus(u_logit) - t * u_logit  # -[t log U + (1 - t) log(1 - U)]
        known = ops.cast(known, y_pred.dtype)
        uncertainty = safe_divide(ops.sum(flat(known * bce), axis=-1), ops.sum(flat(known), axis=-1))
        return semantic + uncertainty

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "max_offset": self.max_offset,
                "kappa": self.kappa,
                "lam": self.lam,
                "ohem_threshold": self.ohem_threshold,
                "min_kept": self.min_kept,
                "ignore_index": self.ignore_index,
            }
        )
        return config
