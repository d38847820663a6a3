"""MetricLearningLoss (Fathi et al. 2017): pairwise logistic loss on sampled pixels."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.losses.base import MaskSetLoss
from keras_pixelembed.ops.instance_stats import pixel_centroid_sq_distances
from keras_pixelembed.ops.numerics import safe_divide
from keras_pixelembed.ops.spatial import LN2
from keras_pixelembed.validation import check_integer


def pair_log_similarity(sq_dist, eps: float = 1e-7):
    """`log sigma` and `log(1 - sigma)` of sigma = 2 / (1 + exp(d^2)), in stable forms.

    log sigma = log 2 - softplus(d^2); log(1 - sigma) = log(tanh(d^2 / 2)), with d^2 clamped at
    `eps` inside the second so that it stays finite (about -15.2) as d -> 0.
    """
    log_same = LN2 - ops.softplus(sq_dist)
    log_diff = ops.log(ops.tanh(ops.maximum(sq_dist, eps) / 2.0))
    return log_same, log_diff


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class MetricLearningLoss(MaskSetLoss):
    """The pairwise loss of "Semantic Instance Segmentation via Deep Metric Learning"
    (Fathi et al., 2017, arXiv:1703.10277).

    With sigma(x1, x2) = 2 / (1 + exp(||z_x1 - z_x2||^2)) and S a set of pixels drawn from the
    masks:

        L = -(1/|S|) sum_{x1, x2 in S} sum_m 1[x1 in m] (1/|m|)
              ( 1[x2 in m] log sigma(x1, x2) + 1[x2 not in m] log(1 - sigma(x1, x2)) )

    S is a set. `samples_per_mask=None` is the dense loss: S holds every pixel that lies in at
    least one mask, once: a pixel in two overlapping masks is one element of S (one row and one
    column of the pair sum, counted once in |S|), and the inner sum over m covers both of its
    masks. It costs |S|^2; for small images and tests. With `samples_per_mask=k`, up to k pixels
    are drawn uniformly without replacement from each mask (all of them when the mask is
    smaller) and the pairs are weighted by the inverse of their sampling probability (a pixel
    reachable through several masks shares its weight among them), so that the sampled loss is
    an unbiased estimate of the dense value (same scale, whatever k); |S| in the normaliser is
    the dense count.

    Args:
        samples_per_mask: pixels drawn from each mask, or None for every pixel. Defaults to `10`.
        activation: applied to `y_pred` inside the loss. Defaults to `None`.
        seed: seed of the loss's `keras.random.SeedGenerator`; a seeded run repeats.
            Defaults to `None`.
        max_instances: bound on masks per image (static shapes under jit). Defaults to `64`.
        reduction: Keras reduction of the per-image losses. Defaults to
            `"sum_over_batch_size"`.
        name: optional name of the loss.
        dtype: dtype of the computation. Defaults to `None`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=MetricLearningLoss(samples_per_mask=10, seed=0))
    ```
    """

    def __init__(
        self,
        samples_per_mask: int | None = 10,
        activation: str | None = None,
        seed: int | None = None,
        max_instances: int = 64,
        reduction: str = "sum_over_batch_size",
        name: str | None = "metric_learning_loss",
        dtype=None,
    ):
        super().__init__(
            activation=activation, max_instances=max_instances, reduction=reduction, name=name, dtype=dtype
        )
        self.samples_per_mask = check_integer("samples_per_mask", samples_per_mask, minimum=1, allow_none=True)
        self.seed = check_integer("seed", seed, allow_none=True)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compute(self, instances):
        inv_size = safe_divide(ops.ones_like(instances.counts), instances.counts)  # (B, K)
        in_set = instances.in_any()  # (B, P): the pixels of S
        n_set = ops.sum(in_set, axis=-1)  # |S| of the dense loss
        if self.samples_per_mask is None:
            z = instances.embeddings
            slot_members = ops.transpose(instances.members, (0, 2, 1))  # (B, P, K)
            pair_weight = ops.expand_dims(in_set, 2) * ops.expand_dims(in_set, 1)
        else:
            z, slot_members, pair_weight = self._sample(instances)
        sq = pixel_centroid_sq_distances(z, z)  # every slot against every slot (symmetric)
        log_same, log_diff = pair_log_similarity(sq)
        weighted = slot_members * ops.expand_dims(inv_size, 1)  # 1[x1 in m] / |m|
        same = ops.einsum("bak,bck->bac", weighted, slot_members)  # sum_m 1[x1 in m] 1[x2 in m] / |m|
        total = ops.expand_dims(ops.sum(weighted, axis=-1), -1)  # sum_m 1[x1 in m] / |m|
        per_pair = same * log_same + (total - same) * log_diff
        return -safe_divide(ops.sum(pair_weight * per_pair, axis=(1, 2)), n_set)

    def _sample(self, instances):
        """Draws up to `samples_per_mask` pixels of each mask; returns the drawn slots'
        embeddings `(B, S, c)`, their memberships `(B, S, K)` and the pair weights `(B, S, S)`
        that make the estimate unbiased."""
        members, counts = instances.members, instances.counts  # (B, K, P), (B, K)
        k_slots, s = instances.num_slots, self.samples_per_mask
        batch, pixels = ops.shape(members)[0], ops.shape(members)[2]
        noise = keras.random.uniform((batch, k_slots, pixels), seed=self.seed_generator, dtype=members.dtype)
        keys = ops.where(ops.greater(members, 0), noise + 1.0, noise * 0.0)
        take = min(s, members.shape[2]) if members.shape[2] is not None else s
        _, index = ops.top_k(keys, take, sorted=True)  # (B, K, take): distinct pixels, members first
        drawn = ops.minimum(counts, float(s))  # n_k, pixels actually drawn from mask k
        position = ops.arange(take, dtype=counts.dtype)
        active = ops.cast(ops.less(position, ops.expand_dims(drawn, -1)), members.dtype)  # (B, K, take)
        index = ops.reshape(index, (batch, -1))  # (B, S), S = K * take
        z = ops.take_along_axis(instances.embeddings, ops.expand_dims(index, -1), axis=1)
        gather = ops.broadcast_to(ops.expand_dims(index, 1), (batch, k_slots, k_slots * take))
        slot_members = ops.transpose(ops.take_along_axis(members, gather, axis=2), (0, 2, 1))  # (B, S, K)
        # S is a set: a pixel in several masks can be drawn through each of them, so each draw
        # counts 1 / (number of masks holding the pixel), and the sum over draws estimates the
        # sum over S. Inverse inclusion weights: |m| / n per draw; for two distinct draws from
        # the same mask (without replacement) |m| (|m| - 1) / (n (n - 1)), i.e. (|m|/n)^2 times
        # the correction below. Pairs of one pixel with itself contribute exactly 0.
        multiplicity = ops.sum(slot_members, axis=-1)
        weight = ops.reshape(active * ops.expand_dims(safe_divide(counts, drawn), -1), (batch, -1))
        weight = safe_divide(weight, multiplicity)
        pair_weight = ops.expand_dims(weight, 2) * ops.expand_dims(weight, 1)
        same_draw = safe_divide((counts - 1.0) * drawn, counts * (drawn - 1.0))
        group = ops.repeat(ops.arange(k_slots), take)
        same_group = ops.cast(ops.equal(ops.expand_dims(group, 1), ops.expand_dims(group, 0)), members.dtype)
        correction = ops.reshape(ops.repeat(same_draw, take, axis=1), (batch, -1))
        correction = ops.expand_dims(correction, -1) * same_group + (1.0 - same_group)
        return z, slot_members, pair_weight * correction

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"samples_per_mask": self.samples_per_mask, "seed": self.seed})
        return config
