"""Segmentation metrics (numpy): instance matching, symmetric best Dice, superpixel quality."""

from keras_pixelembed.metrics.segmentation import dic, sbd

__all__ = ["dic", "sbd"]
