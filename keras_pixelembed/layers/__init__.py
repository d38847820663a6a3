"""Layers: the coordinate grid and the spatial-embedding head."""

from keras_pixelembed.layers.spatial import CoordinateGrid, SpatialEmbeddingHead, coordinate_grid

__all__ = ["CoordinateGrid", "SpatialEmbeddingHead", "coordinate_grid"]
