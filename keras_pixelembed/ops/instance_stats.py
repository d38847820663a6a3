"""Per-instance statistics, computed once and shared by every loss.

Everything is vectorized over the batch and the mask slots; no tensor of size
batch x pixels x masks x channels is ever built (distances use the expanded form
`|z|^2 - 2 z.mu + |mu|^2` after centring, which keeps float32 cancellation small).
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_pixelembed.ops.numerics import safe_divide, safe_norm, safe_sqrt


class InstanceStats(NamedTuple):
    """Statistics of the masks of a batch.

    Attributes:
        counts: `(batch, K)` pixels per mask (|m|).
        present: `(batch, K)` 1.0 where the mask has at least one valid pixel.
        n_instances: `(batch,)` M, the number of non-empty masks.
        n_valid: `(batch,)` |Omega|, the number of valid pixels.
        means: `(batch, K, channels)` mu_m; zero for empty slots. Gradients flow through it.
    """

    counts: object
    present: object
    n_instances: object
    n_valid: object
    means: object


def instance_statistics(embeddings, masks, valid) -> InstanceStats:
    """Counts and mean embeddings of every mask.

    Args:
        embeddings: `(batch, pixels, channels)`.
        masks: `(batch, pixels, K)` 0/1, restricted to valid pixels.
        valid: `(batch, pixels)` 0/1.
    """
    counts = ops.sum(masks, axis=1)
    present = ops.cast(ops.greater(counts, 0), embeddings.dtype)
    sums = ops.einsum("bpk,bpc->bkc", masks, embeddings)
    means = safe_divide(sums, ops.expand_dims(counts, -1))
    return InstanceStats(
        counts=counts,
        present=present,
        n_instances=ops.sum(present, axis=-1),
        n_valid=ops.sum(valid, axis=-1),
        means=means,
    )


def pixel_centroid_sq_distances(embeddings, means):
    """Squared distances `|z_x - mu_m|^2`, shape `(batch, pixels, K)`, clamped at >= 0.

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


def pixel_centroid_distances(embeddings, means):
    """Distances `|z_x - mu_m|`, shape `(batch, pixels, K)`, finite gradients at 0."""
    return safe_sqrt(pixel_centroid_sq_distances(embeddings, means))


def centroid_distances(means):
    """Distances between the centroids of one image, `(batch, K, K)`, finite gradients at 0."""
    diff = ops.expand_dims(means, 2) - ops.expand_dims(means, 1)
    return safe_norm(diff, axis=-1)


def masked_mean_over_instances(per_instance, stats: InstanceStats):
    """`(1/M) sum_m per_instance[m]` over the non-empty masks; 0 when there is none."""
    return safe_divide(ops.sum(per_instance * stats.present, axis=-1), stats.n_instances)
