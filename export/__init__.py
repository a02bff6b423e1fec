"""ONNX export, validation and torch-free inference (installed as ``aperture_zoo.export``)."""
