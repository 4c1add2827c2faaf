"""Model export: ONNX graphs of the TEE and of the fusion encoder + VQA head (see :mod:`.onnx` for what is in
the graphs and what stays in Python). Command line: ``minivlm-hf export onnx --model DIR --output OUT_DIR``."""

from .onnx import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    ExportResult,
    OnnxTEE,
    OnnxVQA,
    export_onnx,
    export_tee,
    export_vqa,
    load_for_export,
)

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "ExportResult",
    "OnnxTEE",
    "OnnxVQA",
    "export_onnx",
    "export_tee",
    "export_vqa",
    "load_for_export",
]
