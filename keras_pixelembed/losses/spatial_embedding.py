"""SpatialEmbeddingLoss (Neven et al., CVPR 2019): offsets to centers, learned bandwidths, seeds."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.losses.base import PixelLoss
from keras_pixelembed.losses.lovasz import lovasz_hinge_unit_rows
from keras_pixelembed.ops._backend import gather_rows, is_concrete, segment_min, segment_sum
from keras_pixelembed.ops.instance_stats import Instances
from keras_pixelembed.ops.masks import parse_mask_set, validate_max_instances
from keras_pixelembed.ops.numerics import safe_divide
from keras_pixelembed.ops.spatial import bandwidth, decode_spatial, spatial_channels
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
        parts = decode_spatial(y_pred, self.pixel_size, self.n_sigma, whole_tanh=keras.backend.backend() == "torch")
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
        bandwidths = bandwidth(s, self.sigma_scale)
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

    def _pruned_rows(self, instances, centers, bandwidths, seed):
        """The Lovasz hinge of every (image, mask) row `(batch, K)` and the seed term's sum over
        mask pixels `(batch,)`, exactly, from the pixels that can matter (eager calls).

        Only rows of present masks are visited. In a row, the smallest error of a mask pixel is
        `t = 1 - max phi`; a pixel outside the mask with error `phi < t` ranks after every mask
        pixel and has a Lovasz weight of exactly 0 (`lovasz_hinge_unit_rows`), and so has one
        with `phi == 0` (no value, no gradient). So the loss needs the mask pixels and the
        others with exponent `q = sum_c b_c (e_c - c_c)^2 <= -log t` (with a small margin:
        keeping more is harmless). Label maps find them without visiting every (row, pixel)
        pair: each run of `_CHUNK` consecutive pixels gets the bounding box of its (fixed)
        embeddings, and a (row, run) pair is a candidate when the box comes within reach of
        the row's center (a lower bound of `q` over the run, in the same float arithmetic) or
        the run holds a pixel of the row's mask. Mask stacks compute `q` for every pair.

        When the candidates are most of the pairs (an untrained head), whole rows are cheaper:
        they go in cache-sized blocks (`_BLOCK_ENTRIES`). Otherwise everything with a gradient
        (phi, the sort, the seed regression) is computed on the kept entries only, packed into
        rows. Trained models make `t` large and the entries few. Both forms are exact.
        """
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

        def members_of(which):  # (len(which), pixels) bool: the pixels of rows[which]
            if instances.by_ids:  # a label map: the row's pixels are those with its id
                ids = ops.expand_dims(gather_rows(rows, which) % num_slots + 1, -1)
                return ops.equal(gather_rows(instances.mask_set.labels, gather_rows(images, which)), ids)
            return gather_rows(ops.reshape(instances.members, (-1, pixels)), gather_rows(rows, which)) > 0

        every_row = ops.arange(num_rows, dtype="int32")
        fg, q, row_members = None, None, None
        if instances.by_ids:
            # A label map: each pixel's exponent for its own mask, O(batch x pixels), gives the
            # seed term and each mask's smallest exponent.
            own = self._exponents(
                fixed[0],
                instances.own(ops.stop_gradient(centers)),
                instances.own(ops.stop_gradient(bandwidths)),
            )
            in_mask = instances.in_any()
            fg = ops.sum(in_mask * ops.square(seed - ops.exp(-own)), axis=-1)
            inside = segment_min(
                ops.reshape(ops.where(in_mask > 0, own, float("inf")), (-1,)),
                instances.ids,
                batch * (num_slots + 1),
            )
            inside = gather_rows(inside, images * (num_slots + 1) + rows % num_slots + 1)
        else:
            row_members = members_of(every_row)
            q = self._row_exponents(fixed[0], images, *fixed[1:])
            inside = ops.min(ops.where(row_members, q, float("inf")), axis=-1)
        smallest_error = 1.0 - ops.exp(-inside)  # as the errors are computed below
        reach = ops.where(smallest_error > 0, -ops.log(ops.maximum(smallest_error, 1e-38)), _ZERO_PHI)
        reach = ops.expand_dims(ops.minimum(reach, _ZERO_PHI) * (1.0 + 1e-5) + 1e-5, -1)

        if instances.by_ids:
            pairs = self._candidate_runs(instances, rows, images, fixed, reach)
            share = int(ops.shape(pairs[0])[0]) * _CHUNK / (num_rows * pixels)
        else:  # estimated on every `stride`-th pixel
            stride = max(1, pixels // 4096)
            sample = self._row_exponents(fixed[0][:, ::stride], images, *fixed[1:]) <= reach
            sample = ops.logical_or(sample, row_members[:, ::stride])
            share = float(ops.convert_to_numpy(ops.mean(ops.cast(sample, "float32"))))

        if share > _DENSE_SHARE:
            # Whole rows in blocks of `_BLOCK_ENTRIES`: the same sums, cache-sized passes.
            block = max(1, _BLOCK_ENTRIES // max(pixels, 1))
            lovasz, fg_rows = [], []
            for start in range(0, num_rows, block):
                which = every_row[start : start + block]
                block_images = gather_rows(images, which)
                labels = row_members[start : start + block] if row_members is not None else members_of(which)
                labels = ops.cast(labels, instances.embeddings.dtype)
                phi = ops.exp(
                    -self._row_exponents(
                        instances.embeddings,
                        block_images,
                        gather_rows(row_centers, which),
                        gather_rows(row_bandwidths, which),
                    )
                )
                # Pixels out of reach need no masking here: they rank after every mask pixel,
                # where the step is 0. An ignored pixel gets error 0 and label 0 (its label is
                # 0 already), which puts it there too. (Products, not `where`: PyTorch's
                # boolean selection is several times slower on one CPU thread.)
                errors = ops.abs(labels - phi)
                if not all_valid:
                    errors = errors * gather_rows(instances.mask_set.valid, block_images)
                lovasz.append(lovasz_hinge_unit_rows(errors, labels))
                if fg is None:
                    seeds = gather_rows(seed, block_images)
                    fg_rows.append(ops.sum(labels * ops.square(seeds - ops.stop_gradient(phi)), axis=-1))
            lovasz = ops.concatenate(lovasz, axis=0)
            if fg is None:
                fg = segment_sum(ops.concatenate(fg_rows, axis=0), images, batch)
            lovasz = segment_sum(lovasz, rows, batch * num_slots)
            return ops.reshape(lovasz, (batch, num_slots)), fg

        if instances.by_ids:  # the candidate runs' pixels
            pair_rows, pair_runs = pairs
            pair_pixels = ops.expand_dims(pair_runs * _CHUNK, -1) + ops.arange(_CHUNK, dtype="int32")
            in_image = pair_pixels < pixels
            pair_pixels = ops.minimum(pair_pixels, pixels - 1)
            at = ops.expand_dims(gather_rows(images, pair_rows) * pixels, -1) + pair_pixels
            e = ops.reshape(
                gather_rows(ops.reshape(fixed[0], (-1, channels)), ops.reshape(at, (-1,))), (-1, _CHUNK, channels)
            )
            q = self._exponents(
                e,
                ops.expand_dims(gather_rows(fixed[1], pair_rows), 1),
                ops.expand_dims(gather_rows(fixed[2], pair_rows), 1),
            )
            ids = ops.expand_dims(gather_rows(rows, pair_rows) % num_slots + 1, -1)
            candidate_members = ops.equal(
                ops.reshape(
                    gather_rows(ops.reshape(instances.mask_set.labels, (-1,)), ops.reshape(at, (-1,))), (-1, _CHUNK)
                ),
                ids,
            )
            keep = ops.logical_and(in_image, ops.logical_or(candidate_members, q <= gather_rows(reach, pair_rows)))
            if not all_valid:
                valid = gather_rows(ops.reshape(instances.mask_set.valid, (-1,)), ops.reshape(at, (-1,)))
                keep = ops.logical_and(keep, ops.reshape(valid, (-1, _CHUNK)) > 0)
            (entries,) = ops.nonzero(ops.reshape(keep, (-1,)))
            entries = ops.cast(entries, "int32")
            entry_rows = gather_rows(pair_rows, entries // _CHUNK)
            entry_pixels = gather_rows(ops.reshape(pair_pixels, (-1,)), entries)
            labels = gather_rows(ops.reshape(candidate_members, (-1,)), entries)
        else:
            keep = ops.logical_or(row_members, q <= reach)
            if not all_valid:
                keep = ops.logical_and(keep, gather_rows(instances.mask_set.valid, images) > 0)
            entry_rows, entry_pixels = (ops.cast(x, "int32") for x in ops.nonzero(keep))
            labels = gather_rows(ops.reshape(row_members, (-1,)), entry_rows * pixels + entry_pixels)
        # Pass 2, with gradients, on the kept entries only (grouped by row, rows in order),
        # packed into rows of `width`.
        kept = int(ops.shape(entry_rows)[0])
        at = gather_rows(images, entry_rows) * pixels + entry_pixels  # flat (image, pixel)
        e = gather_rows(ops.reshape(instances.embeddings, (-1, channels)), at)
        c = gather_rows(row_centers, entry_rows)
        b = gather_rows(row_bandwidths, entry_rows)
        phi = ops.exp(-self._exponents(e, c, b))
        labels = ops.cast(labels, phi.dtype)
        sizes = ops.bincount(entry_rows, minlength=num_rows)
        width = int(ops.convert_to_numpy(ops.max(sizes)))
        slot = entry_rows * width + ops.arange(kept, dtype="int32") - gather_rows(ops.cumsum(sizes) - sizes, entry_rows)
        packed_errors = ops.reshape(segment_sum(ops.abs(labels - phi), slot, num_rows * width), (num_rows, width))
        packed_labels = ops.reshape(segment_sum(labels, slot, num_rows * width), (num_rows, width))
        lovasz = lovasz_hinge_unit_rows(packed_errors, packed_labels)
        if fg is None:
            seed_error = labels * ops.square(gather_rows(ops.reshape(seed, (-1,)), at) - ops.stop_gradient(phi))
            fg = segment_sum(seed_error, gather_rows(images, entry_rows), batch)
        lovasz = segment_sum(lovasz, rows, batch * num_slots)
        return ops.reshape(lovasz, (batch, num_slots)), fg

    def _candidate_runs(self, instances, rows, images, fixed, reach):
        """`(pair_rows, pair_runs)` int32, row-major: the (row, run of `_CHUNK` pixels) pairs of
        a label map that may hold a pixel to keep. A run is left out of a row when the lower
        bound of `q` over the bounding box of its embeddings exceeds the row's reach (then so
        does every pixel's `q`, computed with the same rounding: the box's gaps are at most
        the pixels' differences) and it holds no pixel of the row's mask."""
        batch, pixels = ops.shape(instances.mask_set.valid)
        num_slots = instances.num_slots
        num_rows = int(ops.shape(rows)[0])
        runs = -(-pixels // _CHUNK)
        embeddings = fixed[0]
        if runs * _CHUNK > pixels:  # repeat the last pixel: the last run's box stays its own
            tail = ops.repeat(embeddings[:, -1:], runs * _CHUNK - pixels, axis=1)
            embeddings = ops.concatenate([embeddings, tail], axis=1)
        embeddings = ops.reshape(embeddings, (batch, runs, _CHUNK, -1))
        low = gather_rows(ops.min(embeddings, axis=2), images)  # (rows, runs, channels)
        high = gather_rows(ops.max(embeddings, axis=2), images)
        center = ops.expand_dims(fixed[1], 1)
        gap = ops.maximum(ops.maximum(low - center, center - high), 0.0)
        near = self._exponents(gap, ops.zeros_like(center), ops.expand_dims(fixed[2], 1)) <= reach
        # The runs holding a pixel of each row's mask: the row of each labelled pixel (-1 for
        # none), counted per (row, run).
        row_of_slot = segment_sum(
            ops.arange(1, num_rows + 1, dtype="int32"),
            images * (num_slots + 1) + rows % num_slots + 1,
            batch * (num_slots + 1),
        )
        pixel_rows = gather_rows(row_of_slot, instances.ids) - 1
        run_of_pixel = ops.tile(ops.arange(pixels, dtype="int32") // _CHUNK, (batch,))
        holds = segment_sum(
            ops.ones_like(pixel_rows),
            ops.where(pixel_rows >= 0, pixel_rows * runs + run_of_pixel, num_rows * runs),
            num_rows * runs + 1,
        )
        holds = ops.reshape(holds[:-1], (num_rows, runs)) > 0
        pair_rows, pair_runs = ops.nonzero(ops.logical_or(near, holds))
        return ops.cast(pair_rows, "int32"), ops.cast(pair_runs, "int32")

    def _exponents(self, embeddings, centers, bandwidths):
        """`q = sum_c b_c (e_c - c_c)^2` over the last axis (two channels), the same arithmetic
        as `_row_exponents`, so that both give the same floats."""
        squares = [ops.square(embeddings[..., c] - centers[..., c]) for c in range(2)]
        if self.n_sigma == 1:
            return bandwidths[..., 0] * (squares[0] + squares[1])
        return bandwidths[..., 0] * squares[0] + bandwidths[..., 1] * squares[1]

    def _row_exponents(self, embeddings, images, row_centers, row_bandwidths):
        """`q = sum_c b_c (e_c - c_c)^2` `(rows, pixels)` of every pixel of the row's image."""
        squares = [ops.square(gather_rows(embeddings[..., c], images) - row_centers[:, c : c + 1]) for c in range(2)]
        if self.n_sigma == 1:  # one bandwidth for both axes
            return row_bandwidths[:, :1] * (squares[0] + squares[1])
        return row_bandwidths[:, :1] * squares[0] + row_bandwidths[:, 1:] * squares[1]

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
            }
        )
        return config
