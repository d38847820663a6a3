"""keras-pixelembed: learn a vector per pixel so that simple grouping finds the segments."""

from keras_pixelembed.losses import (
    DiscriminativeLoss,
    MetricLearningLoss,
    OffsetUncertaintyLoss,
    PushPullBallsLoss,
    PushPullCentroidLoss,
)

__version__ = "0.1.0"

__all__ = [
    "DiscriminativeLoss",
    "MetricLearningLoss",
    "OffsetUncertaintyLoss",
    "PushPullBallsLoss",
    "PushPullCentroidLoss",
    "__version__",
]
