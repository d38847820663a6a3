"""Pixel-embedding losses: `keras.losses.Loss` subclasses written with `keras.ops` only."""

from keras_pixelembed.losses.discriminative import DiscriminativeLoss
from keras_pixelembed.losses.metric_learning import MetricLearningLoss
from keras_pixelembed.losses.offset_uncertainty import OffsetUncertaintyLoss
from keras_pixelembed.losses.push_pull_balls import PushPullBallsLoss
from keras_pixelembed.losses.push_pull_centroid import PushPullCentroidLoss

__all__ = ["DiscriminativeLoss", "MetricLearningLoss", "OffsetUncertaintyLoss", "PushPullBallsLoss", "PushPullCentroidLoss"]
