"""`Segmenter`: a trained model with its clustering, from images to int32 label maps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from keras_pixelembed.models.builders import HEADS
from keras_pixelembed.run_dir import Run, load_run
from keras_pixelembed.validation import check_choice

DEFAULT_THRESHOLDS = {
    "spatial": {"seed_threshold": 0.9, "fg_threshold": 0.5, "min_size": 10},
    "embedding": {"radius": 0.5, "min_size": 10},
}


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
    """

    model: object
    head: str = "spatial"
    thresholds: dict = field(default_factory=dict)
    multiple: int = 8
    pixel_size: float = 1.0 / 1024
    sigma_scale: float = 10.0

    def __post_init__(self):
        check_choice("head", self.head, HEADS)
        self.thresholds = {**DEFAULT_THRESHOLDS[self.head], **(self.thresholds or {})}

    @classmethod
    def load(cls, path: str) -> Segmenter:
        """From a run directory (`model.keras`, `config.json`, `thresholds.json`) or a `.keras` file."""
        return cls.from_run(load_run(path))

    @classmethod
    def from_run(cls, run: Run) -> Segmenter:
        """From what `run_dir.load_run` read: the model with its head, multiple, pixel size,
        sigma scale and tuned thresholds."""
        config = run.config
        return cls(
            model=run.model,
            head=run.head,
            thresholds=run.thresholds,
            multiple=int(config["multiple"]),
            pixel_size=float(config.get("pixel_size", 1.0 / 1024)),
            sigma_scale=float(config.get("sigma_scale", 10.0)),
        )

    def segmentation_model(self, max_instances: int = 256, **overrides):
        """The whole path as one `keras.Model`: `images (batch, h, w, 3)` float32 in [0, 1], any
        h and w >= 1 -> `{"output", "labels", "dropped_seeds"}`.

        Inside: edge padding to the model's multiple (`EdgePad`), the model, the crop back
        (`CropLike`) and, for spatial heads, the seed clustering (`SeedClustering`) with this
        segmenter's thresholds (`overrides` replace some). `output` is the raw head output
        cropped to the input size, `labels` int32 `(batch, h, w)` (0 = background), and
        `dropped_seeds` `(batch,)` the seed pixels left when an image reached `max_instances`.
        Embedding heads give `output` only (their ball clustering runs in numpy). This is what
        `segment`, `predict` and the exports run.
        """
        import keras

        from keras_pixelembed.layers.clustering import CropLike, EdgePad, SeedClustering

        thresholds = {**self.thresholds, **overrides}
        key = (
            id(self.model),
            self.head,
            self.multiple,
            self.pixel_size,
            self.sigma_scale,
            max_instances,
            tuple(sorted(thresholds.items())),
        )
        cache = self.__dict__.setdefault("_graphs", {})
        if key in cache:
            return cache[key]
        images = keras.Input((None, None, 3), name="images")
        output = CropLike(name="crop")(self.model(EdgePad(self.multiple, name="edge_pad")(images)), images)
        outputs = {"output": output}
        if self.head == "spatial":
            labels, dropped = SeedClustering(
                pixel_size=self.pixel_size,
                sigma_scale=self.sigma_scale,
                max_instances=max_instances,
                name="seed_clustering",
                **thresholds,
            )(output)
            outputs.update(labels=labels, dropped_seeds=dropped)
        cache[key] = keras.Model(images, outputs, name=f"{self.model.name}_segmentation")
        return cache[key]

    @staticmethod
    def _batch(images):
        x = np.asarray(images, np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"Expected images of shape (h, w, 3) or (batch, h, w, 3). Received: {x.shape}")
        if min(x.shape[1:3]) < 1:
            raise ValueError(f"Expected images of at least 1 x 1 pixels. Received: {x.shape}")
        return x, single

    def _run(self, images, **overrides) -> dict:
        x, single = self._batch(images)
        out = self.segmentation_model(**overrides).predict_on_batch(x)
        out = {k: np.asarray(v) for k, v in out.items()}
        return {k: v[0] for k, v in out.items()} if single else out

    def predict(self, images) -> np.ndarray:
        """Raw per-pixel output of a batch `(b, h, w, 3)` or one image `(h, w, 3)` in [0, 1]
        (edge-padded to the model's multiple inside the graph, cropped back)."""
        return self._run(images)["output"]

    def cluster(self, output: np.ndarray, **overrides) -> np.ndarray:
        """One image's raw output -> int32 label map, with the numpy reference clustering
        (`cluster.spatial_embedding_instances` or `cluster.greedy_ball`); the threshold search
        uses it on stored outputs."""
        from keras_pixelembed import cluster

        kwargs = {**self.thresholds, **overrides}
        if self.head == "spatial":
            return cluster.spatial_embedding_instances(
                output, pixel_size=self.pixel_size, sigma_scale=self.sigma_scale, **kwargs
            )
        return cluster.greedy_ball(output, **kwargs)

    def segment(self, image, **overrides) -> np.ndarray:
        """One image `(h, w, 3)` float in [0, 1] (any h, w >= 1) -> `(h, w)` int32 label map.

        Spatial heads run `segmentation_model` (padding, model, crop and seed clustering in one
        graph, the same that the exports serve): 0 is background, instances 1..N by decreasing
        seed. Embedding heads: every pixel gets a segment 1..N (`greedy_ball`). `overrides`
        replace the tuned thresholds for this call (`seed_threshold`, `fg_threshold`,
        `min_size`; or `radius`, `min_size`).
        """
        if self.head == "spatial":
            return self._run(image, **overrides)["labels"].astype(np.int32)
        return self.cluster(self.predict(image), **overrides)

    def embeddings(self, output: np.ndarray) -> np.ndarray:
        """What to picture as the embedding: the spatial head's embedding `e` plus the seed map,
        or the embedding itself."""
        if self.head == "spatial":
            from keras_pixelembed.cluster.spatial import spatial_embedding_parts

            e, _, seeds = spatial_embedding_parts(output, self.pixel_size, self.sigma_scale)
            return np.concatenate([e, seeds[..., None]], -1)
        return output
