"""Real pretrained models and text that install offline from package registries, and their ONNX exports."""

from .export import export_smollm2

__all__ = ["export_smollm2"]
