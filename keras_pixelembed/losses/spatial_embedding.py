"""SpatialEmbeddingLoss (Neven et al., CVPR 2019): offsets to centers, learned bandwidths, seeds."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.losses.base import PixelLoss
from keras_pixelembed.losses.lovasz import lovasz_hinge_rows
from keras_pixelembed.ops.instance_stats import Instances
from keras_pixelembed.ops.masks import parse_mask_set, validate_max_instances
from keras_pixelembed.ops.numerics import safe_divide
from keras_pixelembed.ops.spatial import bandwidth, decode_spatial, spatial_channels
from keras_pixelembed.validation import check_integer, check_number


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
            raise ValueError(
                f"Invalid value for argument `to_center`. Expected a bool. Received: to_center={to_center!r}"
            )
        self.to_center = to_center
        self.max_instances = validate_max_instances(max_instances)

    @property
    def channels(self) -> int:
        return spatial_channels(self.n_sigma)

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
        parts = decode_spatial(y_pred, self.pixel_size, self.n_sigma)
        batch = ops.shape(y_pred)[0]

        def flat(x):  # (batch, h, w, c) -> (batch, pixels, c)
            return ops.reshape(x, (batch, -1, x.shape[-1]))

        # Memberships, counts and the embeddings' means per mask are the shared statistics;
        # everything of size masks x pixels is laid out (batch, K, pixels), one Lovasz row per
        # (image, mask).
        instances = Instances(flat(parts.embeddings), mask_set)
        sigma = flat(parts.sigma)
        seed = ops.reshape(parts.seeds, (batch, -1))
        if self.to_center:
            centers = instances.mask_means(ops.reshape(parts.positions, (-1, 2)))
        else:
            centers = instances.means
        s = instances.mask_means(sigma)
        phi = self._phi(instances.embeddings, centers, bandwidth(s, self.sigma_scale))
        l_inst = self._instance_term(instances, phi)
        l_var = self._variance_term(instances, sigma, ops.stop_gradient(s))
        l_seed = self._seed_term(instances, seed, ops.stop_gradient(phi))
        return self.w_inst * l_inst + self.w_var * l_var + self.w_seed * l_seed

    @staticmethod
    def _phi(embeddings, centers, bandwidths):
        """phi `(batch, K, pixels)` of every pixel for every mask; two coordinates, so in the
        direct form (no cancellation)."""
        exponent = 0.0
        for c in range(2):
            diff = ops.expand_dims(embeddings[..., c], 1) - ops.expand_dims(centers[..., c], -1)
            exponent = exponent + ops.expand_dims(bandwidths[..., c], -1) * ops.square(diff)
        return ops.exp(-exponent)

    @staticmethod
    def _instance_term(instances, phi):
        """L_inst: the Lovasz hinge of each (image, mask) row. The hinge errors of the logits
        2 phi - 1 are 1 - (2 phi - 1)(2 m - 1) = 2 |m - phi|; the Lovasz hinge is positively
        homogeneous, so the 2 comes out of the sort."""
        members = instances.members
        rows = (-1, ops.shape(members)[-1])
        errors = ops.reshape(ops.abs(members - phi), rows)
        valid = ops.reshape(ops.broadcast_to(ops.expand_dims(instances.mask_set.valid, 1), ops.shape(members)), rows)
        lovasz = lovasz_hinge_rows(errors, ops.reshape(members, rows), valid)
        return instances.mean_over_instances(2.0 * ops.reshape(lovasz, ops.shape(instances.counts)))

    def _variance_term(self, instances, sigma, s_fixed):
        """L_var: the spread of sigma inside each mask around its (stopped) mean."""
        if instances.is_label_map:  # each pixel is in at most one mask: compare it with its own mask's mean, O(pixels)
            own = instances.own(s_fixed)
            spread = ops.einsum("bkp,bp->bk", instances.members, ops.sum(ops.square(sigma - own), axis=-1))
        else:
            spread = 0.0
            for c in range(self.n_sigma):
                diff = ops.expand_dims(sigma[..., c], 1) - ops.expand_dims(s_fixed[..., c], -1)
                spread = spread + ops.sum(instances.members * ops.square(diff), axis=-1)
        return instances.mean_over_instances(safe_divide(spread, instances.counts * self.n_sigma))

    def _seed_term(self, instances, seed, phi_fixed):
        """L_seed: seeds regress phi inside the masks and 0 on the valid pixels in no mask."""
        fg = ops.sum(instances.members * ops.square(ops.expand_dims(seed, 1) - phi_fixed), axis=(1, 2))
        bg = ops.sum(instances.mask_set.valid * (1.0 - instances.in_any()) * ops.square(seed), axis=-1)
        return safe_divide(self.foreground_weight * fg + bg, instances.n_valid)

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
