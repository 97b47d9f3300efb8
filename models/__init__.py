"""Real pretrained models and text that install offline from package registries, and their ONNX exports."""

from .export import ExportError, export, export_genai, export_optimum, export_smollm2

__all__ = ["ExportError", "export", "export_genai", "export_optimum", "export_smollm2"]
