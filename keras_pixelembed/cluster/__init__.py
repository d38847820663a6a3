"""From embeddings to segments: numpy clustering functions returning int32 label maps."""

from keras_pixelembed.cluster.spatial import spatial_embedding_instances

__all__ = ["spatial_embedding_instances"]
