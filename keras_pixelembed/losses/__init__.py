"""Pixel-embedding losses: `keras.losses.Loss` subclasses written with `keras.ops` only."""

from keras_pixelembed.losses.discriminative import DiscriminativeLoss
from keras_pixelembed.losses.lovasz import LovaszHingeLoss, lovasz_hinge
from keras_pixelembed.losses.metric_learning import MetricLearningLoss
from keras_pixelembed.losses.offset_uncertainty import OffsetUncertaintyLoss
from keras_pixelembed.losses.push_pull_balls import PushPullBallsLoss
from keras_pixelembed.losses.push_pull_centroid import PushPullCentroidLoss
from keras_pixelembed.losses.spatial_embedding import SpatialEmbeddingLoss

__all__ = [
    "DiscriminativeLoss",
    "LovaszHingeLoss",
    "MetricLearningLoss",
    "OffsetUncertaintyLoss",
    "PushPullBallsLoss",
    "PushPullCentroidLoss",
    "SpatialEmbeddingLoss",
    "lovasz_hinge",
]
