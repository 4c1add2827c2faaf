# Copyright (c) minivlm-hf contributors. MIT license.
"""Evaluation metrics of MiniVLM, as local `evaluate` modules and as plain functions.

Every metric lives in one self-contained file next to this one; each file defines a plain function and an
``evaluate.Metric`` subclass whose ``_compute`` calls it. The files import nothing from ``minivlm_hf``, so
``evaluate.load("/abs/path/to/<file>.py")`` works offline: evaluate copies the script into its modules
cache (``$HF_MODULES_CACHE``, by default ``$HF_HOME/modules``) and imports it from there; no Hub access.

======================  ====================  ==========================================================
``load_metric`` name    file                  plain function
======================  ====================  ==========================================================
``detection_map``       detection_map.py      ``compute_detection_map(predictions, references, ...)``
``caption``             caption_metrics.py    ``compute_caption_metrics(predictions, references, ...)``
``vqa_accuracy``        vqa_accuracy.py       ``compute_vqa_accuracy(predictions, references, ...)``
``retrieval_recall``    retrieval_recall.py   ``compute_retrieval_recall(scores, text_to_image, ...)``
``nlvr_accuracy``       nlvr_accuracy.py      ``compute_nlvr_accuracy(predictions, references, ...)``
======================  ====================  ==========================================================

The plain functions are imported lazily (importing one imports `evaluate`, which is slow to import).
"""

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import evaluate

METRICS_DIR = Path(__file__).resolve().parent

METRIC_FILES = {
    "detection_map": "detection_map",
    "caption": "caption_metrics",
    "vqa_accuracy": "vqa_accuracy",
    "retrieval_recall": "retrieval_recall",
    "nlvr_accuracy": "nlvr_accuracy",
}
_ALIASES = {"caption_metrics": "caption", "captions": "caption", "nlvr": "nlvr_accuracy", "vqa": "vqa_accuracy"}

_LAZY = {
    "compute_detection_map": "detection_map",
    "compute_caption_metrics": "caption_metrics",
    "tokenize_caption": "caption_metrics",
    "compute_vqa_accuracy": "vqa_accuracy",
    "vqa_question_accuracy": "vqa_accuracy",
    "normalize_vqa_answer": "vqa_accuracy",
    "compute_retrieval_recall": "retrieval_recall",
    "compute_nlvr_accuracy": "nlvr_accuracy",
}

__all__ = ["METRICS_DIR", "METRIC_FILES", "metric_path", "load_metric", *_LAZY]


def metric_path(name: str) -> Path:
    """Absolute path of the `evaluate` script of metric ``name`` (see the table in the module docstring)."""
    key = _ALIASES.get(name, name)
    if key not in METRIC_FILES:
        raise KeyError(f"unknown metric {name!r}; choose from {sorted(METRIC_FILES)}")
    return METRICS_DIR / f"{METRIC_FILES[key]}.py"


def load_metric(name: str, **load_kwargs) -> "evaluate.EvaluationModule":
    """``evaluate.load`` of the metric script next to this file (offline; ``load_kwargs`` go to evaluate.load)."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **load_kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
