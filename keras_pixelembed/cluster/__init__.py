"""From embeddings to segments: numpy clustering functions returning int32 label maps."""

from keras_pixelembed.cluster.embedding import embedding_slic, greedy_ball, mean_shift
from keras_pixelembed.cluster.postprocess import connected_components, merge_small
from keras_pixelembed.cluster.spatial import instances_from_bands, spatial_embedding_instances

__all__ = [
    "connected_components",
    "embedding_slic",
    "greedy_ball",
    "instances_from_bands",
    "mean_shift",
    "merge_small",
    "spatial_embedding_instances",
]
