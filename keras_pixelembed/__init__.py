"""keras-pixelembed: learn a vector per pixel so that simple grouping finds the segments."""

from keras_pixelembed.layers import CoordinateGrid, SpatialEmbeddingHead
from keras_pixelembed.losses import (
    DiscriminativeLoss,
    LovaszHingeLoss,
    MetricLearningLoss,
    OffsetUncertaintyLoss,
    PushPullBallsLoss,
    PushPullCentroidLoss,
    SpatialEmbeddingLoss,
    lovasz_hinge,
)
from keras_pixelembed.models import ResidualEmbedding, build_pixel_embedder  # registers the model layers for loading

__version__ = "0.1.0"

__all__ = [
    "ResidualEmbedding",
    "build_pixel_embedder",
    "CoordinateGrid",
    "LovaszHingeLoss",
    "SpatialEmbeddingHead",
    "SpatialEmbeddingLoss",
    "lovasz_hinge",
    "DiscriminativeLoss",
    "MetricLearningLoss",
    "OffsetUncertaintyLoss",
    "PushPullBallsLoss",
    "PushPullCentroidLoss",
    "__version__",
]
