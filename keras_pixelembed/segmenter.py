"""`Segmenter`: a trained model with its clustering, from images (or volumes) to int32 label maps."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from keras_pixelembed.models.builders import HEADS
from keras_pixelembed.run_dir import Run, load_run
from keras_pixelembed.validation import check_choice, check_integer

logger = logging.getLogger("keras_pixelembed")

DEFAULT_THRESHOLDS = {
    "spatial": {"seed_threshold": 0.9, "fg_threshold": 0.5, "min_size": 10},
    "embedding": {"radius": 0.5, "min_size": 10},
}


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """`(h, w, c)` float32 to `size` `(h', w')`: area-averaged (box filter) when shrinking,
    bilinear when enlarging, channel by channel."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    method = Image.Resampling.BOX if size[0] * size[1] < h * w else Image.Resampling.BILINEAR
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), "F").resize(size[::-1], method))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def resize_labels(labels: np.ndarray, size) -> np.ndarray:
    """A label map `(h, w)` to `size` by nearest neighbour (each output pixel takes the label
    under its centre); no new label appears."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return labels[rows[:, None], cols[None, :]]


@dataclass
class Segmenter:
    """A per-pixel model and the clustering that turns its output into segments.

    Attributes:
        model: a Keras model `(batch, h, w, 3)` -> per-pixel output.
        head: `"spatial"` (output `[dy, dx, sigma.., seed]`, clustered by seeds; background 0)
            or `"embedding"` (clustered with `greedy_ball`; every pixel gets a segment).
        thresholds: keyword arguments of the clustering function.
        multiple: inputs are padded (edge) to a multiple of this and the output cropped back.
        pixel_size, sigma_scale: of the spatial loss the model was trained with.
        tile_size: images with a side longer than this are predicted in overlapping tiles of
            this size and stitched (`None`: never). Defaults to `512`.
        tile_overlap: pixels of context on each side of a tile that are predicted but not
            kept; the kept centres of neighbouring tiles meet without a seam. Defaults to `64`.
        max_instances: the in-graph clustering's bound on instances per image. `segment` of an
            image with more falls back to the numpy clustering (no bound) and logs it; the
            exports keep the bound they were made with. Defaults to `256`.
        percentiles: `(low, high)`: each image is percentile-normalized first
            (`data.normalize.normalize_percentiles`, in the graph: `PercentileNormalize`), as
            the model's training crops were; a run trained with `percentiles` records them and
            `load` reads them. `None` (default): images are taken as they are, in [0, 1].
        tta: test-time augmentation (spatial heads): the model runs on the eight flips and
            90-degree rotations of the image, outputs mapped back and averaged
            (`layers.clustering.spatial_tta`); eight times the model's cost. Defaults to False.
        scale: `segment` resizes the image by this factor before the model (area-averaged
            when shrinking, bilinear when enlarging) and the labels back to the image's size
            (nearest): a model sees objects at the size it was trained on (a bundled model's
            card gives it) when `scale` is that size over the size of your objects. `predict`
            and `predict_tiled` work at the scale they are given. Defaults to 1.0.
        z_spacing: volumes: the slice spacing in units of the pixel spacing, as in the loss
            the model was trained with (a run records it). Defaults to 1.0.

    Volumes: a model built with `ndim=3` takes volumes `(d, h, w)` or `(d, h, w, c)` (`c` its
    input channels) and gives label volumes `(d, h, w)`; a volume with a side longer than
    `tile_size` is predicted in overlapping tiles in z, y and x. `segment` clusters a volume
    with the numpy reference (`cluster.spatial_embedding_instances`, whose cost follows the
    objects); the graph's `SeedClustering`, which visits every voxel at each step and gives
    the same labels, is what `segmentation_model` and the exports carry. Volumes need a
    spatial head, and take neither `tta` nor `scale`.
    """

    model: object
    head: str = "spatial"
    thresholds: dict = field(default_factory=dict)
    multiple: int = 8
    pixel_size: float = 1.0 / 1024
    sigma_scale: float = 10.0
    tile_size: int | None = 512
    tile_overlap: int = 64
    max_instances: int = 256
    percentiles: tuple | None = None
    tta: bool = False
    scale: float = 1.0
    z_spacing: float = 1.0

    def __post_init__(self):
        from keras_pixelembed.data.normalize import check_percentiles

        check_choice("head", self.head, HEADS)
        self.percentiles = check_percentiles("percentiles", self.percentiles)
        if not isinstance(self.tta, bool):
            raise ValueError(f"Invalid value for argument `tta`. Expected True or False. Received: tta={self.tta!r}")
        if self.tta and self.head != "spatial":
            raise ValueError(
                "tta=True needs a spatial head (offsets can be rotated back; an embedding head's "
                "vectors cannot be averaged across rotations)"
            )
        try:
            self.scale = float(self.scale)
            ok = np.isfinite(self.scale) and 0.0 < self.scale <= 16.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"Invalid value for argument `scale`. Expected a number in (0, 16]. Received: scale={self.scale!r}"
            )
        from keras_pixelembed.validation import check_number

        self.z_spacing = check_number("z_spacing", self.z_spacing, minimum=0.0, strict=True)
        if self.ndim == 3:
            if self.head != "spatial":
                raise ValueError("Volumes (a model of 5-D input) need a spatial head. Received: head='embedding'")
            if self.tta:
                raise ValueError("tta=True is for images: a volume model takes no test-time augmentation")
            if self.scale != 1.0:
                raise ValueError(f"`scale` is for images: a volume model takes scale=1.0. Received: scale={self.scale}")
        self.tile_overlap = check_integer("tile_overlap", self.tile_overlap, minimum=0)
        if self.tile_size is not None:
            self.tile_size = check_integer("tile_size", self.tile_size, minimum=2 * self.tile_overlap + 1)
        self.thresholds = {**DEFAULT_THRESHOLDS[self.head], **(self.thresholds or {})}

    @classmethod
    def load(cls, path: str, **kwargs) -> Segmenter:
        """From a run directory (`model.keras`, `config.json`, `thresholds.json`), a `.keras`
        file or a bundled model's name (`"spatial_unet"`, `bundled.bundled_models()`); `kwargs`
        set the other fields (`tile_size`, `tile_overlap`, `tta`; `percentiles` replaces the
        run's own)."""
        from keras_pixelembed.bundled import resolve_model

        return cls.from_run(load_run(resolve_model(path)), **kwargs)

    @classmethod
    def from_run(cls, run: Run, **kwargs) -> Segmenter:
        """From what `run_dir.load_run` read: the model with its head, multiple, pixel size,
        sigma scale and tuned thresholds."""
        config = run.config
        fields = dict(
            model=run.model,
            head=run.head,
            thresholds=run.thresholds,
            multiple=int(config["multiple"]),
            pixel_size=float(config.get("pixel_size", 1.0 / 1024)),
            sigma_scale=float(config.get("sigma_scale", 10.0)),
            percentiles=config.get("percentiles"),
            z_spacing=float(config.get("z_spacing", 1.0)),
        )
        return cls(**{**fields, **kwargs})

    @property
    def ndim(self) -> int:
        """2 for a model of images `(batch, h, w, c)`, 3 for volumes `(batch, d, h, w, c)`."""
        inputs = getattr(self.model, "inputs", None)
        return len(inputs[0].shape) - 2 if inputs else 2

    @property
    def channels(self) -> int:
        """The model's input channels (3 for images; volumes: what the model was built with)."""
        inputs = getattr(self.model, "inputs", None)
        return int(inputs[0].shape[-1]) if inputs and inputs[0].shape[-1] else 3

    def segmentation_model(
        self, max_instances: int | None = None, cluster: bool = True, normalize: bool = True, **overrides
    ):
        """The whole path as one `keras.Model`: `images (batch, h, w, 3)` float32 in [0, 1], any
        h and w >= 1 -> `{"output", "labels", "dropped_seeds"}`.

        Inside: the percentile normalization when the segmenter has `percentiles` (and
        `normalize`; the tiled path normalizes the whole image itself), edge padding to the model's multiple (`EdgePad`), the model, the crop back
        (`CropLike`) and, for spatial heads, the seed clustering (`SeedClustering`) with this
        segmenter's thresholds (`overrides` replace some). `output` is the raw head output
        cropped to the input size, `labels` int32 `(batch, h, w)` (0 = background), and
        `dropped_seeds` `(batch,)` the seed pixels left when an image reached `max_instances`.
        With `tta`, the model runs on the eight flips and rotations of the padded image
        (`spatial_tta`).
        Embedding heads cluster with `BallClustering` (`radius` of the thresholds) and give
        `dropped_pixels` instead of `dropped_seeds`; `cluster=False` gives `output` only. This
        is what `segment`, `predict` and the exports run.
        """
        import keras

        from keras_pixelembed.layers.clustering import (
            BallClustering,
            CropLike,
            EdgePad,
            PercentileNormalize,
            SeedClustering,
            spatial_tta,
        )

        max_instances = max_instances or self.max_instances
        thresholds = {**self.thresholds, **overrides}
        key = (
            id(self.model),
            self.head,
            self.multiple,
            self.pixel_size,
            self.sigma_scale,
            max_instances,
            cluster,
            tuple(sorted(thresholds.items())) if cluster else None,  # the output-only graph has none
            self.percentiles if normalize else None,
            self.tta,
        )
        cache = self.__dict__.setdefault("_graphs", {})
        if key in cache:
            return cache[key]
        images = keras.Input((None,) * self.ndim + (self.channels,), name="images")
        x = images
        if normalize and self.percentiles is not None:
            x = PercentileNormalize(self.percentiles, name="percentile_normalize")(x)
        x = EdgePad(self.multiple, name="edge_pad")(x)
        x = spatial_tta(self.model, x, self.model.output_shape[-1] - 3) if self.tta else self.model(x)
        output = CropLike(name="crop")(x, images)
        outputs = {"output": output}
        if cluster and self.head == "spatial":
            labels, dropped = SeedClustering(
                pixel_size=self.pixel_size,
                sigma_scale=self.sigma_scale,
                max_instances=max_instances,
                z_spacing=self.z_spacing,
                name="seed_clustering",
                **thresholds,
            )(output)
            outputs.update(labels=labels, dropped_seeds=dropped)
        elif cluster:
            ball = BallClustering(thresholds["radius"], max_instances=max_instances, name="ball_clustering")
            labels, dropped = ball(output)
            outputs.update(labels=labels, dropped_pixels=dropped)
        cache[key] = keras.Model(images, outputs, name=f"{self.model.name}_segmentation")
        return cache[key]

    def _batch(self, images):
        if self.ndim == 3:
            return self._volume_batch(images)
        x = np.asarray(images, np.float32)
        if x.ndim == 2:  # one grey image (h, w), as microscopy arrays come
            x = x[..., None]
        if x.ndim in (3, 4) and x.shape[-1] == 1:  # grey: the models take three equal channels
            x = np.repeat(x, 3, axis=-1)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"Expected images of shape (h, w), (h, w, 1), (h, w, 3) or (batch, h, w, 3). Received: {x.shape}"
            )
        if min(x.shape[1:3]) < 1:
            raise ValueError(f"Expected images of at least 1 x 1 pixels. Received: {x.shape}")
        return x, single

    def _volume_batch(self, volumes):
        x = np.asarray(volumes, np.float32)
        c = self.channels
        if x.ndim == 3 and c == 1:  # one grey volume (d, h, w), as TIFF stacks come
            x = x[..., None]
        single = x.ndim == 4
        if single:
            x = x[None]
        if x.ndim != 5 or x.shape[-1] != c:
            grey = "(d, h, w), " if c == 1 else ""
            raise ValueError(
                f"Expected volumes of shape {grey}(d, h, w, {c}) or (batch, d, h, w, {c}) (the model takes {c} "
                f"channel{'s' if c > 1 else ''}). Received: {x.shape}"
            )
        if min(x.shape[1:4]) < 1:
            raise ValueError(f"Expected volumes of at least 1 x 1 x 1 voxels. Received: {x.shape}")
        return x, single

    def _run(self, images, cluster: bool = True, **overrides) -> dict:
        x, single = self._batch(images)
        out = self.segmentation_model(cluster=cluster, **overrides).predict_on_batch(x)
        out = {k: np.asarray(v) for k, v in out.items()}
        return {k: v[0] for k, v in out.items()} if single else out

    def _tiled(self, shape) -> bool:
        n = self.ndim
        one = len(shape) == n + 1 or (n == 3 and len(shape) == 3 and self.channels == 1)
        return self.tile_size is not None and one and max(shape[:n]) > self.tile_size

    def predict(self, images) -> np.ndarray:
        """Raw per-pixel output of a batch `(b, h, w, 3)` or one image `(h, w, 3)` in [0, 1]
        (edge-padded to the model's multiple inside the graph, cropped back). One image with a
        side longer than `tile_size` is predicted in overlapping tiles (`predict_tiled`)."""
        images = np.asarray(images)
        if self._tiled(images.shape):
            return self.predict_tiled(images)
        return self._run(images, cluster=False)["output"]

    def predict_tiled(self, image) -> np.ndarray:
        """One image's raw output `(h, w, channels)` (a volume's `(d, h, w, channels)`, tiles cut
        in z, y and x), predicted tile by tile.

        The image is cut into a grid of cells of `tile_size - 2 * tile_overlap` pixels; each cell
        is predicted with `tile_overlap` pixels of context on every side (less at the image's
        border) and only the cell is kept. The spatial head's offsets are relative to the pixel,
        so the stitched output is one field over the whole image and the clustering of it gives
        an object cut by a cell border one label. Memory: the image, the output and one tile.
        """
        out = None
        for top, band in self._tiled_bands(image):
            if out is None:
                out = np.empty((np.asarray(image).shape[0], *band.shape[1:]), np.float32)
            out[top : top + band.shape[0]] = band
        return out

    def _tiled_bands(self, image):
        """`predict_tiled`'s output one band of cells at a time: yields `(top, output rows
        top .. top + cell)` in order (the whole output is never held)."""
        import itertools

        from keras import ops

        from keras_pixelembed.layers.spatial import CoordinateGrid

        x, single = self._batch(image)
        if not single:
            what = "one volume (d, h, w, c)" if self.ndim == 3 else "one image (h, w, 3)"
            raise ValueError(f"predict_tiled takes {what}. Received: {x.shape}")
        x = x[0]
        if self.percentiles is not None:  # the whole image's percentiles, not each tile's
            from keras_pixelembed.data.normalize import normalize_percentiles

            x = normalize_percentiles(x, self.percentiles)
        n = self.ndim
        sizes = x.shape[:n]
        tile, margin = self.tile_size or max(sizes), self.tile_overlap
        cell = tile - 2 * margin
        model = self.segmentation_model(cluster=False, normalize=False)
        # a tile's position channels are those it has in the whole image (models built with
        # coordinates or a residual embedding read them): eager calls see each tile's origin
        grids = [layer for layer in self.model._flatten_layers() if isinstance(layer, CoordinateGrid)]
        zero = (0,) * n
        try:
            for top in range(0, sizes[0], cell):  # a loop over the tiles of one image
                bottom, band = min(sizes[0], top + cell), None
                # the cells of this band: their starts along the other axes
                for rest in itertools.product(*(range(0, s, cell) for s in sizes[1:])):
                    starts = (top, *rest)
                    lo = [max(0, a - margin) for a in starts]
                    hi = [min(s, a + cell + margin) for a, s in zip(starts, sizes)]
                    for grid in grids:
                        grid.origin = tuple(lo)
                    tile_input = x[(None, *(slice(a, b) for a, b in zip(lo, hi)))]
                    if grids:
                        pred = ops.convert_to_numpy(model(tile_input, training=False)["output"])[0]
                    else:
                        pred = np.asarray(model.predict_on_batch(tile_input)["output"])[0]
                    if band is None:
                        band = np.empty((bottom - top, *sizes[1:], pred.shape[-1]), np.float32)
                    ends = [min(s, a + cell) for a, s in zip(starts, sizes)]
                    kept = tuple(slice(a - o, e - o) for a, e, o in zip(starts, ends, lo))
                    band[(slice(None), *(slice(a, e) for a, e in zip(starts[1:], ends[1:])))] = pred[kept]
                for grid in grids:
                    grid.origin = zero
                yield top, band
        finally:
            for grid in grids:
                grid.origin = zero

    def _cluster_kwargs(self, overrides: dict) -> dict:
        """The numpy clustering's keyword arguments: the thresholds with `overrides`, and a
        volume's `z_spacing`."""
        kwargs = {**self.thresholds, **overrides}
        if self.ndim == 3:
            kwargs["z_spacing"] = self.z_spacing
        return kwargs

    def cluster(self, output: np.ndarray, **overrides) -> np.ndarray:
        """One image's raw output -> int32 label map, with the numpy reference clustering
        (`cluster.spatial_embedding_instances` or `cluster.greedy_ball`); the threshold search
        uses it on stored outputs."""
        from keras_pixelembed import cluster

        kwargs = self._cluster_kwargs(overrides)
        if self.head == "spatial":
            return cluster.spatial_embedding_instances(
                output, pixel_size=self.pixel_size, sigma_scale=self.sigma_scale, **kwargs
            )
        return cluster.greedy_ball(output, start="spread", **kwargs)

    def segment(self, image, **overrides) -> np.ndarray:
        """One image `(h, w, 3)` float in [0, 1] (any h, w >= 1) -> `(h, w)` int32 label map.

        Runs `segmentation_model` (padding, model, crop and clustering in one graph, the same
        that the exports serve). Spatial heads: 0 is background, instances 1..N by decreasing
        seed. Embedding heads: the balls come from the graph (`BallClustering`), then each
        segment is split into its connected pieces and pieces under `min_size` are merged
        (numpy), which is `greedy_ball(start="spread")`; every pixel gets a segment 1..N. An
        image with a side longer than `tile_size` is predicted in tiles (`predict_tiled`) and
        the stitched output is clustered whole by the numpy reference of the same algorithm
        (for spatial heads its cost follows the objects, not the image, and only the foreground
        of each band of tiles is kept: the whole output is never held). `overrides` replace
        the tuned thresholds for this call (`seed_threshold`, `fg_threshold`, `min_size`; or
        `radius`, `min_size`).
        """
        image = np.asarray(image)
        if self.scale != 1.0:
            x, single = self._batch(image)
            if not single:
                raise ValueError(f"segment takes one image (h, w, 3). Received: {x.shape}")
            h, w = x.shape[1:3]
            size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
            return resize_labels(self._segment(resize_image(x[0], size), **overrides), (h, w))
        return self._segment(image, **overrides)

    def _segment(self, image, **overrides) -> np.ndarray:
        if self._tiled(image.shape) and self.head == "spatial":
            # band by band of tiles into the clustering's foreground: the whole output never exists
            from keras_pixelembed.cluster.spatial import instances_from_bands

            kwargs = self._cluster_kwargs(overrides)
            return instances_from_bands(
                self._tiled_bands(image),
                image.shape[: self.ndim],
                pixel_size=self.pixel_size,
                sigma_scale=self.sigma_scale,
                **kwargs,
            )
        if self._tiled(image.shape):
            return self.cluster(self.predict(image), **overrides)
        if self.ndim == 3:  # the numpy clustering: its cost follows the objects, the graph's the voxels
            return self.cluster(self._run(image, cluster=False)["output"], **overrides)
        out = self._run(image, **overrides)
        dropped = int(np.sum(out.get("dropped_seeds", out.get("dropped_pixels", 0))))
        if dropped:  # the image has more instances than the graph's bound: the numpy path has none
            logger.warning(
                "more instances than the in-graph bound (max_instances=%d, %d pixels left): clustered with numpy",
                self.max_instances,
                dropped,
            )
            return self.cluster(out["output"], **overrides)
        labels = out["labels"].astype(np.int32)
        if self.head == "embedding":  # the balls come from the graph; pieces and small ones in numpy
            from keras_pixelembed.cluster.embedding import _finish

            min_size = {**self.thresholds, **overrides}.get("min_size", 10)
            labels = _finish(labels, labels.shape, min_size, connected=True)
        return labels

    def embeddings(self, output: np.ndarray) -> np.ndarray:
        """What to picture as the embedding: the spatial head's embedding `e` plus the seed map,
        or the embedding itself."""
        if self.head == "spatial":
            from keras_pixelembed.cluster.spatial import spatial_embedding_parts

            e, _, seeds = spatial_embedding_parts(output, self.pixel_size, self.sigma_scale)
            return np.concatenate([e, seeds[..., None]], -1)
        return output
