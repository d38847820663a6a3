"""Export for serving: TensorFlow SavedModel (TF Serving) and ONNX (ONNX Runtime)."""

from keras_pixelembed.export.exporters import export_onnx, export_saved_model

__all__ = ["export_onnx", "export_saved_model"]
