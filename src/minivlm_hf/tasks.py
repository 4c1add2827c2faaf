"""The MiniVLM tasks: one name each, and the model class, Auto class and Hub metadata of each.

The one table the package reads wherever a task is named: `minivlm-hf train TASK`, `minivlm-hf init --task TASK`,
`minivlm_hf.inference.load(TASK, ...)`, the demo's output folders, the web demo, the Hub variants and model cards,
and the Auto-class registration. Standard library only (the command line imports it before torch).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """name: the task's one name; architecture: the model class (`minivlm_hf.modeling`); auto_class: the transformers
    Auto class that loads it (AutoModel where transformers has none for the task); title: for people; pipeline_tag:
    the Hub's, where one fits; usage: how a user runs a trained model of this task; tags: model-card tags."""

    name: str
    architecture: str
    auto_class: str
    title: str
    pipeline_tag: str | None = None
    usage: str = ""
    tags: tuple[str, ...] = ()


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("detector", "TEEForObjectDetection", "AutoModelForObjectDetection", "region detection / feature extraction",
             "object-detection", "`minivlm-hf detect`", ("object-detection", "region-features")),
        Task("pretrain", "MiniVLMForPreTraining", "AutoModelForPreTraining", "vision-language pre-training (masked tokens + contrastive)",
             None, "fine-tuning (`fusion.init_from`)", ("pretraining",)),
        Task("caption", "MiniVLMForImageCaptioning", "AutoModelForImageTextToText", "image captioning",
             "image-text-to-text", "`minivlm-hf caption`", ("image-captioning",)),
        Task("vqa", "MiniVLMForQuestionAnswering", "AutoModelForVisualQuestionAnswering", "visual question answering",
             "visual-question-answering", "`minivlm-hf answer`", ("visual-question-answering",)),
        Task("retrieval", "MiniVLMForImageTextRetrieval", "AutoModel", "image-text retrieval", None,
             "`inference.rank_captions`", ("image-text-retrieval",)),
        Task("nlvr", "MiniVLMForVisualReasoning", "AutoModel", "NLVR2-style visual reasoning", None,
             "`inference.judge`", ("visual-reasoning",)),
    )
}
TASK_NAMES = tuple(TASKS)
FUSION_TASK_NAMES = tuple(name for name in TASKS if name != "detector")

#: Base models (no task head) and the Auto class that loads them.
BASE_MODELS = {"TEEModel": "AutoModel", "MiniVLMModel": "AutoModel"}


def task_of_architecture(architecture: str | None) -> str | None:
    """The task whose model class is `architecture` (None for a base model or a foreign class)."""
    for task in TASKS.values():
        if task.architecture == architecture:
            return task.name
    return None


def auto_class_of_architecture(architecture: str) -> str:
    """The Auto class that loads a MiniVLM model class."""
    task = task_of_architecture(architecture)
    return TASKS[task].auto_class if task else BASE_MODELS[architecture]


__all__ = ["Task", "TASKS", "TASK_NAMES", "FUSION_TASK_NAMES", "BASE_MODELS", "task_of_architecture",
           "auto_class_of_architecture"]
