"""Loading a checkpoint for a task, with refusals that say what the folder holds.

``from_pretrained`` alone accepts a checkpoint of another kind and initialises the missing head at random (a caption
model then "answers" ``LABEL_0``), raises a 20-line ``SafetensorError`` on a truncated file and lists every known
class for an unknown ``model_type``. Here a local folder is checked first (config.json, model type, architecture,
whole safetensors weights, no pickled-only weights), the load reports its missing keys
(``output_loading_info=True``), and every failure becomes one ``ValueError`` line naming the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tasks import TASKS
from .checkpoints import weights_problem

MODEL_TYPES = ("minivlm", "minivlm_tee")
KINDS = {
    "TEEForObjectDetection": "a TEE detector",
    "TEEModel": "a TEE region extractor without detection outputs",
    "MiniVLMModel": "a bare MiniVLM encoder (no task head)",
    "MiniVLMForPreTraining": "a MiniVLM pre-training model",
    "MiniVLMForImageCaptioning": "a MiniVLM captioning model",
    "MiniVLMForQuestionAnswering": "a MiniVLM VQA model",
    "MiniVLMForImageTextRetrieval": "a MiniVLM image-text retrieval model",
    "MiniVLMForVisualReasoning": "a MiniVLM NLVR model",
}
# task -> (architecture, the command or function that uses it), from the one task table
TASK_ARCHITECTURES = {task.name: (task.architecture, task.usage) for task in TASKS.values()}
_TASK_OF_ARCHITECTURE = {arch: task for task, (arch, _) in TASK_ARCHITECTURES.items()}
_MAX_LISTED = 3


def describe(architecture: str | None, model_type: str | None = None) -> str:
    """``'a MiniVLM captioning model (MiniVLMForImageCaptioning)'`` and the like."""
    if architecture in KINDS:
        return f"{KINDS[architecture]} ({architecture})"
    if architecture:
        return f"a {architecture}"
    return f"a model of type {model_type!r}" if model_type else "a model without architectures"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_config_dict(model_id: str, revision: str | None = None) -> dict:
    """config.json of a local folder or Hub repo as a dict (errors name the folder)."""
    path = Path(model_id)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{model_id} is a file: give the model folder (the one holding config.json)")
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{model_id}: no config.json (not a saved model folder)")
        try:
            data = json.loads(config_path.read_text())
        except ValueError as err:
            raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    else:
        from transformers.utils import cached_file

        try:
            resolved = cached_file(model_id, "config.json", revision=revision)
            data = json.loads(Path(resolved).read_text())
        except Exception as err:
            raise ValueError(f"{model_id}: could not read config.json ({_first_line(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{model_id}: config.json does not hold a JSON object")
    return data


def check_model_folder(model_id: str, task: str | None = None, revision: str | None = None) -> dict:
    """Refuse a checkpoint that is not a MiniVLM model of ``task``'s architecture, or whose local weights are
    truncated, corrupt, missing or pickled only. Returns config.json as a dict."""
    config = read_config_dict(model_id, revision)
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures and isinstance(architectures[0], str) else None
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{model_id} holds {describe(architecture, model_type)} with model_type {model_type!r}, not a MiniVLM "
            f"checkpoint (model_type {' or '.join(repr(t) for t in MODEL_TYPES)})"
        )
    if task is not None:
        expected, user = TASK_ARCHITECTURES[task]
        if architecture is not None and architecture != expected:
            hint = ""
            other = _TASK_OF_ARCHITECTURE.get(architecture)
            if other is not None:
                hint = f"; use {TASK_ARCHITECTURES[other][1]} for it"
            raise ValueError(f"{model_id} holds {describe(architecture)}, not {describe(expected)}{hint}")
    if Path(model_id).is_dir():
        problem = weights_problem(Path(model_id))
        if problem:
            raise ValueError(f"{model_id}: cannot load the weights: {problem}")
    return config


def _kind_of_keys(keys: list[str]) -> str | None:
    """What stored tensor names say about the model they came from."""
    if any(k.startswith(("minivlm.", "cls.", "vqa_head.", "classifier.")) for k in keys):
        return "the weights of a MiniVLM fusion model"
    if any(k.startswith("tee.") for k in keys):
        return "the weights of a TEE detector"
    return None


def from_pretrained_checked(model_class, model_id: str, **kwargs):
    """``model_class.from_pretrained`` that refuses missing or mismatched weights (no random head is handed out)."""
    try:
        model, info = model_class.from_pretrained(model_id, output_loading_info=True, **kwargs)
    except Exception as err:  # SafetensorError, UnpicklingError, EnvironmentError, ...: one line naming the folder
        raise ValueError(f"{model_id}: could not load the model ({_first_line(err)})") from None
    name = type(model).__name__
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or [])
    if missing or mismatched:
        unexpected = sorted(info.get("unexpected_keys") or [])
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing (e.g. {', '.join(missing[:_MAX_LISTED])})")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape (e.g. {', '.join(mismatched[:_MAX_LISTED])})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) of another model (e.g. {', '.join(unexpected[:_MAX_LISTED])})")
        held = _kind_of_keys(unexpected)
        raise ValueError(
            f"{model_id}: the weights are not those of {describe(name)}: {'; '.join(parts)}. The folder holds "
            f"{held or 'another kind of model or an incomplete save'}; refusing to use randomly initialised weights"
        )
    return model.eval()


def load_for_task(task: str, model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """(model, processor) for ``task`` from a folder or Hub id, checked as described in the module docstring."""
    import transformers

    import minivlm_hf  # noqa: F401  (registers the Auto classes)

    if task not in TASK_ARCHITECTURES:
        raise ValueError(f"unknown task {task!r}; choose from {list(TASK_ARCHITECTURES)}")
    config = check_model_folder(model_id, task, revision)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    architecture = TASK_ARCHITECTURES[task][0]
    if trust_remote_code:
        auto_map = config.get("auto_map") or {}
        auto_name = next((k for k, v in auto_map.items() if str(v).endswith(f".{architecture}")), None)
        if auto_name is None:
            raise ValueError(f"{model_id}: config.json auto_map names no {architecture} (no remote code to trust)")
        model_class = getattr(transformers, auto_name)
    else:
        model_class = getattr(minivlm_hf, architecture)
    model = from_pretrained_checked(model_class, model_id, **kwargs)
    if type(model).__name__ != architecture:
        raise ValueError(f"{model_id} loaded as {describe(type(model).__name__)}, not {describe(architecture)}")
    try:
        if task == "detector":
            processor = transformers.AutoImageProcessor.from_pretrained(model_id, **kwargs)
        else:
            processor = transformers.AutoProcessor.from_pretrained(model_id, **kwargs)
    except Exception as err:
        raise ValueError(f"{model_id}: could not load the processor ({_first_line(err)})") from None
    wanted = "MiniVLMImageProcessor" if task == "detector" else "MiniVLMProcessor"
    if not type(processor).__name__.startswith(wanted):
        raise ValueError(
            f"{model_id}: no {wanted} saved with the model (got {type(processor).__name__}); save it with "
            "processor.save_pretrained(folder)"
        )
    return model, processor


__all__ = ["check_model_folder", "describe", "from_pretrained_checked", "load_for_task", "read_config_dict"]
