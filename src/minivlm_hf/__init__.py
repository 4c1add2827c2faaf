"""minivlm-hf: MiniVLM (a smaller and faster vision-language model) as Hugging Face transformers models.

Importing the package registers every model, config, image processor and processor with the transformers Auto
classes (locally and for remote code) and the `minivlm-vqa` pipeline: at once if transformers is already imported,
otherwise as soon as it is (see `minivlm_hf.registration`). The package itself imports neither torch nor
transformers, so `minivlm-hf --help` stays fast; the classes below and the submodules (`data`, `training`,
`benchmark`, `hub`, `export`, `fast`, ...) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .registration import register_after_transformers_import, register_auto_classes

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_LAZY_ATTRIBUTES = {
    "MiniVLMConfig": ".modeling.configuration_minivlm",
    "TEEConfig": ".modeling.configuration_minivlm_tee",
    "MiniVLMImageProcessor": ".modeling.image_processing_minivlm",
    "MiniVLMImageProcessorPil": ".modeling.image_processing_pil_minivlm",
    "MiniVLMModel": ".modeling.modeling_minivlm",
    "MiniVLMForImageCaptioning": ".modeling.modeling_minivlm_captioning",
    "MiniVLMForImageTextRetrieval": ".modeling.modeling_minivlm_tasks",
    "MiniVLMForPreTraining": ".modeling.modeling_minivlm_tasks",
    "MiniVLMForQuestionAnswering": ".modeling.modeling_minivlm_tasks",
    "MiniVLMForVisualReasoning": ".modeling.modeling_minivlm_tasks",
    "TEEForObjectDetection": ".modeling.modeling_minivlm_tee",
    "TEEModel": ".modeling.modeling_minivlm_tee",
    "MiniVLMProcessor": ".modeling.processing_minivlm",
}
_LAZY_SUBMODULES = (
    "assets", "benchmark", "cli", "commands", "convert", "data", "export", "fast", "hub", "inference", "io", "metrics",
    "modeling", "serve", "training",
)

__all__ = [*_LAZY_ATTRIBUTES, "register_auto_classes"]

if TYPE_CHECKING:
    from .modeling.configuration_minivlm import MiniVLMConfig
    from .modeling.configuration_minivlm_tee import TEEConfig
    from .modeling.image_processing_minivlm import MiniVLMImageProcessor
    from .modeling.image_processing_pil_minivlm import MiniVLMImageProcessorPil
    from .modeling.modeling_minivlm import MiniVLMModel
    from .modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
    from .modeling.modeling_minivlm_tasks import (
        MiniVLMForImageTextRetrieval,
        MiniVLMForPreTraining,
        MiniVLMForQuestionAnswering,
        MiniVLMForVisualReasoning,
    )
    from .modeling.modeling_minivlm_tee import TEEForObjectDetection, TEEModel
    from .modeling.processing_minivlm import MiniVLMProcessor


def __getattr__(name: str):
    """PEP 562: import a public class or a submodule when it is first used."""
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES) | set(_LAZY_SUBMODULES))


register_after_transformers_import()
