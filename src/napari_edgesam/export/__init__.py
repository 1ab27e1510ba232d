"""Model export (needs torch): ONNX files for the onnxruntime backend."""

from __future__ import annotations

from .onnx_export import DecoderForExport, export_decoder, export_encoder, export_onnx

__all__ = ["DecoderForExport", "export_decoder", "export_encoder", "export_onnx"]
