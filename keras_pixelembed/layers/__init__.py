"""Layers: the coordinate grid and the spatial-embedding head."""

from keras_pixelembed.layers.spatial import CoordinateGrid, SpatialEmbeddingHead

__all__ = ["CoordinateGrid", "SpatialEmbeddingHead"]
