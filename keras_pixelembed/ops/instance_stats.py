"""Per-instance statistics, computed once and shared by every loss.

Everything is vectorized over the batch and the mask slots; no tensor of size
batch x pixels x masks x channels is ever built.

* Memberships are laid out `(batch, K, pixels)`, slot-major: one contiguous row per (image,
  mask), which is what the reductions over pixels and the Lovasz hinge's per-mask sort want.
* Sums over masks are matrix products of the `(batch, K, pixels)` membership with the
  embeddings (fast BLAS on every backend). Label maps (each pixel in at most one mask) get
  each pixel's distance to its own centroid in the direct form, O(batch x pixels x channels).
* Mask stacks (masks may overlap) use the expanded distances below for their masks.
* Distances from every pixel to every centroid, `(batch, K, pixels)`, are only built for the
  terms that need them (repulsion of every other pixel), in the expanded form
  `|z|^2 - 2 z.mu + |mu|^2` after centring the embeddings of each image.
"""

from __future__ import annotations

from collections.abc import Callable

from keras import ops

from keras_pixelembed.ops._backend import gather_rows, is_concrete, segment_sum
from keras_pixelembed.ops.masks import MaskSet
from keras_pixelembed.ops.numerics import SQRT_EPS, safe_divide, safe_norm, safe_sqrt


