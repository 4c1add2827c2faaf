"""Registration of the MiniVLM classes with the transformers Auto classes and pipelines.

Two kinds, both done on `import minivlm_hf`:
- local: `AutoConfig.register(...)` etc., so `Auto*.from_pretrained(folder)` works with this package installed;
- remote code: `register_for_auto_class(...)`, so `save_pretrained` / `push_to_hub` copy the `modeling/` files and
  write `auto_map`, and the folder loads with `trust_remote_code=True` where this package is not installed.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForObjectDetection,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

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
from .modeling.pipeline_minivlm_vqa import MiniVLMVQAPipeline
from .modeling.processing_minivlm import MiniVLMProcessor

# Classes without a transformers Auto class of their own are loaded with AutoModel under remote code.
REMOTE_AUTO_CLASSES = {
    TEEModel: "AutoModel",
    TEEForObjectDetection: "AutoModelForObjectDetection",
    MiniVLMModel: "AutoModel",
    MiniVLMForPreTraining: "AutoModelForPreTraining",
    MiniVLMForImageCaptioning: "AutoModelForImageTextToText",
    MiniVLMForQuestionAnswering: "AutoModelForVisualQuestionAnswering",
    MiniVLMForImageTextRetrieval: "AutoModel",
    MiniVLMForVisualReasoning: "AutoModel",
}

_DONE = False


def register_auto_classes() -> None:
    """Register every MiniVLM class locally and for remote code (idempotent)."""
    global _DONE
    if _DONE:
        return
    AutoConfig.register(TEEConfig.model_type, TEEConfig, exist_ok=True)
    AutoConfig.register(MiniVLMConfig.model_type, MiniVLMConfig, exist_ok=True)
    AutoModel.register(TEEConfig, TEEModel, exist_ok=True)
    AutoModelForObjectDetection.register(TEEConfig, TEEForObjectDetection, exist_ok=True)
    AutoModel.register(MiniVLMConfig, MiniVLMModel, exist_ok=True)
    AutoModelForPreTraining.register(MiniVLMConfig, MiniVLMForPreTraining, exist_ok=True)
    AutoModelForImageTextToText.register(MiniVLMConfig, MiniVLMForImageCaptioning, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(MiniVLMConfig, MiniVLMForQuestionAnswering, exist_ok=True)
    backends = {"torchvision": MiniVLMImageProcessor, "pil": MiniVLMImageProcessorPil}
    for config_class in (TEEConfig, MiniVLMConfig):
        AutoImageProcessor.register(config_class, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(MiniVLMConfig, MiniVLMProcessor, exist_ok=True)
    PIPELINE_REGISTRY.register_pipeline(
        "minivlm-vqa",
        pipeline_class=MiniVLMVQAPipeline,
        pt_model=AutoModelForVisualQuestionAnswering,
        type="multimodal",
    )

    TEEConfig.register_for_auto_class("AutoConfig")
    MiniVLMConfig.register_for_auto_class("AutoConfig")
    for model_class, auto_class in REMOTE_AUTO_CLASSES.items():
        model_class.register_for_auto_class(auto_class)
    MiniVLMImageProcessor.register_for_auto_class("AutoImageProcessor")
    MiniVLMProcessor.register_for_auto_class("AutoProcessor")
    _DONE = True
