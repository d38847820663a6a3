"""Per-instance statistics, computed once and shared by every loss.

Everything is vectorized over the batch and the mask slots; no tensor of size
batch x pixels x masks x channels is ever built.

* Sums over masks are matrix products of the `(batch, pixels, K)` membership with the
  embeddings (fast BLAS on every backend). Label maps (each pixel in at most one mask) get
  each pixel's distance to its own centroid in the direct form, O(batch x pixels x channels).
* Mask stacks (masks may overlap) use the expanded distances below for their masks.
* Distances from every pixel to every centroid, `(batch, pixels, K)`, are only built for the
  terms that need them (repulsion of every other pixel), in the expanded form
  `|z|^2 - 2 z.mu + |mu|^2` after centring the embeddings of each image.
"""

from __future__ import annotations

from typing import Callable

from keras import ops

from keras_pixelembed.ops.masks import MaskSet
from keras_pixelembed.ops.numerics import safe_divide, safe_norm, safe_sqrt


class Instances:
    """Per-instance statistics of one batch of embeddings and their mask set.

    Attributes:
        counts: `(batch, K)` pixels per mask, |m|.
        present: `(batch, K)` 1.0 where the mask has at least one valid pixel.
        n_instances: `(batch,)` M, the number of non-empty masks.
        n_valid: `(batch,)` |Omega|, the number of valid pixels.
        means: `(batch, K, channels)` mu_m (0 for empty slots); gradients flow through it.

    Args:
        embeddings: `(batch, pixels, channels)`.
        mask_set: the parsed `y_true` (`parse_mask_set`).
    """

    def __init__(self, embeddings, mask_set: MaskSet):
        self.embeddings = embeddings
        self.mask_set = mask_set
        self.num_slots = mask_set.num_slots
        self.n_valid = ops.sum(mask_set.valid, axis=-1)
        if mask_set.labels is not None:
            ids = ops.arange(1, self.num_slots + 1, dtype="int32")
            labels = ops.expand_dims(mask_set.labels, -1)
            self.members = ops.cast(ops.equal(labels, ids), embeddings.dtype)
        else:
            self.members = mask_set.masks
        self.counts = ops.sum(self.members, axis=1)
        sums = ops.einsum("bpk,bpc->bkc", self.members, embeddings)
        self.means = safe_divide(sums, ops.expand_dims(self.counts, -1))
        self.present = ops.cast(ops.greater(self.counts, 0), embeddings.dtype)
        self.n_instances = ops.sum(self.present, axis=-1)

    def mean_over_instances(self, per_instance):
        """`(1/M) sum_m per_instance[m]` over the non-empty masks, `(batch,)`; 0 when M = 0."""
        return safe_divide(ops.sum(per_instance * self.present, axis=-1), self.n_instances)

    def own_distances(self):
        """Label maps only: `||z_x - mu_m(x)||` to the pixel's own centroid, `(batch, pixels)`.

        Direct form (no cancellation); 0 for pixels in no mask.
        """
        own = ops.einsum("bpk,bkc->bpc", self.members, self.means)
        in_mask = ops.sum(self.members, axis=-1)
        return safe_norm(self.embeddings - own, axis=-1) * in_mask

    def inside_sum(self, fn: Callable):
        """`sum_{x in m} fn(||z_x - mu_m||)` for every mask, `(batch, K)`."""
        if self.mask_set.labels is None:
            return ops.sum(self.members * fn(self.all_distances()), axis=1)
        return ops.einsum("bpk,bp->bk", self.members, fn(self.own_distances()))

    def inside_mean(self, fn: Callable):
        """`mean_{x in m} fn(||z_x - mu_m||)` for every mask, `(batch, K)` (0 for empty slots)."""
        return safe_divide(self.inside_sum(fn), self.counts)

    def outside_mean(self, fn: Callable):
        """`1/(|Omega| - |m|) sum_{x in Omega \\ m} fn(||z_x - mu_m||)`, `(batch, K)`.

        0 where the mask covers all of Omega.
        """
        outside = ops.expand_dims(self.mask_set.valid, -1) - self.members
        total = ops.sum(outside * fn(self.all_distances()), axis=1)
        return safe_divide(total, ops.expand_dims(self.n_valid, -1) - self.counts)

    def all_distances(self):
        """`||z_x - mu_m||` for every pixel and every slot, `(batch, pixels, K)`."""
        return safe_sqrt(pixel_centroid_sq_distances(self.embeddings, self.means), fast=True)

    def centroid_distances(self):
        """Distances between the centroids of each image, `(batch, K, K)`, finite gradients at 0."""
        diff = ops.expand_dims(self.means, 2) - ops.expand_dims(self.means, 1)
        return safe_norm(diff, axis=-1)


def pixel_centroid_sq_distances(embeddings, means):
    """Squared distances `|z_x - mu_m|^2`, shape `(batch, pixels, K)`, clamped at >= 0.

    Expanded form after subtracting each image's mean embedding (distances do not change),
    which keeps float32 cancellation small; no `(batch, pixels, K, channels)` tensor.

    Args:
        embeddings: `(batch, pixels, channels)`.
        means: `(batch, K, channels)`.
    """
    shift = ops.stop_gradient(ops.mean(embeddings, axis=1, keepdims=True))
    z = embeddings - shift
    mu = means - shift
    z_sq = ops.sum(ops.square(z), axis=-1, keepdims=True)
    mu_sq = ops.expand_dims(ops.sum(ops.square(mu), axis=-1), 1)
    cross = ops.einsum("bpc,bkc->bpk", z, mu)
    return ops.maximum(z_sq - 2.0 * cross + mu_sq, 0.0)
