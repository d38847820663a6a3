"""Clustering inside the graph: the seed clustering of spatial heads and the ball clustering of
embedding heads as Keras layers, and the padding and cropping that let a segmentation model take
any image size.

Written with `keras.ops` only, so the layers run on TensorFlow, JAX and PyTorch, under
`jit_compile`, and export to a SavedModel or ONNX with the model. The numpy functions in
`keras_pixelembed.cluster` stay the readable reference of the same algorithm.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.cluster.embedding import GOLDEN
from keras_pixelembed.ops._backend import gather_rows
from keras_pixelembed.ops.spatial import LN2, decode_spatial, decode_spatial_planes
from keras_pixelembed.validation import check_fraction, check_integer, check_number

BLOCK = 16  # side of the blocks `SeedClustering` visits (pixels)
SMALL_WINDOW = 16  # blocks of the first window `SeedClustering` tries


class _Clustering(keras.layers.Layer):
    """A per-pixel map `(batch, height, width, channels)` (volumes: `(batch, depth, height,
    width, channels)`) -> `(labels (batch, height, width) int32, left over (batch,) int32)`."""

    def compute_output_spec(self, x):
        shape = tuple(x.shape)
        return (keras.KerasTensor(shape[:-1], dtype="int32"), keras.KerasTensor(shape[:1], dtype="int32"))


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class SeedClustering(_Clustering):
    """The spatial-embedding seed clustering (Neven et al. 2019) of a batch, in the graph.

    The algorithm of `cluster.spatial_embedding_instances`, image by image but vectorized over
    the batch: foreground is `seed > fg_threshold`; while an unassigned foreground pixel has a
    seed of at least `seed_threshold`, the one with the highest seed becomes a center with its
    own embedding and bandwidth, its proposal is every foreground pixel with phi > 0.5
    (`sum_axis bw (e - center)^2 < ln 2`), and the proposal becomes instance `count + 1` when it
    has more than `min_size` pixels and more than half of them are unassigned; its pixels are
    marked either way.

    Each step costs the pixels within the center's reach, not the image: the image is cut into
    16 x 16 blocks with each block's bounding box of foreground embeddings; a step gathers the
    blocks whose box comes within the center's bandwidth reach (`b_axis (e_axis - c_axis)^2 <
    ln 2` on each axis, with a 0.1 % float margin) into a static window of `window_blocks`
    blocks, updates them and scatters them back, and steps over every block when more are in
    reach (`ops.cond`). Each block keeps its best open seed (and its first pixel in image
    order), so the next center is found among blocks. The labels are exactly those of the
    whole-image loop.

    At most `max_instances` instances are made per image (a static bound, as the graph needs
    one). When an image reaches it, the loop stops there: pixels not yet in an instance stay
    background (0), never a wrong label, and `dropped_seeds` counts the candidate seed pixels
    (foreground, seed >= `seed_threshold`, in no proposal yet) that were left unvisited.

    Input: the head's raw output `(batch, height, width, 2 + n_sigma + 1)`.
    Output: `(labels (batch, height, width) int32, dropped_seeds (batch,) int32)`; labels are
    0 for background and 1..N by decreasing seed.

    Volumes: a 3D head's output `(batch, depth, height, width, 3 + n_sigma + 1)` gives labels
    `(batch, depth, height, width)`, with `z_spacing` as in the loss. Each step of a volume
    visits every voxel (no blocks): the cost is voxels times instances.

    Args:
        seed_threshold: smallest seed that starts an instance. Defaults to `0.9`.
        fg_threshold: seed above which a pixel is foreground. Defaults to `0.5`.
        min_size: proposals of at most this many pixels are dropped. Defaults to `10`.
        pixel_size, sigma_scale: as in `SpatialEmbeddingLoss`. Default to `1 / 1024` and `10`.
        max_instances: the static bound on instances per image. Defaults to `256`.
        window_blocks: blocks a step visits when the center's reach fits in them (speed only:
            64 blocks hold objects up to about 100 pixels across). Defaults to `64`.
        z_spacing: volumes: the slice spacing in units of the pixel spacing. Defaults to `1.0`.
    """

    def __init__(
        self,
        seed_threshold: float = 0.9,
        fg_threshold: float = 0.5,
        min_size: int = 10,
        pixel_size: float = 1.0 / 1024,
        sigma_scale: float = 10.0,
        max_instances: int = 256,
        window_blocks: int = 64,
        z_spacing: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.z_spacing = check_number("z_spacing", z_spacing, minimum=0.0, strict=True)
        self.seed_threshold = check_fraction("seed_threshold", seed_threshold)
        self.fg_threshold = check_fraction("fg_threshold", fg_threshold)
        self.min_size = check_integer("min_size", min_size, minimum=0)
        self.pixel_size = check_number("pixel_size", pixel_size, minimum=0.0, strict=True)
        self.sigma_scale = check_number("sigma_scale", sigma_scale)
        self.max_instances = check_integer("max_instances", max_instances, minimum=1)
        self.window_blocks = check_integer("window_blocks", window_blocks, minimum=1)

    def call(self, pred):
        pred = ops.cast(pred, "float32")
        if len(pred.shape) == 5:
            return self._volumes(pred)
        shape = ops.shape(pred)
        batch, height, width = shape[0], shape[1], shape[2]
        # the head output as channel planes, each (batch, height, width): every map below is then
        # one contiguous array (strided channel slices cost milliseconds each at 512 x 512)
        channels = pred.shape[-1]
        planes = ops.transpose(pred, (3, 0, 1, 2))
        rows_at = ops.cast(ops.arange(height), "float32") * self.pixel_size
        cols_at = ops.cast(ops.arange(width), "float32") * self.pixel_size
        parts = decode_spatial_planes([planes[c] for c in range(channels)], [ops.expand_dims(rows_at, 1), cols_at])
        (e_r, e_c), seed_map = parts.embeddings, parts.seeds
        b_rows, *b_other = (ops.exp(self.sigma_scale * s) for s in parts.sigma)  # `bandwidth`, per plane
        b_cols = b_other[0] if b_other else b_rows
        n_pixels = height * width

        # the image in blocks of BLOCK x BLOCK pixels, (batch * blocks, BLOCK^2), padded at the
        # bottom and right with seed -1 (never foreground, never a start)
        row_blocks, col_blocks = (height + BLOCK - 1) // BLOCK, (width + BLOCK - 1) // BLOCK
        n_blocks = row_blocks * col_blocks
        area = BLOCK * BLOCK

        def blocked(x):
            """(c, height, width) on the block grid -> (c, blocks, BLOCK^2)."""
            x = ops.reshape(x, (-1, row_blocks, BLOCK, col_blocks, BLOCK))
            return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4)), (-1, n_blocks, area))

        grid_r = ops.expand_dims(ops.arange(row_blocks * BLOCK, dtype="int32"), 1)
        grid_c = ops.expand_dims(ops.arange(col_blocks * BLOCK, dtype="int32"), 0)
        # each pixel's index in the image, (batch * blocks, BLOCK^2)
        index = ops.reshape(blocked(ops.zeros((batch, 1, 1), dtype="int32") + grid_r * width + grid_c), (-1, area))
        # the embeddings and seeds stacked, padded once and cut into blocks once
        maps = ops.stack([e_r, e_c, seed_map])  # (3, batch, height, width)
        pad = [[0, 0], [0, 0], [0, row_blocks * BLOCK - height], [0, col_blocks * BLOCK - width]]
        maps = ops.reshape(blocked(ops.pad(maps, pad, constant_values=-1.0)), (3, batch * n_blocks, area))
        emb_r, emb_c, seeds = maps[0], maps[1], maps[2]
        fg = ops.greater(seeds, self.fg_threshold)
        start = ops.logical_and(fg, ops.greater_equal(seeds, self.seed_threshold))
        # each block's bounding box of foreground embeddings, (batch, blocks): which blocks a
        # center can reach
        big = 1e30
        box = [
            ops.reshape(reduce(ops.where(fg, e, fill), axis=1), (batch, n_blocks))
            for e in (emb_r, emb_c)
            for reduce, fill in ((ops.min, big), (ops.max, -big))
        ]
        # a center's embedding and bandwidth by one gather from each flat plane (batch * pixels,)
        flat = [ops.reshape(x, (-1,)) for x in (e_r, e_c, b_rows, b_cols)]
        image_ids = ops.arange(batch, dtype="int32")
        image_start = image_ids * n_pixels
        block_start = ops.expand_dims(image_ids * n_blocks, 1)
        # the image half of the (image, block) index pairs that update `best` and `first`,
        # (batch, 1, 2), built by broadcasting (tf2onnx cannot stack or concatenate tensors of
        # unknown rank inside the loop's branches); the block half is added per step
        image_pairs = ops.reshape(image_ids, (-1, 1, 1)) * ops.array([1, 0], dtype="int32")
        block_axis = ops.array([0, 1], dtype="int32")
        bound = self.max_instances
        window = self.window_blocks
        min_size = self.min_size

        def best_open(state, starts, block_seeds, block_index):
            """Per block: the highest open seed (-1 if none) and its first pixel in image order."""
            candidates = ops.where(ops.logical_and(ops.less(state, 0), starts), block_seeds, -1.0)
            top = ops.max(candidates, axis=-1)
            first = ops.min(ops.where(ops.equal(candidates, ops.expand_dims(top, -1)), block_index, n_pixels), axis=-1)
            return top, first

        def live_of(best, count):
            return ops.logical_and(ops.greater(ops.max(best, axis=1), -0.5), ops.less(count, bound))

        def cond(state, best, first, count):
            return ops.any(live_of(best, count))

        # The loop's state, kept small and in shapes that need no reshape by the batch inside
        # the loop (each costs nodes per step in exported graphs): `state` (batch * blocks,
        # area) is -1 for unassigned pixels, else the pixel's label (0: in no instance);
        # `best`, `first` (batch, blocks) each block's best open seed and its first pixel.
        def body(state, best, first, count):
            live = live_of(best, count)
            top = ops.max(best, axis=1, keepdims=True)
            # the first pixel of the highest seed, as numpy's stable sort (not ops.argmax, whose
            # TensorFlow form has a Bitcast that ONNX cannot run)
            # (`first` < n_pixels, so blocks below the top are pushed past every pixel: a product,
            # not a select, which tf2onnx lowers to six nodes)
            center = ops.min(first + n_pixels * ops.cast(ops.less(best, top), "int32"), axis=1)
            center = ops.minimum(center, n_pixels - 1)  # images without open seeds: `live` masks them
            at_center = center + image_start
            c_r, c_c, b_r, b_c = (ops.expand_dims(gather_rows(x, at_center), 1) for x in flat)  # (batch, 1)
            # phi > 0.5 needs b_axis (e_axis - c_axis)^2 < ln 2 on each axis (0.1 % float margin)
            reach_r = ops.sqrt(LN2 / b_r) * 1.001 + 1e-6
            reach_c = ops.sqrt(LN2 / b_c) * 1.001 + 1e-6
            near = ops.logical_and(
                ops.logical_and(ops.less_equal(box[0], c_r + reach_r), ops.greater_equal(box[1], c_r - reach_r)),
                ops.logical_and(ops.less_equal(box[2], c_c + reach_c), ops.greater_equal(box[3], c_c - reach_c)),
            )
            live_1 = ops.expand_dims(live, 1)
            center_1 = ops.expand_dims(center, 1)

            def visit(block_ids, size):
                """The step on `size` blocks of each image (`block_ids (batch, size)`, all the blocks the
                center reaches among them); returns the state with those blocks updated."""
                rows_ = ops.reshape(block_ids + block_start, (-1,))
                flat_shape = (-1, size * area) if isinstance(size, int) else (batch, -1)

                def part(x):
                    return gather_rows(x, rows_)  # (batch * size, area)

                s_, seed_, idx = part(state), part(seeds), part(index)
                fg_ = ops.greater(seed_, self.fg_threshold)
                d = b_r * ops.square(ops.reshape(part(emb_r), flat_shape) - c_r) + b_c * ops.square(
                    ops.reshape(part(emb_c), flat_shape) - c_c
                )
                proposal = ops.logical_and(ops.logical_and(ops.reshape(fg_, flat_shape), ops.less(d, LN2)), live_1)
                un = ops.less(ops.reshape(s_, flat_shape), 0)
                n_in = ops.sum(ops.cast(proposal, "int32"), axis=1)
                free = ops.sum(ops.cast(ops.logical_and(proposal, un), "int32"), axis=1)
                accept = ops.logical_and(
                    live, ops.logical_and(ops.greater(n_in, min_size), ops.greater(2 * free, n_in))
                )
                is_center = ops.logical_and(ops.equal(ops.reshape(idx, flat_shape), center_1), live_1)
                taken = ops.logical_and(un, ops.logical_or(proposal, is_center))  # unassigned (-1) -> 0
                new_state = ops.where(
                    ops.logical_and(proposal, ops.expand_dims(accept, 1)),
                    ops.expand_dims(count + 1, 1),
                    ops.reshape(s_, flat_shape) + ops.cast(taken, "int32"),
                )
                new_state = ops.reshape(new_state, (-1, area))
                starts = ops.logical_and(fg_, ops.greater_equal(seed_, self.seed_threshold))
                new_best, new_first = best_open(new_state, starts, seed_, idx)
                # (image, block) of each visited block: `best` and `first` are updated in their
                # (batch, blocks) shape (a reshape to the dynamic shape costs nodes per step)
                at = ops.reshape(image_pairs + ops.expand_dims(block_ids, -1) * block_axis, (-1, 2))
                return (
                    ops.scatter_update(state, ops.expand_dims(rows_, 1), new_state),
                    ops.scatter_update(best, at, new_best),
                    ops.scatter_update(first, at, new_first),
                    count + ops.cast(accept, "int32"),
                )

            def everywhere():
                return visit(
                    ops.zeros((batch, 1), "int32") + ops.expand_dims(ops.arange(n_blocks, dtype="int32"), 0), n_blocks
                )

            if isinstance(n_blocks, int) and n_blocks <= window:
                return everywhere()

            def windowed(size):
                _, ids = ops.top_k(ops.cast(near, "float32"), k=size, sorted=False)
                return visit(ops.cast(ids, "int32"), size)

            # the smallest window that holds every block in reach (a first one of at most
            # SMALL_WINDOW blocks: most objects need only a few), else every block; every block too
            # when the image has no more blocks than the window (sizes known only at run time)
            reached = ops.max(ops.sum(ops.cast(near, "int32"), axis=1))
            too_many = ops.logical_or(ops.greater(reached, window), ops.less_equal(n_blocks, window))
            if window > SMALL_WINDOW:

                def small_or_window():
                    return ops.cond(
                        ops.less_equal(reached, SMALL_WINDOW), lambda: windowed(SMALL_WINDOW), lambda: windowed(window)
                    )

                return ops.cond(too_many, everywhere, small_or_window)
            return ops.cond(too_many, everywhere, lambda: windowed(window))

        state = -ops.ones_like(seeds, dtype="int32")
        best, first = best_open(state, start, seeds, index)
        best, first = ops.reshape(best, (batch, n_blocks)), ops.reshape(first, (batch, n_blocks))
        count = ops.zeros((batch,), dtype="int32")
        state, best, first, count = ops.while_loop(cond, body, (state, best, first, count))
        open_ = ops.less(state, 0)
        dropped = ops.sum(ops.reshape(ops.cast(ops.logical_and(open_, start), "int32"), (batch, -1)), axis=1)
        labels = ops.reshape(ops.maximum(state, 0), (batch, row_blocks, col_blocks, BLOCK, BLOCK))
        labels = ops.reshape(ops.transpose(labels, (0, 1, 3, 2, 4)), (batch, row_blocks * BLOCK, col_blocks * BLOCK))
        return labels[:, :height, :width], dropped

    def _volumes(self, pred):
        """The loop on volumes `(batch, depth, height, width, 3 + n_sigma + 1)`: every step visits
        every voxel of each volume, flattened to `(batch, voxels)`."""
        n_sigma = pred.shape[-1] - 4
        if n_sigma not in (1, 3):
            raise ValueError(
                f"Expected a volume head output with 3 + n_sigma + 1 channels, n_sigma 1 or 3. Received: {pred.shape}"
            )
        shape = ops.shape(pred)
        batch = shape[0]
        parts = decode_spatial(pred, self.pixel_size, n_sigma, dims=3, z_spacing=self.z_spacing)
        flat = (batch, -1)
        emb = [ops.reshape(parts.embeddings[..., a], flat) for a in range(3)]
        bw = [ops.reshape(ops.exp(self.sigma_scale * parts.sigma[..., min(a, n_sigma - 1)]), flat) for a in range(3)]
        seeds = ops.reshape(parts.seeds, flat)
        n_voxels = ops.shape(seeds)[1]
        index = ops.expand_dims(ops.arange(n_voxels, dtype="int32"), 0)
        fg = ops.greater(seeds, self.fg_threshold)
        start = ops.logical_and(fg, ops.greater_equal(seeds, self.seed_threshold))
        bound, min_size = self.max_instances, self.min_size

        def live_of(state, count):
            open_ = ops.any(ops.logical_and(ops.less(state, 0), start), axis=1)
            return ops.logical_and(open_, ops.less(count, bound))

        def cond(state, count):
            return ops.any(live_of(state, count))

        def body(state, count):
            # the same step as the images' (and `cluster.spatial_embedding_instances`), on every voxel
            live = live_of(state, count)
            candidates = ops.where(ops.logical_and(ops.less(state, 0), start), seeds, -1.0)
            top = ops.max(candidates, axis=1, keepdims=True)
            center = ops.min(ops.where(ops.equal(candidates, top), index, n_voxels), axis=1, keepdims=True)
            center = ops.minimum(center, n_voxels - 1)
            d = None
            for e, b in zip(emb, bw):
                c = ops.take_along_axis(e, center, axis=1)
                term = ops.take_along_axis(b, center, axis=1) * ops.square(e - c)
                d = term if d is None else d + term
            live_1 = ops.expand_dims(live, 1)
            proposal = ops.logical_and(ops.logical_and(fg, ops.less(d, LN2)), live_1)
            un = ops.less(state, 0)
            n_in = ops.sum(ops.cast(proposal, "int32"), axis=1)
            free = ops.sum(ops.cast(ops.logical_and(proposal, un), "int32"), axis=1)
            accept = ops.logical_and(live, ops.logical_and(ops.greater(n_in, min_size), ops.greater(2 * free, n_in)))
            is_center = ops.logical_and(ops.equal(index, center), live_1)
            taken = ops.logical_and(un, ops.logical_or(proposal, is_center))  # unassigned (-1) -> 0
            state = ops.where(
                ops.logical_and(proposal, ops.expand_dims(accept, 1)),
                ops.expand_dims(count + 1, 1),
                state + ops.cast(taken, "int32"),
            )
            return state, count + ops.cast(accept, "int32")

        state = -ops.ones_like(seeds, dtype="int32")
        count = ops.zeros((batch,), dtype="int32")
        state, count = ops.while_loop(cond, body, (state, count))
        dropped = ops.sum(ops.cast(ops.logical_and(ops.less(state, 0), start), "int32"), axis=1)
        return ops.reshape(ops.maximum(state, 0), shape[:4]), dropped

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "z_spacing": self.z_spacing,
                "seed_threshold": self.seed_threshold,
                "fg_threshold": self.fg_threshold,
                "min_size": self.min_size,
                "pixel_size": self.pixel_size,
                "sigma_scale": self.sigma_scale,
                "max_instances": self.max_instances,
                "window_blocks": self.window_blocks,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class BallClustering(_Clustering):
    """The greedy ball clustering of embedding heads (De Brabandere et al. 2017), in the graph.

    The algorithm of `cluster.greedy_ball(start="spread", connected=False, min_size=0)`,
    vectorized over the batch: repeatedly the unassigned pixel first in a fixed quasi-random
    order (`cluster.embedding.spread_order`) starts a ball, the unassigned pixels within `radius` of its embedding give a mean, and the
    unassigned pixels within `radius` of that mean become the next segment (the first ball's
    pixels when none is). Every pixel gets a segment 1..N; the split into connected pieces and
    the merging of small pieces that `greedy_ball` adds by default are not in the graph.

    At most `max_instances` segments per image: an image that reaches the bound leaves its other
    pixels at 0, and `dropped_pixels` counts them.

    Input: embeddings `(batch, height, width, channels)`.
    Output: `(labels (batch, height, width) int32, dropped_pixels (batch,) int32)`.

    Args:
        radius: ball radius in embedding units (the loss's `delta_v`). Defaults to `0.5`.
        max_instances: the static bound on segments per image. Defaults to `256`.
    """

    def __init__(self, radius: float = 0.5, max_instances: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.radius = check_number("radius", radius, minimum=0.0, strict=True)
        self.max_instances = check_integer("max_instances", max_instances, minimum=1)

    def call(self, embeddings):
        z = ops.cast(embeddings, "float32")
        shape = ops.shape(z)
        spatial = tuple(shape[:-1])
        batch = shape[0]
        z = ops.reshape(z, (batch, -1, z.shape[-1]))
        n_pixels = ops.shape(z)[1]
        index = ops.expand_dims(ops.arange(n_pixels, dtype="int32"), 0)
        golden = ops.cast(index, "float32") * GOLDEN
        priority = golden - ops.floor(golden)
        r2 = self.radius * self.radius
        bound = self.max_instances

        def active(remaining, count):
            return ops.logical_and(ops.any(remaining, axis=1), ops.less(count, bound))

        def cond(labels, remaining, count):
            return ops.any(active(remaining, count))

        def within(center, mask):
            return ops.logical_and(mask, ops.less_equal(ops.sum(ops.square(z - center), axis=-1), r2))

        def body(labels, remaining, count):
            live = active(remaining, count)
            candidates = ops.where(remaining, priority, -1.0)
            top = ops.max(candidates, axis=1, keepdims=True)
            first = ops.min(ops.where(ops.equal(candidates, top), index, n_pixels), axis=1)
            start = ops.take_along_axis(z, ops.reshape(ops.minimum(first, n_pixels - 1), (-1, 1, 1)), axis=1)
            near = within(start, remaining)
            weight = ops.expand_dims(ops.cast(near, "float32"), -1)
            center = ops.sum(z * weight, axis=1, keepdims=True) / ops.maximum(
                ops.sum(weight, axis=1, keepdims=True), 1.0
            )
            inside = within(center, remaining)
            inside = ops.where(ops.any(inside, axis=1, keepdims=True), inside, near)
            inside = ops.logical_and(inside, ops.expand_dims(live, 1))
            count = count + ops.cast(live, "int32")
            labels = ops.where(inside, ops.expand_dims(count, 1), labels)
            return labels, ops.logical_and(remaining, ops.logical_not(inside)), count

        labels = ops.zeros((batch, n_pixels), dtype="int32")
        remaining = ops.ones((batch, n_pixels), dtype="bool")
        count = ops.zeros((batch,), dtype="int32")
        labels, remaining, count = ops.while_loop(cond, body, (labels, remaining, count))
        dropped = ops.sum(ops.cast(remaining, "int32"), axis=1)
        return ops.reshape(labels, spatial), dropped

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"radius": self.radius, "max_instances": self.max_instances})
        return config


def _edge_indices(size, multiple: int):
    """Indices `0..padded-1` clamped to `size - 1`: gathering them repeats the last row / column."""
    padded = ((size + multiple - 1) // multiple) * multiple
    return ops.minimum(ops.arange(padded, dtype="int32"), size - 1)


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class EdgePad(keras.layers.Layer):
    """Pads `(batch, h, w, c)` at the bottom and right to multiples of `multiple` by repeating
    the last row and column (edge padding), for any h, w >= 1, known or not; volumes
    `(batch, d, h, w, c)` on all three axes.

    Args:
        multiple: the model's input multiple (`2 ** depth`).
    """

    def __init__(self, multiple: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.multiple = check_integer("multiple", multiple, minimum=1)

    def call(self, images):
        shape = ops.shape(images)
        for axis in range(1, len(images.shape) - 1):
            images = ops.take(images, _edge_indices(shape[axis], self.multiple), axis=axis)
        return images

    def compute_output_shape(self, shape):
        def up(s):
            return None if s is None else -(-s // self.multiple) * self.multiple

        return (shape[0], *(up(s) for s in shape[1:-1]), shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config["multiple"] = self.multiple
        return config


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class CropLike(keras.layers.Layer):
    """Crops `x (batch, H, W, c)` to the height and width of `reference (batch, h, w, ...)`
    (top-left corner), undoing `EdgePad`; volumes `(batch, D, H, W, c)` to the reference's
    depth, height and width."""

    def call(self, x, reference):
        shape = ops.shape(reference)
        if len(x.shape) == 5:
            return x[:, : shape[1], : shape[2], : shape[3]]
        return x[:, : shape[1], : shape[2]]

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], *reference_shape[1 : len(x_shape) - 1], x_shape[-1])


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class PercentileNormalize(keras.layers.Layer):
    """Per image of `(batch, h, w, c)` (or volume, `(batch, d, h, w, c)`): `clip((x - p_low) / max(p_high - p_low, 1e-6), 0, 1)`
    with `p_low`, `p_high` the `percentiles` of that image over all pixels and channels
    (linear interpolation); the graph form of `data.normalize.normalize_percentiles`.

    Args:
        percentiles: `(low, high)`, `0 <= low < high <= 100`.
    """

    def __init__(self, percentiles=(1.0, 99.8), **kwargs):
        from keras_pixelembed.data.normalize import check_percentiles

        super().__init__(**kwargs)
        self.percentiles = check_percentiles("percentiles", percentiles)

    def call(self, images):
        from keras_pixelembed.data.normalize import EPSILON

        shape = ops.shape(images)
        flat = ops.reshape(images, (shape[0], -1))
        q = ops.quantile(flat, [self.percentiles[0] / 100.0, self.percentiles[1] / 100.0], axis=1)  # (2, batch)
        ones = (1,) * (len(images.shape) - 1)  # images and volumes
        low = ops.reshape(ops.cast(q[0], images.dtype), (-1, *ones))
        spread = ops.maximum(ops.reshape(ops.cast(q[1], images.dtype), (-1, *ones)) - low, EPSILON)
        return ops.clip((images - low) / spread, 0.0, 1.0)

    def compute_output_shape(self, shape):
        return shape

    def get_config(self) -> dict:
        config = super().get_config()
        config["percentiles"] = list(self.percentiles)
        return config


# The eight symmetries of the square as (transpose, flip rows, flip columns), applied in that order.
DIHEDRAL = tuple((t, r, c) for t in (False, True) for r in (False, True) for c in (False, True))


def _transform(x, transpose: bool, rows: bool, cols: bool):
    if transpose:
        x = ops.transpose(x, (0, 2, 1, 3))
    if rows:
        x = ops.flip(x, axis=1)
    if cols:
        x = ops.flip(x, axis=2)
    return x


def _untransform(x, transpose: bool, rows: bool, cols: bool):
    if cols:
        x = ops.flip(x, axis=2)
    if rows:
        x = ops.flip(x, axis=1)
    if transpose:
        x = ops.transpose(x, (0, 2, 1, 3))
    return x


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class DihedralBatch(keras.layers.Layer):
    """`(batch, h, w, c)` -> the four flips of the image (`transpose=False`: `(4 batch, h, w, c)`)
    or of its transpose (`transpose=True`: `(4 batch, w, h, c)`), stacked on the batch axis in
    `DIHEDRAL` order: one model call for four of the eight symmetries."""

    def __init__(self, transpose: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.transpose = bool(transpose)

    def call(self, images):
        return ops.concatenate([_transform(images, *t) for t in DIHEDRAL if t[0] == self.transpose], axis=0)

    def compute_output_shape(self, shape):
        batch = None if shape[0] is None else 4 * shape[0]
        return (batch, shape[2], shape[1], shape[3]) if self.transpose else (batch, *shape[1:])

    def get_config(self) -> dict:
        return {**super().get_config(), "transpose": self.transpose}


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class DihedralMean(keras.layers.Layer):
    """The mean of a spatial head's outputs on the eight symmetries (`DihedralBatch` without and
    with the transpose, then the model), each mapped back to the input's frame: see
    `spatial_tta`. Inputs `(4 batch, h, w, 2 + n_sigma + 1)` and `(4 batch, w, h, ...)`."""

    def __init__(self, n_sigma: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.n_sigma = check_integer("n_sigma", n_sigma, minimum=1)

    def call(self, plain, transposed):
        n_sigma = self.n_sigma
        offsets, rest = [], []
        for out, kind in ((plain, False), (transposed, True)):
            shape = ops.shape(out)
            parts = ops.reshape(out, (4, -1, shape[1], shape[2], out.shape[-1]))
            for k, (transpose, rows, cols) in enumerate(t for t in DIHEDRAL if t[0] == kind):
                one = _untransform(parts[k], transpose, rows, cols)
                dy, dx = ops.tanh(one[..., 0:1]), ops.tanh(one[..., 1:2])
                # the output is in the transformed frame: undo the flips' sign, then the transpose's swap
                dy, dx = (-dy if rows else dy), (-dx if cols else dx)
                sigma, seed = one[..., 2 : 2 + n_sigma], one[..., 2 + n_sigma :]
                if transpose:
                    dy, dx = dx, dy
                    if n_sigma == 2:
                        sigma = ops.flip(sigma, axis=-1)
                offsets.append(ops.concatenate([dy, dx], axis=-1))
                rest.append(ops.concatenate([sigma, seed], axis=-1))
        n = float(len(DIHEDRAL))
        mean_offsets = ops.clip(sum(offsets) / n, -1.0 + 1e-6, 1.0 - 1e-6)
        return ops.concatenate([ops.arctanh(mean_offsets), sum(rest) / n], axis=-1)

    def compute_output_shape(self, plain_shape, transposed_shape):
        batch = None if plain_shape[0] is None else plain_shape[0] // 4
        return (batch, *plain_shape[1:])

    def get_config(self) -> dict:
        return {**super().get_config(), "n_sigma": self.n_sigma}


def spatial_tta(model, images, n_sigma: int):
    """Test-time augmentation of a spatial head: `model` on the eight flips and 90-degree
    rotations of `images` (`(batch, h, w, 3)`, h and w multiples of the model's), each output
    mapped back to the input's frame and averaged. Offsets are mapped as vectors: a flip of the
    rows negates `dy`, of the columns `dx`, a transpose swaps them (and the two bandwidths when
    `n_sigma` is 2); they are averaged after `tanh` (the offsets themselves) and returned
    through `arctanh`, so the result is a raw head output like the model's. Bandwidths and seed
    logits are averaged as they are. The model runs twice, on batches of four symmetries (the
    four flips of the image, then of its transpose: `DihedralBatch`), so a graph holds two
    copies of it, not eight. Symbolic or eager; the same arithmetic on every backend."""
    plain = model(DihedralBatch(False)(images))
    transposed = model(DihedralBatch(True)(images))
    return DihedralMean(n_sigma)(plain, transposed)
