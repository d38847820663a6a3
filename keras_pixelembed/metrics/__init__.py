"""Segmentation metrics (numpy): instance matching, symmetric best Dice, superpixel quality."""

from keras_pixelembed.metrics.segmentation import (
    Matching,
    adjusted_rand_index,
    asa,
    average_precision,
    boundary_recall,
    dic,
    iou_table,
    matching,
    n_segments,
    sbd,
    undersegmentation_error,
    variation_of_information,
)

__all__ = [
    "Matching",
    "adjusted_rand_index",
    "asa",
    "average_precision",
    "boundary_recall",
    "dic",
    "iou_table",
    "matching",
    "n_segments",
    "sbd",
    "undersegmentation_error",
    "variation_of_information",
]
