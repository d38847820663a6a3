"""SpatialEmbeddingLoss (Neven et al., CVPR 2019): offsets to centers, learned bandwidths, seeds."""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_pixelembed.losses.base import PixelLoss
from keras_pixelembed.losses.lovasz import lovasz_hinge_unit_rows
from keras_pixelembed.ops._backend import channel_planes, gather_rows, is_concrete, segment_min, segment_sum
from keras_pixelembed.ops.instance_stats import Instances
from keras_pixelembed.ops.masks import parse_mask_set, spatial_rank, validate_max_instances
from keras_pixelembed.ops.numerics import safe_divide
from keras_pixelembed.ops.spatial import (
    bandwidth,
    decode_spatial,
    decode_spatial_planes,
    position_planes,
    position_planes_3d,
    spatial_channels,
)
from keras_pixelembed.validation import check_integer, check_number

# Above this exponent exp(-q) is 0 in float32 (the smallest subnormal is exp(-103.28)).
_ZERO_PHI = 104.0
# Above this share of kept (row, pixel) pairs, whole rows are cheaper than gathered entries.
_DENSE_SHARE = 0.5
# Label maps bound the embeddings of each run of this many consecutive pixels by a box, to find
# the pixels within reach of each mask without visiting every (mask, pixel) pair.
_CHUNK = 16
# Whole rows are processed in blocks of about this many (row, pixel) entries (8 MB of float32),
# so that the dozen passes over a block (exponents, phi, errors, keys, sort, steps and their
# gradients) stay in the CPU's caches instead of streaming (rows, pixels) tensors through
# memory; it also bounds the temporaries. A block holds whole rows, at least one.
_BLOCK_ENTRIES = 1 << 21


def _slot_offsets(batch: int, pixels: int, slots: int) -> np.ndarray:
    """`(batch * pixels,)` int32: `image * slots` for each pixel of a flattened batch."""
    return np.repeat(np.arange(batch, dtype=np.int32) * slots, pixels)


