"""`Segmenter`: a trained model with its clustering, from images to int32 label maps."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

HEADS = ("spatial", "embedding")
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
        if self.head not in HEADS:
            raise ValueError(f"Invalid value for argument `head`. Expected one of {HEADS}. Received: head={self.head!r}")
        self.thresholds = {**DEFAULT_THRESHOLDS[self.head], **(self.thresholds or {})}

    @classmethod
    def load(cls, path: str) -> "Segmenter":
        """From a model directory (`model.keras`, `config.json`, `thresholds.json`) or a `.keras` file."""
        import keras

        import keras_pixelembed  # noqa: F401  (registers the custom objects)

        if os.path.isdir(path):
            model_path = os.path.join(path, "model.keras")
            config_path = os.path.join(path, "config.json")
            thresholds_path = os.path.join(path, "thresholds.json")
        else:
            model_path, config_path, thresholds_path = path, None, None
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"No model file: {model_path}")
        try:
            model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"Cannot load the model {model_path}: {error}") from error
        config = {}
        if config_path and os.path.isfile(config_path):
            with open(config_path) as f:
                config = json.load(f)
        thresholds = {}
        if thresholds_path and os.path.isfile(thresholds_path):
            with open(thresholds_path) as f:
                thresholds = json.load(f)
        head = config.get("head") or ("spatial" if model.output_shape[-1] in (4, 5) else "embedding")
        return cls(model=model, head=head, thresholds=thresholds, multiple=int(config.get("multiple", 2 ** config.get("depth", 3))),
                   pixel_size=float(config.get("loss_pixel_size", 1.0 / 1024)), sigma_scale=float(config.get("sigma_scale", 10.0)))

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
            return cluster.spatial_embedding_instances(output, pixel_size=self.pixel_size, sigma_scale=self.sigma_scale, **kwargs)
        return cluster.greedy_ball(output, **kwargs)

    def segment(self, image, **overrides) -> np.ndarray:
        return self.cluster(self.predict(image), **overrides)

    def embeddings(self, output: np.ndarray) -> np.ndarray:
        """What to picture as the embedding: the spatial head's embedding `e` plus the seed map,
        or the embedding itself."""
        if self.head == "spatial":
            from keras_pixelembed.cluster.spatial import spatial_embedding_parts

            e, _, seeds = spatial_embedding_parts(output, self.pixel_size, self.sigma_scale)
            return np.concatenate([e, seeds[..., None]], -1)
        return output


def tune_thresholds(segmenter: Segmenter, outputs, labels, metric=None) -> tuple[dict, float]:
    """Grid search of the clustering thresholds on validation outputs; returns (best, score).

    `metric(pred, gt) -> float` (higher is better) defaults to the symmetric best Dice over the
    labelled objects.
    """
    from keras_pixelembed.evaluation import object_sbd

    metric = metric or object_sbd
    if segmenter.head == "spatial":
        grid = [{"seed_threshold": s, "fg_threshold": f, "min_size": m}
                for s in (0.5, 0.6, 0.7, 0.8, 0.9) for f in (0.3, 0.4, 0.5) if f <= s for m in (5, 15, 30)]
    else:
        grid = [{"radius": r, "min_size": m} for r in (0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5) for m in (5, 15, 30)]
    best, best_score = None, -np.inf
    for params in grid:
        score = float(np.mean([metric(segmenter.cluster(o, **params), g) for o, g in zip(outputs, labels)]))
        if score > best_score:
            best, best_score = params, score
    return best, best_score
