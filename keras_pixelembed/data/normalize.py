"""Percentile normalization of microscopy images (as csbdeep and stardist do it).

Fluorescence images use a small part of their range (a 16-bit nuclei image may span 33,000 to
37,000), so dividing by 65535 leaves almost no contrast. `normalize_percentiles` maps the
`low`-th percentile of each image to 0 and the `high`-th to 1 (over all pixels and channels,
linear interpolation) and clips to [0, 1], the range every model of this package takes (the
training augmentation clips too, so an unclipped input would differ from what the model saw).
The same function is
applied to training crops (`PercentileNormalized`) and, as a graph layer
(`layers.clustering.PercentileNormalize`), inside `Segmenter` and the exports, so training and
inference agree; a run records its `percentiles` in `config.json`.
"""

from __future__ import annotations

import numpy as np

from keras_pixelembed.data.sources import Source

EPSILON = 1e-6  # the smallest spread divided by: a constant image becomes zeros, never NaN


def check_percentiles(name: str, value) -> tuple[float, float] | None:
    """`(low, high)` as floats with `0 <= low < high <= 100`, None for None; otherwise a
    ValueError naming the argument."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
        ok = 0.0 <= low < high <= 100.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected two increasing percentiles (low, high) with "
            f"0 <= low < high <= 100, such as (1, 99.8). Received: {name}={value!r}"
        )
    return low, high


def normalize_percentiles(image, percentiles) -> np.ndarray:
    """`clip((image - p_low) / max(p_high - p_low, 1e-6), 0, 1)` in float32, with `p_low`,
    `p_high` the `percentiles` of the whole image (all pixels and channels)."""
    low, high = check_percentiles("percentiles", percentiles)
    x = np.asarray(image, np.float32)
    p_low, p_high = np.percentile(x, (low, high)).astype(np.float32)
    return np.clip((x - p_low) / np.float32(max(float(p_high - p_low), EPSILON)), 0.0, 1.0).astype(np.float32)


class PercentileNormalized(Source):
    """A source whose images are percentile-normalized (`normalize_percentiles`) when loaded;
    masks and ignored pixels unchanged. What `train` wraps the fit's sources in when the
    configuration has `percentiles`."""

    def __init__(self, source: Source, percentiles):
        self.source = source
        self.percentiles = check_percentiles("percentiles", percentiles)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int):
        image, masks, ignore = self.source.load(index)
        return normalize_percentiles(image, self.percentiles), masks, ignore

    def name(self, index: int) -> str:
        return self.source.name(index)

    def size(self, index: int):
        return self.source.size(index)