def _pixel_runs(batch: int, pixels: int, chunk: int) -> np.ndarray:
    """`(batch * pixels,)` int32: the run of `chunk` consecutive pixels each pixel is in."""
    return np.tile(np.arange(pixels, dtype=np.int32) // chunk, batch)


def _mask_slots(batch: int, slots: int) -> np.ndarray:
    """`(batch * slots,)` bool: the slots of masks (every image's slot 0 holds no mask)."""
    return np.tile(np.arange(slots) > 0, batch)


@functools.lru_cache(maxsize=16)
def _cached_constant(make, args: tuple, dtype, backend: str, device: str):
    return ops.convert_to_tensor(make(*args), dtype)


def _constant(make, *args, like, dtype=None):
    """`make(*args)` (a NumPy array) as a tensor of the backend, on `like`'s device, cached
    for eager calls (Keras copies a NumPy array at every conversion)."""
    return _cached_constant(make, args, dtype, keras.backend.backend(), str(getattr(like, "device", "")))


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

    With `n_sigma=1` one bandwidth serves both axes. No mask: L_inst = L_var = 0.

    Volumes: `y_pred (batch, d, h, w, 3 + n_sigma + 1)`, channels `[dz, dy, dx, sigma.., seed]`,
    `n_sigma` 1 or 3, position = (z * z_spacing, row, col) * pixel_size, `y_true` a label
    volume or a stack of mask volumes; the same terms over voxels.

    Everything is vectorized over the batch and the masks. Under jit the `(batch, K, pixels)`
    tensor of phi is built once (two or three coordinates, so in the direct form) and the
    Lovasz hinge sorts each (image,
    mask) row once; eager calls compute the same value and gradient from the pixels that can
    change them (`_label_map_loss`, `_pruned_rows`).

    Args:
        n_sigma: number of bandwidth channels: 1 (one for every axis), or one per axis (2 for
            images, 3 for volumes).
        pixel_size: size of a pixel in embedding units; matches `CoordinateGrid` and the
            clustering. Defaults to `1 / 1024`.
        sigma_scale: the factor inside `exp(sigma_scale * s)`. Defaults to `10.0`.
        w_inst, w_var, w_seed: weights of the three terms. Default to `1.0`, `10.0`, `1.0`.
        foreground_weight: weight of the seed term on mask pixels. Defaults to `10.0`.
        to_center: center each mask at its mean position instead of its mean embedding.
        max_instances: number of mask slots of a label map. Defaults to `64`.
        z_spacing: volumes: the distance between slices in units of the pixel spacing (the
            anisotropy; positions are `(z * z_spacing, row, col) * pixel_size`). Defaults to `1.0`.
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
        z_spacing: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str | None = "spatial_embedding_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.n_sigma = check_integer("n_sigma", n_sigma, minimum=1)
        if self.n_sigma > 3:
            raise ValueError(
                f"Invalid value for argument `n_sigma`. Expected 1, 2 (images) or 3 (volumes). Received: n_sigma={n_sigma!r}"
            )
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
        self.z_spacing = check_number("z_spacing", z_spacing, minimum=0.0, strict=True)

    @property
    def channels(self) -> int:
        """Channels of an image's `y_pred` (a volume's has one more offset)."""
        return spatial_channels(self.n_sigma)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        dims = spatial_rank(y_pred)
        offsets = "dy, dx" if dims == 2 else "dz, dy, dx"
        if self.n_sigma not in (1, dims):
            raise ValueError(
                f"`n_sigma` must be 1 or {dims} (one bandwidth per axis) for y_pred.shape={tuple(y_pred.shape)}. "
                f"Received: n_sigma={self.n_sigma}"
            )
        channels = spatial_channels(self.n_sigma, dims)
        if y_pred.shape[-1] != channels:
            raise ValueError(
                f"`y_pred` must have {dims} + n_sigma + 1 = {channels} channels "
                f"[{offsets}, sigma x {self.n_sigma}, seed_logit] for n_sigma={self.n_sigma}. "
                f"Received: y_pred.shape={tuple(y_pred.shape)}"
            )
        mask_set = parse_mask_set(y_true, y_pred, self.max_instances, dtype=y_pred.dtype)
        if mask_set.labels is not None and is_concrete(y_pred):
            return self._label_map_loss(y_pred, mask_set)
        parts = decode_spatial(
            y_pred,
            self.pixel_size,
            self.n_sigma,
            whole_tanh=keras.backend.backend() == "torch",
            dims=dims,
            z_spacing=self.z_spacing,
        )
        batch = ops.shape(y_pred)[0]

        def flat(x):  # (batch, h, w, c) or (batch, d, h, w, c) -> (batch, pixels, c)
            return ops.reshape(x, (batch, -1, x.shape[-1]))

        # Memberships, counts and the embeddings' means per mask are the shared statistics;
        # everything of size masks x pixels is laid out (batch, K, pixels), one Lovasz row per
        # (image, mask). (Eager label maps take `_label_map_loss` instead.)
        instances = Instances(flat(parts.embeddings), mask_set, by_ids=False)
        sigma = flat(parts.sigma)
        seed = ops.reshape(parts.seeds, (batch, -1))
        if self.to_center:
            centers = instances.mask_means(ops.reshape(parts.positions, (-1, dims)))
        else:
            centers = instances.means
        s = instances.mask_means(sigma)
        bandwidths = bandwidth(s, self.sigma_scale, dims)
        if is_concrete(y_pred):
            lovasz, fg = self._pruned_rows(instances, centers, bandwidths, seed)
        else:
            phi = self._phi(instances.embeddings, centers, bandwidths)
            lovasz = self._lovasz_rows(instances, phi)
            fg = ops.sum(instances.members * ops.square(ops.expand_dims(seed, 1) - ops.stop_gradient(phi)), axis=(1, 2))
        l_inst = instances.mean_over_instances(2.0 * lovasz)
        l_var = self._variance_term(instances, sigma, ops.stop_gradient(s))
        bg = ops.sum(instances.mask_set.valid * (1.0 - instances.in_any()) * ops.square(seed), axis=-1)
        l_seed = safe_divide(self.foreground_weight * fg + bg, instances.n_valid)
        return self.w_inst * l_inst + self.w_var * l_var + self.w_seed * l_seed

    def _phi(self, embeddings, centers, bandwidths):
        """phi `(batch, K, pixels)` of every pixel for every mask, in the direct form (no
        cancellation) and with the same arithmetic as the eager form (`_exponents`), so that
        both see the same ties."""
        return ops.exp(
            -self._exponents(
                ops.expand_dims(embeddings, 1), ops.expand_dims(centers, 2), ops.expand_dims(bandwidths, 2)
            )
        )

    @staticmethod
    def _lovasz_rows(instances, phi):
        """The Lovasz hinge of every (image, mask) row, `(batch, K)`, with static shapes (jit);
        the same sort and tie rule as the eager form. The hinge errors of the logits 2 phi - 1
        are 1 - (2 phi - 1)(2 m - 1) = 2 |m - phi|; the Lovasz hinge is positively homogeneous,
        so the 2 comes out of the sort (the caller doubles the value). Ignored pixels get error
        0 and label 0: after every mask pixel, step 0.

        Under jit every one of the `batch x K` slots has a row, most of them empty, and the
        sort of whole rows is the cost (XLA's CPU sort is slow). The present rows are moved to
        the front and only the first `r` rows are sorted, `r` the smallest of `batch x K / 16`,
        `/ 4`, `/ 2` and all of them that holds every present row (`ops.cond`: exact, each size
        compiled once). JAX only: TensorFlow's XLA cannot compile the gradient of the gather
        inside `tf.cond` ("UnsortedSegmentSum must be a compile-time constant"), so it and
        `torch.compile` sort every row."""
        members = instances.members
        pixels = ops.shape(members)[-1]
        valid = ops.expand_dims(instances.mask_set.valid, 1) > 0
        errors = ops.reshape(ops.where(valid, ops.abs(members - phi), 0.0), (-1, pixels))
        labels = ops.reshape(members, (-1, pixels))
        slots = errors.shape[0]
        if slots is None or keras.backend.backend() != "jax":  # a dynamic batch, or no tiers: every row
            return ops.reshape(lovasz_hinge_unit_rows(errors, labels), ops.shape(instances.counts))
        present = ops.reshape(instances.present, (-1,))
        first = ops.cast(ops.argsort(-present), "int32")  # present rows first

        def sort_first(r):
            def branch():
                rows = first[:r]
                values = lovasz_hinge_unit_rows(ops.take(errors, rows, axis=0), ops.take(labels, rows, axis=0))
                return segment_sum(values, rows, slots)

            return branch

        sizes = sorted({max(1, slots // 16), max(1, slots // 4), max(1, slots // 2)} - {slots})
        result = sort_first(slots)
        count = ops.sum(present)

        def choose(r, smaller, larger):
            return lambda: ops.cond(count <= r, smaller, larger)

        for r in reversed(sizes):
            result = choose(r, sort_first(r), result)
        return ops.reshape(result(), ops.shape(instances.counts))

    def _label_map_loss(self, y_pred, mask_set):
        """The loss of a label map in an eager call, `(batch,)`: the same terms as the jit form,
        computed exactly from the pixels that can matter, in a planar layout.

        Planar: the head's output is transposed once to `(channels, batch * pixels)`, so that
        every per-pixel pass reads one contiguous plane (strided channel slices of a `(...,
        channels)` tensor are several times slower on a CPU), and every per-mask statistic is a
        1-D segment sum over the pixels' ids, `O(batch x pixels)`; each pixel's exponent for its
        own mask gives the seed term and, per mask, `t = 1 - max phi`, the smallest error of a
        mask pixel. A pixel outside the mask with error `phi < t` ranks after every mask pixel
        and has a Lovasz weight of exactly 0 (`lovasz_hinge_unit_rows`), and so has one with
        `phi == 0`: each row needs its mask's pixels and the others with exponent
        `q = sum_c b_c (e_c - c_c)^2 <= -log t` (with a small margin: keeping more is harmless).
        They are found without visiting every (mask, pixel) pair: each run of `_CHUNK`
        consecutive pixels gets the bounding box of its (fixed) embeddings, and a (row, run)
        pair is a candidate when the box comes within reach of the row's center (a lower bound
        of `q` over the run, in the same float arithmetic) or the run holds a pixel of the
        row's mask. Then phi, the sort and their gradients are computed on the kept entries
        only, packed into rows. When the candidates are most of the pairs (an untrained head),
        whole rows are cheaper; they go in cache-sized blocks (`_BLOCK_ENTRIES`). Both exact."""
        batch, *spatial, channels = (int(d) for d in ops.shape(y_pred))
        dims = len(spatial)
        pixels = math.prod(spatial)
        n = batch * pixels
        slots = mask_set.num_slots + 1  # slot 0 of each image: its pixels in no mask, and the ignored ones
        if n == 0:
            return ops.sum(y_pred, axis=tuple(range(1, len(y_pred.shape)))) * 0.0
        # One contiguous plane `(n,)` per channel (unstacked: the gradient is one stack).
        channel = ops.unstack(channel_planes(ops.reshape(y_pred, (n, channels))), axis=0)
        if dims == 3:
            grid = _constant(
                position_planes_3d, *spatial, self.pixel_size, self.z_spacing, batch, like=y_pred, dtype=y_pred.dtype
            )
        else:
            grid = _constant(position_planes, *spatial, self.pixel_size, batch, like=y_pred, dtype=y_pred.dtype)
        e, _, sigma, seed = decode_spatial_planes(channel, grid, self.n_sigma)
        labels = ops.reshape(mask_set.labels, (-1,))
        valid = ops.reshape(mask_set.valid, (-1,))
        in_mask = ops.cast(labels > 0, y_pred.dtype)
        background = ops.cast(labels == 0, y_pred.dtype)
        ids = ops.maximum(labels, 0) + _constant(_slot_offsets, batch, pixels, slots, like=y_pred)
        count = ops.cast(ops.bincount(ids, minlength=batch * slots), e[0].dtype)

        def slot_means(values):  # per slot, 0 for empty slots (slot tables (batch * slots,))
            return safe_divide(segment_sum(values, ids, batch * slots), count)

        if self.to_center:
            centers = [slot_means(grid[c]) for c in range(dims)]
        else:
            centers = [slot_means(e[c]) for c in range(dims)]
        s = [slot_means(sigma[c]) for c in range(self.n_sigma)]
        b = [ops.exp(self.sigma_scale * s_c) for s_c in s]
        b = b * dims if self.n_sigma == 1 else b

        def own(tables):  # each pixel's value of its own slot, no gradient
            return [gather_rows(ops.stop_gradient(t), ids) for t in tables]

        # Each pixel's exponent for its own mask; 0 for the pixels in no mask (slot 0 gets
        # bandwidth 0, so that no exp(-q) of theirs lands in the slow subnormal range).
        mask_slots = _constant(_mask_slots, batch, slots, like=y_pred)
        e_fixed = [ops.stop_gradient(e_c) for e_c in e]
        own_b = own([b_c * ops.cast(mask_slots, b_c.dtype) for b_c in b[: self.n_sigma]])
        own_q = self._q(e_fixed, own(centers), own_b * dims if self.n_sigma == 1 else own_b)
        # The seed term: sigmoid(seed) regresses phi on mask pixels (weight foreground_weight)
        # and 0 on the others (weight 1), nothing on ignored pixels.
        seed_error = seed - in_mask * ops.exp(-own_q)
        seed_weights = self.foreground_weight * in_mask + background
        seed_sum = ops.sum(ops.reshape(seed_weights * seed_error * seed_error, (batch, pixels)), axis=-1)
        deviations = [sigma_c - own_s for sigma_c, own_s in zip(sigma, own(s))]
        spread = sum(d * d for d in deviations[1:]) + deviations[0] * deviations[0]
        variance = safe_divide(segment_sum(spread, ids, batch * slots), count * self.n_sigma)
        # The smallest exponent of a pixel of each mask (slot 0 holds the others).
        inside = segment_min(own_q, ids, batch * slots)

        # One row per present mask (image b, slot k >= 1), in order.
        is_row = ops.logical_and(count > 0, mask_slots)
        row_slots = ops.cast(ops.nonzero(is_row)[0], "int32")
        num_rows = int(ops.shape(row_slots)[0])
        row_images = row_slots // slots
        n_instances = segment_sum(ops.ones_like(row_slots), row_images, batch)
        n_instances = ops.cast(n_instances, y_pred.dtype)
        n_valid = ops.sum(ops.reshape(valid, (batch, pixels)), axis=-1)
        l_seed = safe_divide(seed_sum, n_valid)
        if num_rows == 0:
            zero = sum(ops.sum(c) for c in channel[:-1]) * 0.0
            return self.w_seed * l_seed + zero
        l_var = safe_divide(segment_sum(gather_rows(variance, row_slots), row_images, batch), n_instances)
        row_centers = [gather_rows(c, row_slots) for c in centers]
        row_b = [gather_rows(b_c, row_slots) for b_c in b]
        fixed_centers = [ops.stop_gradient(c) for c in row_centers]
        fixed_b = [ops.stop_gradient(b_c) for b_c in row_b]
        reach = self._reach(gather_rows(inside, row_slots))
        row_ids = row_slots % slots
        all_valid = int(ops.min(labels)) >= 0
        pairs = self._candidate_runs(e_fixed, ids, batch, pixels, slots, row_slots, fixed_centers, fixed_b, reach)
        share = int(ops.shape(pairs[0])[0]) * _CHUNK / (num_rows * pixels)

        if share > _DENSE_SHARE:
            # Whole rows in blocks of `_BLOCK_ENTRIES`: the same sums, cache-sized passes.
            planes_e = [ops.reshape(e[c], (batch, pixels)) for c in range(dims)]
            label_rows = ops.reshape(labels, (batch, pixels))
            valid_rows = ops.reshape(valid, (batch, pixels))
            block = max(1, _BLOCK_ENTRIES // max(pixels, 1))
            lovasz = []
            for start in range(0, num_rows, block):
                images = row_images[start : start + block]
                q = self._q(
                    [gather_rows(p, images) for p in planes_e],
                    *([ops.expand_dims(t[start : start + block], -1) for t in ts] for ts in (row_centers, row_b)),
                )
                members = ops.equal(
                    gather_rows(label_rows, images), ops.expand_dims(row_ids[start : start + block], -1)
                )
                members = ops.cast(members, y_pred.dtype)
                # Pixels out of reach need no masking here: they rank after every mask pixel,
                # where the step is 0. An ignored pixel gets error 0 and label 0 (its label is
                # 0 already), which puts it there too. (Products, not `where`: PyTorch's
                # boolean selection is several times slower on one CPU thread.)
                errors = ops.abs(members - ops.exp(-q))
                if not all_valid:
                    errors = errors * gather_rows(valid_rows, images)
                lovasz.append(lovasz_hinge_unit_rows(errors, members))
            lovasz = ops.concatenate(lovasz, axis=0)
        else:
            pair_rows, pair_runs = pairs
            pair_pixels = ops.expand_dims(pair_runs * _CHUNK, -1) + ops.arange(_CHUNK, dtype="int32")
            in_image = pair_pixels < pixels
            at = ops.expand_dims(gather_rows(row_images, pair_rows) * pixels, -1) + ops.minimum(pair_pixels, pixels - 1)
            at = ops.reshape(at, (-1,))  # flat (image, pixel) of each candidate entry
            q = self._q(
                [ops.reshape(gather_rows(e_fixed[c], at), (-1, _CHUNK)) for c in range(dims)],
                *([ops.expand_dims(gather_rows(t, pair_rows), -1) for t in ts] for ts in (fixed_centers, fixed_b)),
            )
            members = ops.equal(
                ops.reshape(gather_rows(labels, at), (-1, _CHUNK)), ops.expand_dims(gather_rows(row_ids, pair_rows), -1)
            )
            keep = ops.logical_or(members, q <= ops.expand_dims(gather_rows(reach, pair_rows), -1))
            keep = ops.logical_and(keep, in_image)
            if not all_valid:
                keep = ops.logical_and(keep, ops.reshape(gather_rows(valid, at), (-1, _CHUNK)) > 0)
            entries = ops.cast(ops.nonzero(ops.reshape(keep, (-1,)))[0], "int32")
            entry_rows = gather_rows(pair_rows, entries // _CHUNK)  # grouped by row, rows in order
            entry_at = gather_rows(at, entries)
            entry_labels = ops.cast(gather_rows(ops.reshape(members, (-1,)), entries), y_pred.dtype)
            # With gradients, on the kept entries only, packed into rows.
            q = self._q(
                [gather_rows(e[c], entry_at) for c in range(dims)],
                *([gather_rows(t, entry_rows) for t in ts] for ts in (row_centers, row_b)),
            )
            lovasz = self._packed_lovasz(entry_rows, ops.abs(entry_labels - ops.exp(-q)), entry_labels, num_rows)
        l_inst = safe_divide(segment_sum(2.0 * lovasz, row_images, batch), n_instances)
        return self.w_inst * l_inst + self.w_var * l_var + self.w_seed * l_seed

    @staticmethod
    def _reach(inside):
        """The largest exponent `q` of a pixel that can matter in each row, from the row's
        smallest exponent of a mask pixel (its error `1 - exp(-inside)` as the errors are
        computed), with a small margin."""
        smallest_error = 1.0 - ops.exp(-inside)
        reach = ops.where(smallest_error > 0, -ops.log(ops.maximum(smallest_error, 1e-38)), _ZERO_PHI)
        return ops.minimum(reach, _ZERO_PHI) * (1.0 + 1e-5) + 1e-5

    def _candidate_runs(self, e_fixed, ids, batch, pixels, slots, row_slots, centers, bandwidths, reach):
        """`(pair_rows, pair_runs)` int32, row-major: the (row, run of `_CHUNK` pixels) pairs of
        a label map that may hold a pixel to keep. A run is left out of a row when the lower
        bound of `q` over the bounding box of its embeddings exceeds the row's reach (then so
        does every pixel's `q`, computed with the same rounding: the box's gaps are at most
        the pixels' differences) and it holds no pixel of the row's mask."""
        runs = -(-pixels // _CHUNK)
        row_images = row_slots // slots
        gaps = []
        for c in range(len(e_fixed)):
            plane = ops.reshape(e_fixed[c], (batch, pixels))
            if runs * _CHUNK > pixels:  # repeat the last pixel: the last run's box stays its own
                tail = ops.repeat(plane[:, -1:], runs * _CHUNK - pixels, axis=1)
                plane = ops.concatenate([plane, tail], axis=1)
            plane = ops.reshape(plane, (batch, runs, _CHUNK))
            low, high = ops.min(plane, axis=-1), ops.max(plane, axis=-1)  # (batch, runs)
            center = ops.expand_dims(centers[c], -1)
            gap = ops.maximum(gather_rows(low, row_images) - center, center - gather_rows(high, row_images))
            gaps.append(ops.maximum(gap, 0.0))
        zero = ops.zeros_like(centers[0][:, None])
        near = self._q(gaps, [zero] * len(gaps), [ops.expand_dims(b, -1) for b in bandwidths])
        near = near <= ops.expand_dims(reach, -1)
        # The runs holding a pixel of each row's mask: pixels counted per (row, run), the
        # pixels of no row (slot 0) in an extra row.
        num_rows = int(ops.shape(row_slots)[0])
        row_of_slot = segment_sum(ops.arange(1, num_rows + 1, dtype="int32"), row_slots, batch * slots) - 1
        row_of_slot = ops.where(row_of_slot < 0, num_rows, row_of_slot)
        runs_of_pixels = _constant(_pixel_runs, batch, pixels, _CHUNK, like=e_fixed[0])
        held = ops.bincount(gather_rows(row_of_slot, ids) * runs + runs_of_pixels, minlength=(num_rows + 1) * runs)
        held = ops.reshape(held, (num_rows + 1, runs))[:num_rows] > 0
        pair_rows, pair_runs = ops.nonzero(ops.logical_or(near, held))
        return ops.cast(pair_rows, "int32"), ops.cast(pair_runs, "int32")

    def _pruned_rows(self, instances, centers, bandwidths, seed):
        """Mask stacks in eager calls: the Lovasz hinge of every (image, mask) row `(batch, K)`
        and the seed term's sum over mask pixels `(batch,)`, exactly, from the pixels that can
        matter (the rule of `_label_map_loss`; here `q` is computed for every (row, pixel)
        pair). Only rows of present masks are visited."""
        batch, pixels = ops.shape(instances.mask_set.valid)
        num_slots = instances.num_slots
        channels = ops.shape(centers)[-1]
        rows = ops.cast(ops.nonzero(ops.greater(ops.reshape(instances.present, (-1,)), 0))[0], "int32")
        num_rows = int(ops.shape(rows)[0])
        if num_rows == 0:
            zero = ops.sum(instances.embeddings) * 0.0 + ops.sum(seed) * 0.0
            return ops.zeros_like(instances.counts) + zero, ops.zeros_like(instances.n_valid) + zero
        images = rows // num_slots
        row_centers = gather_rows(ops.reshape(centers, (-1, channels)), rows)
        row_bandwidths = gather_rows(ops.reshape(bandwidths, (-1, channels)), rows)
        all_valid = bool(ops.convert_to_numpy(ops.all(instances.mask_set.valid > 0)))
        fixed = [ops.stop_gradient(x) for x in (instances.embeddings, row_centers, row_bandwidths)]
        row_members = gather_rows(ops.reshape(instances.members, (-1, pixels)), rows) > 0
        q = self._row_exponents(fixed[0], images, *fixed[1:])
        reach = ops.expand_dims(self._reach(ops.min(ops.where(row_members, q, float("inf")), axis=-1)), -1)
        keep = ops.logical_or(row_members, q <= reach)
        if not all_valid:
            keep = ops.logical_and(keep, gather_rows(instances.mask_set.valid, images) > 0)
        share = float(ops.convert_to_numpy(ops.mean(ops.cast(keep, "float32"))))

        if share > _DENSE_SHARE:
            # Whole rows in blocks of `_BLOCK_ENTRIES`: the same sums, cache-sized passes.
            block = max(1, _BLOCK_ENTRIES // max(pixels, 1))
            lovasz, fg_rows = [], []
            for start in range(0, num_rows, block):
                which = ops.arange(start, min(start + block, num_rows), dtype="int32")
                block_images = gather_rows(images, which)
                labels = ops.cast(row_members[start : start + block], instances.embeddings.dtype)
                phi = ops.exp(
                    -self._row_exponents(
                        instances.embeddings,
                        block_images,
                        gather_rows(row_centers, which),
                        gather_rows(row_bandwidths, which),
                    )
                )
                errors = ops.abs(labels - phi)  # out-of-reach pixels rank after every mask pixel: step 0
                if not all_valid:
                    errors = errors * gather_rows(instances.mask_set.valid, block_images)
                lovasz.append(lovasz_hinge_unit_rows(errors, labels))
                seeds = gather_rows(seed, block_images)
                fg_rows.append(ops.sum(labels * ops.square(seeds - ops.stop_gradient(phi)), axis=-1))
            fg = segment_sum(ops.concatenate(fg_rows, axis=0), images, batch)
            lovasz = segment_sum(ops.concatenate(lovasz, axis=0), rows, batch * num_slots)
            return ops.reshape(lovasz, (batch, num_slots)), fg

        entry_rows, entry_pixels = (ops.cast(x, "int32") for x in ops.nonzero(keep))
        labels = gather_rows(ops.reshape(row_members, (-1,)), entry_rows * pixels + entry_pixels)
        # With gradients, on the kept entries only (grouped by row, rows in order), packed
        # into rows.
        at = gather_rows(images, entry_rows) * pixels + entry_pixels  # flat (image, pixel)
        e = gather_rows(ops.reshape(instances.embeddings, (-1, channels)), at)
        c = gather_rows(row_centers, entry_rows)
        b = gather_rows(row_bandwidths, entry_rows)
        phi = ops.exp(-self._exponents(e, c, b))
        labels = ops.cast(labels, phi.dtype)
        lovasz = self._packed_lovasz(entry_rows, ops.abs(labels - phi), labels, num_rows)
        seed_error = labels * ops.square(gather_rows(ops.reshape(seed, (-1,)), at) - ops.stop_gradient(phi))
        fg = segment_sum(seed_error, gather_rows(images, entry_rows), batch)
        lovasz = segment_sum(lovasz, rows, batch * num_slots)
        return ops.reshape(lovasz, (batch, num_slots)), fg

    @staticmethod
    def _packed_lovasz(entry_rows, errors, labels, num_rows):
        """The Lovasz hinge `(num_rows,)` of kept entries grouped by row (rows in order, int32
        `entry_rows`), packed into `(num_rows, width)` rows, `width` the longest row; the
        padding has error 0 and label 0, after every positive, where the step is 0."""
        sizes = ops.bincount(entry_rows, minlength=num_rows)
        width = int(ops.max(sizes))
        kept = int(ops.shape(entry_rows)[0])
        slot = entry_rows * width + ops.arange(kept, dtype="int32") - gather_rows(ops.cumsum(sizes) - sizes, entry_rows)
        packed = [ops.reshape(segment_sum(x, slot, num_rows * width), (num_rows, width)) for x in (errors, labels)]
        return lovasz_hinge_unit_rows(*packed)

    def _q(self, e, c, b):
        """The exponent `q = sum_axis b_axis (e_axis - c_axis)^2` from lists (one entry per axis)
        of the embeddings' coordinates, the centers' and the bandwidths (broadcast): one
        arithmetic for every form, so that all of them give the same floats (and see the same
        ties). With `n_sigma=1` (one bandwidth, all `b` equal) it is `b_0 (square_0 + square_1
        ...)`."""
        squares = [(e_a - c_a) * (e_a - c_a) for e_a, c_a in zip(e, c)]
        if self.n_sigma == 1:
            return b[0] * functools.reduce(lambda x, y: x + y, squares)
        return functools.reduce(lambda x, y: x + y, [b_a * sq for b_a, sq in zip(b, squares)])

    def _exponents(self, embeddings, centers, bandwidths):
        """`q` over the last axis (one channel per axis) of broadcast `(..., axes)` tensors."""
        axes = range(embeddings.shape[-1])
        return self._q(*([x[..., a] for a in axes] for x in (embeddings, centers, bandwidths)))

    def _row_exponents(self, embeddings, images, row_centers, row_bandwidths):
        """`q` `(rows, pixels)` of every pixel of the row's image."""
        axes = range(embeddings.shape[-1])
        rows = [gather_rows(embeddings[..., a], images) for a in axes]
        return self._q(rows, *([x[:, a : a + 1] for a in axes] for x in (row_centers, row_bandwidths)))

    def _variance_term(self, instances, sigma, s_fixed):
        """L_var: the spread of sigma inside each mask around its (stopped) mean."""
        if instances.is_label_map:  # each pixel is in at most one mask: compare it with its own mask's mean, O(pixels)
            own = instances.own(s_fixed)
            spread = instances.mask_sums(ops.sum(ops.square(sigma - own), axis=-1))
        else:
            spread = 0.0
            for c in range(self.n_sigma):
                diff = ops.expand_dims(sigma[..., c], 1) - ops.expand_dims(s_fixed[..., c], -1)
                spread = spread + ops.sum(instances.members * ops.square(diff), axis=-1)
        return instances.mean_over_instances(safe_divide(spread, instances.counts * self.n_sigma))

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
                "z_spacing": self.z_spacing,
            }
        )
        return config
