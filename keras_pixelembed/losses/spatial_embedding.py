"""SpatialEmbeddingLoss (Neven et al., CVPR 2019): offsets to centers, learned bandwidths, seeds."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.layers.spatial import coordinate_grid
from keras_pixelembed.losses.base import PixelLoss, check_integer, check_number
from keras_pixelembed.losses.lovasz import lovasz_hinge_rows
from keras_pixelembed.ops.masks import parse_mask_set, validate_max_instances
from keras_pixelembed.ops.numerics import safe_divide


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class SpatialEmbeddingLoss(PixelLoss):
    """Instance segmentation by jointly optimizing spatial embeddings and clustering bandwidth.

    `y_pred (batch, h, w, 2 + n_sigma + 1)` is the raw output of `SpatialEmbeddingHead`,
    channels `[dy, dx, sigma_1..sigma_n, seed_logit]`; `y_true` is a label map (0 background,
    negative ignored) or a mask stack. For each image, with Omega its valid pixels:

        e(x)    = tanh(offset(x)) + position(x)        position = (row, col) * pixel_size
        seed(x) = sigmoid(seed_logit(x))
        c_m     = mean of e over m    (of position over m when to_center=True)
        s_m     = mean of sigma over m, per channel
        phi_m(x) = exp(-sum_c exp(sigma_scale s_m,c) (e_c(x) - c_m,c)^2)    for x in Omega
        L_inst  = 1/M sum_m LovaszHinge(2 phi_m - 1, m)            over Omega
        L_var   = 1/M sum_m mean_{x in m, c} (sigma_c(x) - sg(s_m,c))^2
        L_seed  = 1/|Omega| [fg_w sum_m sum_{x in m} (seed(x) - sg(phi_m(x)))^2
                              + sum_{x in Omega in no mask} seed(x)^2]
        L       = w_inst L_inst + w_var L_var + w_seed L_seed

    With `n_sigma=1` one bandwidth serves both axes. No mask: L_inst = L_var = 0. Everything is
    vectorized over the batch and the masks: the `(batch, pixels, K)` tensor of phi is built
    once (two coordinates, so in the direct form), and the Lovasz hinge sorts each (image,
    mask) row once.

    Args:
        n_sigma: number of bandwidth channels, 1 or 2.
        pixel_size: size of a pixel in embedding units; matches `CoordinateGrid` and the
            clustering. Defaults to `1 / 1024`.
        sigma_scale: the factor inside `exp(sigma_scale * s)`. Defaults to `10.0`.
        w_inst, w_var, w_seed: weights of the three terms. Default to `1.0`, `10.0`, `1.0`.
        foreground_weight: weight of the seed term on mask pixels. Defaults to `10.0`.
        to_center: center each mask at its mean position instead of its mean embedding.
        max_instances: number of mask slots of a label map. Defaults to `64`.
        reduction, name, dtype: as for every Keras loss.

    Example:

    ```python
    inputs = keras.Input((None, None, 3))
    features = my_backbone(inputs)
    outputs = SpatialEmbeddingHead(n_sigma=2)(features)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=SpatialEmbeddingLoss(n_sigma=2))
    ```
    """

    def __init__(
        self,
        n_sigma: int = 1,
        pixel_size: float = 1.0 / 1024,
        sigma_scale: float = 10.0,
        w_inst: float = 1.0,
        w_var: float = 10.0,
        w_seed: float = 1.0,
        foreground_weight: float = 10.0,
        to_center: bool = False,
        max_instances: int = 64,
        reduction: str = "sum_over_batch_size",
        name: str | None = "spatial_embedding_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.n_sigma = check_integer("n_sigma", n_sigma, minimum=1)
        if self.n_sigma > 2:
            raise ValueError(f"Invalid value for argument `n_sigma`. Expected 1 or 2. Received: n_sigma={n_sigma!r}")
        self.pixel_size = check_number("pixel_size", pixel_size, minimum=0.0, strict=True)
        self.sigma_scale = check_number("sigma_scale", sigma_scale)
        self.w_inst = check_number("w_inst", w_inst, minimum=0.0)
        self.w_var = check_number("w_var", w_var, minimum=0.0)
        self.w_seed = check_number("w_seed", w_seed, minimum=0.0)
        self.foreground_weight = check_number("foreground_weight", foreground_weight, minimum=0.0)
        if not isinstance(to_center, bool):
            raise ValueError(f"Invalid value for argument `to_center`. Expected a bool. Received: to_center={to_center!r}")
        self.to_center = to_center
        self.max_instances = validate_max_instances(max_instances)

    @property
    def channels(self) -> int:
        return 2 + self.n_sigma + 1

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_pred.shape) == 4 and y_pred.shape[-1] != self.channels:
            raise ValueError(
                f"`y_pred` must have 2 + n_sigma + 1 = {self.channels} channels "
                f"[dy, dx, sigma x {self.n_sigma}, seed_logit] for n_sigma={self.n_sigma}. "
                f"Received: y_pred.shape={tuple(y_pred.shape)}"
            )
        mask_set = parse_mask_set(y_true, y_pred, self.max_instances, dtype=y_pred.dtype)
        shape = ops.shape(y_pred)
        batch, height, width = shape[0], shape[1], shape[2]
        pred = ops.reshape(y_pred, (batch, -1, self.channels))
        positions = ops.expand_dims(coordinate_grid(height, width, self.pixel_size, dtype=pred.dtype), 0)
        embeddings = ops.tanh(pred[..., :2]) + positions
        sigma = pred[..., 2 : 2 + self.n_sigma]
        seed = ops.sigmoid(pred[..., 2 + self.n_sigma])

        # Everything of size pixels x masks is laid out (batch, K, pixels): one Lovasz row per
        # (image, mask) without a transpose.
        num_slots = mask_set.num_slots
        if mask_set.labels is not None:
            ids = ops.reshape(ops.arange(1, num_slots + 1, dtype="int32"), (1, -1, 1))
            members = ops.cast(ops.equal(ops.expand_dims(mask_set.labels, 1), ids), pred.dtype)
        else:
            members = ops.transpose(mask_set.masks, (0, 2, 1))
        valid = mask_set.valid
        counts = ops.sum(members, axis=-1)
        present = ops.cast(ops.greater(counts, 0), pred.dtype)
        n_instances = ops.sum(present, axis=-1)
        n_valid = ops.sum(valid, axis=-1)

        def mask_means(values):  # (batch, pixels, c) -> (batch, K, c)
            return safe_divide(ops.einsum("bkp,bpc->bkc", members, values), ops.expand_dims(counts, -1))

        def over_instances(per_mask):
            return safe_divide(ops.sum(per_mask * present, axis=-1), n_instances)

        if self.to_center:
            centers = safe_divide(ops.einsum("bkp,pc->bkc", members, positions[0]), ops.expand_dims(counts, -1))
        else:
            centers = mask_means(embeddings)
        s = mask_means(sigma)
        bandwidth = ops.exp(self.sigma_scale * s)
        if self.n_sigma == 1:
            bandwidth = ops.concatenate([bandwidth, bandwidth], axis=-1)

        # phi (batch, K, pixels); two coordinates, in the direct form (no cancellation).
        exponent = 0.0
        for c in range(2):
            diff = ops.expand_dims(embeddings[..., c], 1) - ops.expand_dims(centers[..., c], -1)
            exponent = exponent + ops.expand_dims(bandwidth[..., c], -1) * ops.square(diff)
        phi = ops.exp(-exponent)

        # L_inst: hinge errors of the logits 2 phi - 1 are 1 - (2 phi - 1)(2 m - 1) = 2 |m - phi|;
        # the Lovasz hinge is positively homogeneous, so the 2 comes out of the sort.
        errors = ops.reshape(ops.abs(members - phi), (batch * num_slots, -1))
        valid_rows = ops.reshape(ops.broadcast_to(ops.expand_dims(valid, 1), ops.shape(members)), ops.shape(errors))
        lovasz = lovasz_hinge_rows(errors, ops.reshape(members, ops.shape(errors)), valid_rows)
        l_inst = over_instances(2.0 * ops.reshape(lovasz, (batch, num_slots)))

        # L_var: spread of sigma inside each mask around its (stopped) mean.
        s_fixed = ops.stop_gradient(s)
        if mask_set.labels is not None:
            # each pixel is in at most one mask: compare it with its own mask's mean, O(pixels)
            own = ops.einsum("bkp,bkc->bpc", members, s_fixed)
            in_any = ops.sum(members, axis=1)
            spread = ops.einsum("bkp,bp->bk", members, ops.sum(ops.square(sigma - own), axis=-1) * in_any)
        else:
            spread = 0.0
            for c in range(self.n_sigma):
                diff = ops.expand_dims(sigma[..., c], 1) - ops.expand_dims(s_fixed[..., c], -1)
                spread = spread + ops.sum(members * ops.square(diff), axis=-1)
            in_any = ops.max(members, axis=1) if num_slots else ops.zeros_like(valid)
        l_var = over_instances(safe_divide(spread, counts * self.n_sigma))

        # L_seed: seeds regress phi inside the masks and 0 on the valid pixels in no mask.
        fg = ops.sum(members * ops.square(ops.expand_dims(seed, 1) - ops.stop_gradient(phi)), axis=(1, 2))
        bg = ops.sum(valid * (1.0 - in_any) * ops.square(seed), axis=-1)
        l_seed = safe_divide(self.foreground_weight * fg + bg, n_valid)

        return self.w_inst * l_inst + self.w_var * l_var + self.w_seed * l_seed

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "n_sigma": self.n_sigma,
                "pixel_size": self.pixel_size,
                "sigma_scale": self.sigma_scale,
                "w_inst": self.w_inst,
                "w_var": self.w_var,
                "w_seed": self.w_seed,
                "foreground_weight": self.foreground_weight,
                "to_center": self.to_center,
                "max_instances": self.max_instances,
            }
        )
        return config