class Instances:
    """Per-instance statistics of one batch of embeddings and their mask set.

    Attributes:
        members: `(batch, K, pixels)` float 0/1, pixel in mask (slot-major).
        counts: `(batch, K)` pixels per mask, |m|.
        present: `(batch, K)` 1.0 where the mask has at least one valid pixel.
        n_instances: `(batch,)` M, the number of non-empty masks.
        n_valid: `(batch,)` |Omega|, the number of valid pixels.
        means: `(batch, K, channels)` mu_m (0 for empty slots); gradients flow through it.

    Args:
        embeddings: `(batch, pixels, channels)`.
        mask_set: the parsed `y_true` (`parse_mask_set`).
    """

    def __init__(self, embeddings, mask_set: MaskSet, by_ids: bool | None = None):
        self.embeddings = embeddings
        self.mask_set = mask_set
        self.num_slots = mask_set.num_slots
        self.n_valid = ops.sum(mask_set.valid, axis=-1)
        # Label maps in eager calls: sums over masks are segment sums over the pixels' ids,
        # O(batch x pixels), and the (batch, K, pixels) memberships are only built if asked for.
        if by_ids is None:
            by_ids = is_concrete(embeddings)
        self.by_ids = mask_set.labels is not None and by_ids
        self._members = None
        if self.by_ids:
            labels = mask_set.labels
            batch = ops.shape(labels)[0]
            offsets = ops.reshape(ops.arange(batch, dtype="int32") * (self.num_slots + 1), (-1, 1))
            # slot 0 of each image collects its pixels in no mask and its ignored ones
            self.ids = ops.reshape(offsets + ops.maximum(labels, 0), (-1,))
            self.counts = self.mask_sums(ops.ones_like(mask_set.valid))
        else:
            self.counts = ops.sum(self.members, axis=-1)
        self.present = ops.cast(ops.greater(self.counts, 0), embeddings.dtype)
        self.n_instances = ops.sum(self.present, axis=-1)
        self.means = self.mask_means(embeddings)

    @property
    def members(self):
        """`(batch, K, pixels)` float 0/1, pixel in mask (slot-major)."""
        if self._members is None:
            mask_set = self.mask_set
            if mask_set.labels is not None:
                ids = ops.reshape(ops.arange(1, self.num_slots + 1, dtype="int32"), (1, -1, 1))
                self._members = ops.cast(ops.equal(ops.expand_dims(mask_set.labels, 1), ids), self.embeddings.dtype)
            else:
                self._members = ops.cast(ops.transpose(mask_set.masks, (0, 2, 1)), self.embeddings.dtype)
        return self._members

    @property
    def is_label_map(self) -> bool:
        """Whether every pixel lies in at most one mask (a label map)."""
        return self.mask_set.labels is not None

    def mask_sums(self, values):
        """`sum_{x in m} values(x)` for every mask: `(batch, K)` from `(batch, pixels)`, or
        `(batch, K, c)` from `(batch, pixels, c)`."""
        if not self.by_ids:
            if len(values.shape) == 2:
                return ops.einsum("bkp,bp->bk", self.members, values)
            return ops.einsum("bkp,bpc->bkc", self.members, values)
        batch = ops.shape(self.mask_set.labels)[0]
        tail = tuple(ops.shape(values)[2:])
        sums = segment_sum(ops.reshape(values, (-1, *tail)), self.ids, batch * (self.num_slots + 1))
        return ops.reshape(sums, (batch, self.num_slots + 1, *tail))[:, 1:]

    def mask_means(self, values):
        """`mean_{x in m} values(x)` for every mask, `(batch, K, c)` from `(batch, pixels, c)`
        (or `(pixels, c)`, the same for every image); 0 for empty slots."""
        if len(values.shape) == 2:  # (pixels, c)
            if not self.by_ids:
                sums = ops.einsum("bkp,pc->bkc", self.members, values)
                return safe_divide(sums, ops.expand_dims(self.counts, -1))
            batch = ops.shape(self.mask_set.labels)[0]
            values = ops.broadcast_to(ops.expand_dims(values, 0), (batch, *ops.shape(values)))
        return safe_divide(self.mask_sums(values), ops.expand_dims(self.counts, -1))

    def own(self, per_mask):
        """Label maps only: each pixel's value of its own mask, `(batch, pixels, c)` from
        `(batch, K, c)`; 0 for pixels in no mask."""
        if not self.by_ids:
            return ops.einsum("bkp,bkc->bpc", self.members, per_mask)
        batch, pixels = ops.shape(self.mask_set.labels)
        channels = ops.shape(per_mask)[-1]
        padded = ops.pad(per_mask, [[0, 0], [1, 0], [0, 0]])  # slot 0: no mask
        return ops.reshape(gather_rows(ops.reshape(padded, (-1, channels)), self.ids), (batch, pixels, channels))

    def in_any(self):
        """`(batch, pixels)` 1.0 for the pixels that lie in at least one mask."""
        if self.is_label_map:
            return ops.cast(ops.greater(self.mask_set.labels, 0), self.embeddings.dtype)
        if self.num_slots == 0:
            return ops.zeros_like(self.mask_set.valid)
        return ops.max(self.members, axis=1)

    def mean_over_instances(self, per_instance):
        """`(1/M) sum_m per_instance[m]` over the non-empty masks, `(batch,)`; 0 when M = 0."""
        return safe_divide(ops.sum(per_instance * self.present, axis=-1), self.n_instances)

    def own_distances(self):
        """Label maps only: `||z_x - mu_m(x)||` to the pixel's own centroid, `(batch, pixels)`.

        Direct form (no cancellation); 0 for pixels in no mask.
        """
        return safe_norm(self.embeddings - self.own(self.means), axis=-1) * self.in_any()

    def inside_sum(self, fn: Callable):
        """`sum_{x in m} fn(||z_x - mu_m||)` for every mask, `(batch, K)`."""
        if not self.is_label_map:
            return ops.sum(self.members * fn(self.all_distances()), axis=-1)
        return self.mask_sums(fn(self.own_distances()))

    def inside_mean(self, fn: Callable):
        """`mean_{x in m} fn(||z_x - mu_m||)` for every mask, `(batch, K)` (0 for empty slots)."""
        return safe_divide(self.inside_sum(fn), self.counts)

    def outside_mean(self, fn: Callable | None = None, derivative: Callable | None = None):
        """`1/(|Omega| - |m|) sum_{x in Omega \\ m} fn(||z_x - mu_m||)`, `(batch, K)`, with
        `derivative` the derivative of `fn`, both `None` for the distances themselves
        (`distance_sums`: one fused pass).

        0 where the mask covers all of Omega.
        """
        outside = ops.expand_dims(self.mask_set.valid, 1) - self.members
        total = distance_sums(self.embeddings, self.means, outside, fn, derivative)
        return safe_divide(total, ops.expand_dims(self.n_valid, -1) - self.counts)

    def all_distances(self):
        """`||z_x - mu_m||` for every slot and every pixel, `(batch, K, pixels)`."""
        return safe_sqrt(pixel_centroid_sq_distances(self.embeddings, self.means), fast=True)

    def centroid_distances(self):
        """Distances between the centroids of each image, `(batch, K, K)`, finite gradients at 0."""
        diff = ops.expand_dims(self.means, 2) - ops.expand_dims(self.means, 1)
        return safe_norm(diff, axis=-1)


