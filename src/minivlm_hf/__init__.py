"""minivlm-hf: MiniVLM (a smaller and faster vision-language model) as Hugging Face transformers models.

Importing the package registers every model, config, image processor and processor with the transformers Auto
classes (locally and for remote code) and the `minivlm-vqa` pipeline.
"""

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
from .registration import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = [
    "MiniVLMConfig",
    "TEEConfig",
    "MiniVLMImageProcessor",
    "MiniVLMImageProcessorPil",
    "MiniVLMModel",
    "MiniVLMForImageCaptioning",
    "MiniVLMForImageTextRetrieval",
    "MiniVLMForPreTraining",
    "MiniVLMForQuestionAnswering",
    "MiniVLMForVisualReasoning",
    "TEEForObjectDetection",
    "TEEModel",
    "MiniVLMProcessor",
    "register_auto_classes",
]
