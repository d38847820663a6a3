"""Models: a small U-Net and an ERFNet-style encoder, with an embedding or a spatial head."""

from keras_pixelembed.models.builders import ResidualEmbedding, build_pixel_embedder, erfnet_features, unet_features

__all__ = ["ResidualEmbedding", "build_pixel_embedder", "erfnet_features", "unet_features"]
