"""Backend-agnostic building blocks shared by every loss (only `keras.ops`)."""

from keras_pixelembed.ops.activations import get_activation
from keras_pixelembed.ops.instance_stats import Instances, pixel_centroid_sq_distances
from keras_pixelembed.ops.masks import MaskSet, is_label_map, parse_mask_set, validate_max_instances
from keras_pixelembed.ops.numerics import l2_normalize, safe_divide, safe_norm, safe_sqrt

__all__ = [
    "Instances",
    "MaskSet",
    "get_activation",
    "is_label_map",
    "l2_normalize",
    "parse_mask_set",
    "pixel_centroid_sq_distances",
    "safe_divide",
    "safe_norm",
    "safe_sqrt",
    "validate_max_instances",
]