def distance_sums(embeddings, means, weights, fn: Callable | None = None, derivative: Callable | None = None):
    """`S[b, k] = sum_x weights[b, k, x] fn(||z_bx - mu_bk||)`, `(batch, K)`, in one fused pass
    with a custom gradient: the `(batch, K, pixels)` squared distances come out of one matrix
    product (the expanded form of `pixel_centroid_sq_distances`, with `|z|^2` and `|mu|^2` as
    two more channels), and the backward pass is two reductions and two matrix products of
    `C = upstream * weights * fn'(d) / d`:

        dS/dz_x  = sum_k C_kx (z_x - mu_k) = z_x sum_k C_kx - (C^T mu)_x
        dS/dmu_k = -sum_x C_kx (z_x - mu_k) = mu_k sum_x C_kx - (C z)_k

    instead of differentiating through a dozen `(batch, K, pixels)` temporaries. Distances
    are `sqrt(max(d^2, eps))` with a zero gradient where `d^2 <= eps` (`safe_sqrt(fast=True)`).

    Args:
        embeddings: `(batch, pixels, channels)`.
        means: `(batch, K, channels)`.
        weights: `(batch, K, pixels)`, constant (no gradient flows into it).
        fn, derivative: an element-wise function of the distances and its derivative; both
            `None` for the distances themselves.
    """
    weights = ops.stop_gradient(weights)

    @ops.custom_gradient
    def fused(z, mu):
        shift = ops.mean(z, axis=1, keepdims=True)
        z, mu = z - shift, mu - shift
        # |z - mu|^2 = [z, |z|^2, 1] . [-2 mu, 1, |mu|^2]: one matrix product
        z_sq = ops.sum(z * z, axis=-1, keepdims=True)
        mu_sq = ops.sum(mu * mu, axis=-1, keepdims=True)
        z_aug = ops.concatenate([z, z_sq, ops.ones_like(z_sq)], axis=-1)
        mu_aug = ops.concatenate([-2.0 * mu, ops.ones_like(mu_sq), mu_sq], axis=-1)
        squared = ops.einsum("bkc,bpc->bkp", mu_aug, z_aug)
        clamped = ops.maximum(squared, SQRT_EPS)
        inverse = ops.rsqrt(clamped)  # 1 / d
        if fn is None:  # S = sum w d = sum (w / d) d^2, and fn' = 1
            slopes = weights * inverse
            total = ops.sum(slopes * clamped, axis=-1)
        else:
            distances = clamped * inverse
            total = ops.sum(weights * fn(distances), axis=-1)
            slopes = weights * derivative(distances) * inverse
        # No gradient where d^2 <= eps; such entries (a pixel at a centroid) are rare, and an
        # eager call that has none skips the pass.
        if not is_concrete(squared) or float(ops.min(squared)) <= SQRT_EPS:
            slopes = slopes * ops.cast(squared > SQRT_EPS, slopes.dtype)

        def grad(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX pass the upstream gradient alone
                (upstream,) = args
            c = ops.expand_dims(upstream, -1) * slopes
            grad_z = z * ops.expand_dims(ops.sum(c, axis=1), -1) - ops.einsum("bkp,bkc->bpc", c, mu)
            grad_mu = mu * ops.expand_dims(ops.sum(c, axis=-1), -1) - ops.einsum("bkp,bpc->bkc", c, z)
            return grad_z, grad_mu

        return total, grad

    return fused(embeddings, means)


def pixel_centroid_sq_distances(embeddings, means):
    """Squared distances `|z_x - mu_m|^2`, shape `(batch, K, pixels)`, clamped at >= 0.

    Expanded form after subtracting each image's mean embedding (distances do not change),
    which keeps float32 cancellation small; no `(batch, K, pixels, channels)` tensor.

    Args:
        embeddings: `(batch, pixels, channels)`.
        means: `(batch, K, channels)`.
    """
    shift = ops.stop_gradient(ops.mean(embeddings, axis=1, keepdims=True))
    z = embeddings - shift
    mu = means - shift
    z_sq = ops.expand_dims(ops.sum(ops.square(z), axis=-1), 1)
    mu_sq = ops.sum(ops.square(mu), axis=-1, keepdims=True)
    cross = ops.einsum("bkc,bpc->bkp", mu, z)
    return ops.maximum(z_sq - 2.0 * cross + mu_sq, 0.0)
