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

    def predict(self, images) -> np.ndarray:
        """Raw per-pixel output of a batch `(b, h, w, 3)` or one image `(h, w, 3)` in [0, 1]."""
        x = np.asarray(images, np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"Expected images of shape (h, w, 3) or (batch, h, w, 3). Received: {x.shape}")
        h, w = x.shape[1:3]
        ph, pw = -(-h // self.multiple) * self.multiple, -(-w // self.multiple) * self.multiple
        if (ph, pw) != (h, w):
            x = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        out = np.asarray(self.model.predict(x, verbose=0))[:, :h, :w]
        return out[0] if single else out

    def cluster(self, output: np.ndarray, **overrides) -> np.ndarray:
        """One image's raw output -> int32 label map."""
        from keras_pixelembed import cluster

        kwargs = {**self.thresholds, **overrides}
        if self.head == "spatial":
            return cluster.spatial_embedding_instances(
                output, pixel_size=self.pixel_size, sigma_scale=self.sigma_scale, **kwargs
            )
        return cluster.greedy_ball(output, **kwargs)

    def segment(self, image, **overrides) -> np.ndarray:
        """One image `(h, w, 3)` float in [0, 1] -> `(h, w)` int32 label map.

        Spatial heads: 0 is background, instances 1..N by decreasing seed. Embedding heads:
        every pixel gets a segment 1..N. `overrides` replace the tuned thresholds for this call
        (`seed_threshold`, `fg_threshold`, `min_size`; or `radius`, `min_size`).
        """
        return self.cluster(self.predict(image), **overrides)

    def embeddings(self, output: np.ndarray) -> np.ndarray:
        """What to picture as the embedding: the spatial head's embedding `e` plus the seed map,
        or the embedding itself."""
        if self.head == "spatial":
            from keras_pixelembed.cluster.spatial import spatial_embedding_parts

            e, _, seeds = spatial_embedding_parts(output, self.pixel_size, self.sigma_scale)
            return np.concatenate([e, seeds[..., None]], -1)
        return output
