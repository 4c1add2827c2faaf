"""``minivlm-hf compare``: MiniVLM vs an OSCAR-B-shaped model trained on the same scenes with the same recipes
(parameters, FLOPs, image → answer time and every task metric, with MiniVLM's retention)."""

from .._lazy import lazy_attributes

__getattr__, __dir__ = lazy_attributes(__name__, {
    "CompareResult": "run",
    "read_demo_output": "run",
    "run_compare": "run",
    "RegionDetector": "detector",
    "table_rows": "table",
})
__all__ = ["CompareResult", "RegionDetector", "read_demo_output", "run_compare", "table_rows"]
