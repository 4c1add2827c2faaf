"""Registration of the MiniVLM classes with the transformers Auto classes and pipelines.

Two kinds, both done for `import minivlm_hf`:
- local: `AutoConfig.register(...)` etc., so `Auto*.from_pretrained(folder)` works with this package installed;
- remote code: `register_for_auto_class(...)`, so `save_pretrained` / `push_to_hub` copy the `modeling/` files and
  write `auto_map`, and the folder loads with `trust_remote_code=True` where this package is not installed.

Registering needs transformers and the model classes (torch, torchvision, timm: seconds to import), which a command
line that only parses its arguments must not pay for. So `import minivlm_hf` registers at once only when
transformers is already imported; otherwise `register_after_transformers_import` registers right after transformers
is first imported, before the importing statement returns: the Auto classes never appear without the MiniVLM ones.
Nothing here is imported at module level beyond the standard library.
"""

from __future__ import annotations

import sys
from importlib.abc import Loader, MetaPathFinder

_DONE = False
_IN_PROGRESS = False


def remote_auto_classes() -> dict[type, str]:
    """Each model class → the Auto class that loads it under remote code (classes without a transformers Auto class
    of their own are loaded with AutoModel)."""
    from .modeling.modeling_minivlm import MiniVLMModel
    from .modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
    from .modeling.modeling_minivlm_tasks import (
        MiniVLMForImageTextRetrieval,
        MiniVLMForPreTraining,
        MiniVLMForQuestionAnswering,
        MiniVLMForVisualReasoning,
    )
    from .modeling.modeling_minivlm_tee import TEEForObjectDetection, TEEModel
    from .tasks import auto_class_of_architecture

    classes = (TEEModel, TEEForObjectDetection, MiniVLMModel, MiniVLMForPreTraining, MiniVLMForImageCaptioning,
               MiniVLMForQuestionAnswering, MiniVLMForImageTextRetrieval, MiniVLMForVisualReasoning)
    return {cls: auto_class_of_architecture(cls.__name__) for cls in classes}


def __getattr__(name: str):
    if name == "REMOTE_AUTO_CLASSES":  # the former module-level dict
        return remote_auto_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_auto_classes() -> None:
    """Register every MiniVLM class locally and for remote code (idempotent)."""
    global _DONE, _IN_PROGRESS
    if _DONE or _IN_PROGRESS:  # in progress: its own first `import transformers` fires the import hook
        return
    _IN_PROGRESS = True
    try:
        _register()
        _DONE = True
    finally:
        _IN_PROGRESS = False


def _register() -> None:
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
    from .modeling.modeling_minivlm_tasks import MiniVLMForPreTraining, MiniVLMForQuestionAnswering
    from .modeling.modeling_minivlm_tee import TEEForObjectDetection, TEEModel
    from .modeling.pipeline_minivlm_vqa import MiniVLMVQAPipeline
    from .modeling.processing_minivlm import MiniVLMProcessor

    AutoConfig.register(TEEConfig.model_type, TEEConfig, exist_ok=True)
    AutoConfig.register(MiniVLMConfig.model_type, MiniVLMConfig, exist_ok=True)
    AutoModel.register(TEEConfig, TEEModel, exist_ok=True)
    AutoModelForObjectDetection.register(TEEConfig, TEEForObjectDetection, exist_ok=True)
    # The object-detection pipeline checks the model against this name table, not against registered classes, and
    # logs an error for anything else; the lazy Auto mapping skips names whose config is not built in.
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.setdefault(TEEConfig.model_type, TEEForObjectDetection.__name__)
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
    for model_class, auto_class in remote_auto_classes().items():
        model_class.register_for_auto_class(auto_class)
    MiniVLMImageProcessor.register_for_auto_class("AutoImageProcessor")
    MiniVLMProcessor.register_for_auto_class("AutoProcessor")


class _RegisteringLoader(Loader):
    """Runs transformers' own loader, then registers (the module is complete by then, though still marked as
    initialising: importing from it in the same thread is allowed)."""

    def __init__(self, loader: Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # only this call goes through the wrapper
        self.loader.exec_module(module)
        register_auto_classes()


class _TransformersImportHook(MetaPathFinder):
    """Finds `transformers` with the other finders and wraps its loader; removes itself on first use."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def register_after_transformers_import() -> None:
    """Register now if transformers is imported, else as soon as it is (see the module docstring)."""
    if _DONE:
        return
    if "transformers" in sys.modules:
        register_auto_classes()
    elif not any(isinstance(finder, _TransformersImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportHook())
