"""Make every saved MiniVLM checkpoint complete remote code (`save_pretrained` / `push_to_hub`).

transformers writes, for a class registered with `register_for_auto_class`, a single `auto_map` entry (that class's
own Auto class) and copies only the files reached by flat relative imports. A MiniVLM checkpoint should load through
every Auto class it supports with `trust_remote_code=True`, with the package not installed:

- `config.json` gets the complete `auto_map` (AutoConfig, AutoModel, the task's Auto class, AutoProcessor for the
  fusion models, and AutoImageProcessor in the backend dict form `{"torchvision": ..., "pil": ...}`), and VQA models
  get `custom_pipelines` for the `minivlm-vqa` pipeline;
- image-processor configs (`preprocessor_config.json`, and the nested one in `processor_config.json`) get the
  AutoImageProcessor dict form, otherwise `backend="pil"` silently returns the torchvision class;
- the files these entries name are copied next to the weights: the model files list them in a `TYPE_CHECKING`
  block, which transformers' relative-import scan follows when it saves (and downloads) the model code.

Remote-code file: standard library only; it imports no other file of the model code.
"""

from __future__ import annotations

import copy

IMAGE_PROCESSOR_CLASSES = {
    "torchvision": "image_processing_minivlm.MiniVLMImageProcessor",
    "pil": "image_processing_pil_minivlm.MiniVLMImageProcessorPil",
}
PROCESSOR_CLASS = "processing_minivlm.MiniVLMProcessor"
# The checkpoint declares its VQA pipeline under the task name transformers 5 removed, not under "minivlm-vqa": a
# checkpoint's own custom task always demands trust_remote_code, even when the package registers that task locally.
# So with the package installed `pipeline("minivlm-vqa", model=REPO)` (the local registration) needs no remote code,
# and without it `pipeline(model=REPO, trust_remote_code=True)` (or the task "visual-question-answering") loads the
# shipped pipeline file.
VQA_PIPELINE_TASK = "minivlm-vqa"
VQA_REMOTE_TASK = "visual-question-answering"
VQA_CUSTOM_PIPELINES = {
    VQA_REMOTE_TASK: {
        "impl": "pipeline_minivlm_vqa.MiniVLMVQAPipeline",
        "pt": ["AutoModelForVisualQuestionAnswering"],
        "type": "multimodal",
    }
}


def _class_ref(cls) -> str:
    return f"{cls.__module__.split('.')[-1]}.{cls.__name__}"


def complete_auto_map(model) -> dict:
    """Fill `model.config.auto_map` (and `custom_pipelines` for VQA) with every Auto class the model supports.

    Called before `save_pretrained` writes `config.json`; returns the auto_map. The model's own Auto class entry is
    still written by transformers (`custom_object_save`), the others come from here.
    """
    config = model.config
    # Rebuilt from scratch: a config object shared with another head must not keep that head's entries.
    auto_map = {"AutoConfig": _class_ref(type(config))}
    own = getattr(type(model), "_auto_class", None)
    if own:
        auto_map[own] = _class_ref(type(model))
    if "AutoModel" not in auto_map:
        auto_map["AutoModel"] = _class_ref(type(model.base_model))
    if getattr(config, "model_type", None) == "minivlm":
        auto_map["AutoProcessor"] = PROCESSOR_CLASS
        if getattr(config, "vision_config", None) is not None:
            auto_map["AutoImageProcessor"] = dict(IMAGE_PROCESSOR_CLASSES)
        pipelines = dict(getattr(config, "custom_pipelines", None) or {})
        pipelines.pop(VQA_PIPELINE_TASK, None)
        pipelines.pop(VQA_REMOTE_TASK, None)
        if own == "AutoModelForVisualQuestionAnswering":
            pipelines.update(copy.deepcopy(VQA_CUSTOM_PIPELINES))
        if pipelines or getattr(config, "custom_pipelines", None) is not None:
            config.custom_pipelines = pipelines
    else:  # the TEE detector: image processor only
        auto_map["AutoImageProcessor"] = dict(IMAGE_PROCESSOR_CLASSES)
    config.auto_map = auto_map
    return auto_map


def with_backend_auto_map(image_processor_dict: dict) -> dict:
    """An image-processor `to_dict()` result with `auto_map["AutoImageProcessor"]` in the backend dict form."""
    auto_map = image_processor_dict.get("auto_map")
    if isinstance(auto_map, dict) and isinstance(auto_map.get("AutoImageProcessor"), str):
        # Only our own classes (not a reference into another repo, "org/repo--module.Class").
        if auto_map["AutoImageProcessor"] in IMAGE_PROCESSOR_CLASSES.values():
            image_processor_dict["auto_map"] = {**auto_map, "AutoImageProcessor": dict(IMAGE_PROCESSOR_CLASSES)}
    return image_processor_dict


class MiniVLMRemoteCodeMixin:
    """Model mixin: `save_pretrained` (hence `push_to_hub`) writes the complete `auto_map` of `complete_auto_map`,
    and refuses a copy made by `minivlm_hf.fast.optimize_for_inference` (marked `minivlm_optimizations`): its batch
    norms are folded, its QKV fused, its weights re-laid or quantised, so it would not reload as this model."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        if getattr(self, "minivlm_optimizations", None) is not None:
            raise ValueError(
                f"this {type(self).__name__} was prepared by minivlm_hf.fast.optimize_for_inference: an inference-only "
                "copy (folded batch norms, fused QKV, re-laid or quantised weights) that would not reload; save the "
                "model it was made from instead"
            )
        if getattr(type(self), "_auto_class", None) is not None:  # registered for remote code (as transformers checks)
            complete_auto_map(self)
        return super().save_pretrained(save_directory, *args, **kwargs)


__all__ = ["MiniVLMRemoteCodeMixin", "complete_auto_map", "with_backend_auto_map"]
