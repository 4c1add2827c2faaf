"""Model export: ONNX graphs of the TEE, of the fusion encoder + VQA head and of the captioning decoder (see
:mod:`.onnx` for what is in the graphs and what stays in Python, :mod:`.onnx_captioner` for greedy captioning with
ONNX Runtime). Command line: ``minivlm-hf export onnx --model DIR --output OUT_DIR``."""

from .._lazy import lazy_attributes

# public name -> submodule that defines it; imported on first use (PEP 562)
_LAZY = {
    **dict.fromkeys((
        "DEFAULT_OPSET", "SUPPORTED_OPSETS", "ExportResult", "OnnxTEE", "OnnxVQA", "export_onnx", "export_tee",
        "export_vqa", "load_for_export",
    ), "onnx"),
    "OnnxCaptioner": "onnx_captioner",
    "export_captioner": "onnx_captioning",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
