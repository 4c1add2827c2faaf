"""`minivlm-hf init`: a ready-to-train checkpoint folder built from a published variant.

The folder holds the model (`save_pretrained`, safetensors) with random vision weights and text weights from a
BERT/MiniLM source, the tokenizer and processor (whose `prepare_config` fills `config.tag_token_ids`), the model-card
template `README.md` and `minivlm_init.json` (what was done, read back by the model card).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..io.atomic import atomic_directory
from ..io.checkpoints import foreign_entries
from .variants import TASK_MODELS, TASKS, get_variant, variant_dir

INIT_RECORD = "minivlm_init.json"
NO_TEXT_INIT = "none"
_TEXT_PARTS = ("embeddings.", "encoder.layer.", "pooler.", "minivlm.embeddings.", "minivlm.encoder.", "minivlm.pooler.")


@dataclass
class InitResult:
    output: Path
    variant: str
    task: str
    architecture: str
    text_init: str
    text_loaded: list[str] = field(default_factory=list)
    text_missing: list[str] = field(default_factory=list)
    text_unused: list[str] = field(default_factory=list)
    num_parameters: int = 0
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "output": str(self.output),
            "variant": self.variant,
            "task": self.task,
            "architecture": self.architecture,
            "text_init": self.text_init,
            "text_loaded": len(self.text_loaded),
            # text-encoder tensors the source did not provide (e.g. layers beyond its depth)
            "text_missing_keys": [k for k in self.text_missing if k.startswith(_TEXT_PARTS)],
            # everything else keeps its random initialisation: the TEE, the region embedding, the task head
            "not_from_text_source": len([k for k in self.text_missing if not k.startswith(_TEXT_PARTS)]),
            "text_unused_keys": self.text_unused,
            "num_parameters": self.num_parameters,
            "files": self.files,
        }


def load_answers(path: str | Path | None) -> dict[int, str]:
    """VQA answer vocabulary as `id2label`: a JSON list of answers, or the synthetic-scenes default."""
    if path is None:
        from ..data.vocab import build_answer_vocab

        answer2id = build_answer_vocab()
        return {i: a for a, i in answer2id.items()}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"answers file not found: {path}")
    try:
        answers = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{path}: expected a non-empty JSON list of answer strings")
    if len(set(answers)) != len(answers):
        duplicates = sorted({a for a in answers if answers.count(a) > 1})
        raise ValueError(f"{path}: duplicate answers {duplicates[:5]}")
    return dict(enumerate(answers))


def _model_class(name: str):
    from ..modeling import modeling_minivlm_captioning, modeling_minivlm_tasks, modeling_minivlm_tee

    for module in (modeling_minivlm_captioning, modeling_minivlm_tasks, modeling_minivlm_tee):
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"unknown model class {name}")


def init_checkpoint(
    variant_name: str,
    output: str | Path,
    task: str | None = None,
    text_init: str | None = None,
    answers: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> InitResult:
    """Build and save a ready-to-train checkpoint of `variant_name` for `task` in `output`."""
    import torch

    from ..registration import register_auto_classes

    register_auto_classes()  # so that save_pretrained ships the model code and the complete auto_map
    variant = get_variant(variant_name)
    task = task or variant.default_task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task not in variant.tasks:
        raise ValueError(f"variant {variant.name} is a detector: it only supports --task detector")
    if answers is not None and task != "vqa":
        raise ValueError("--answers is only used with --task vqa")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise ValueError(f"{output} exists and is not empty (pass --overwrite to replace the model in it)")
        foreign = foreign_entries(output)
        if foreign:  # --overwrite replaces a model folder, never a folder of other files
            raise ValueError(
                f"refusing to overwrite {output}: it holds files that are not part of a saved model "
                f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); choose an empty or new folder"
            )

    from . import variants as V

    torch.manual_seed(seed)
    architecture = TASK_MODELS[task][0]
    model_class = _model_class(architecture)
    image_processor = V.image_processor(variant)
    processor = None
    if task == "detector":
        if text_init not in (None, NO_TEXT_INIT):
            raise ValueError("--text-init does not apply to --task detector (the detector has no text weights)")
        text_init = NO_TEXT_INIT
        config = V.tee_config(variant)
        model = model_class(config)
    else:
        from ..convert import init_fusion_from_bert, load_offline_tokenizer
        from ..modeling.processing_minivlm import MiniVLMProcessor

        text_init = text_init or variant.text_init
        overrides = {}
        if task == "vqa":
            id2label = load_answers(answers)
            overrides["id2label"] = id2label
            overrides["label2id"] = {a: i for i, a in id2label.items()}
        config = V.fusion_config(variant, **overrides)
        tokenizer = load_offline_tokenizer("offline-minilm" if text_init == NO_TEXT_INIT else text_init)
        if len(tokenizer) != config.vocab_size:
            raise ValueError(
                f"the tokenizer of {text_init} has {len(tokenizer)} tokens but {variant.name} has vocab_size "
                f"{config.vocab_size}"
            )
        processor = MiniVLMProcessor(
            image_processor, tokenizer, max_text_length=config.max_text_length, max_tag_length=config.max_tag_length
        )
        processor.prepare_config(config)  # fills config.tag_token_ids from the detector's class names
        model = model_class(config)
        if task == "caption":
            model.generation_config = V.generation_config(variant, config)
    result = InitResult(output=output, variant=variant.name, task=task, architecture=architecture, text_init=text_init)
    if text_init != NO_TEXT_INIT:
        report = init_fusion_from_bert(model, text_init, layer_map=variant.text_layer_map)
        result.text_loaded, result.text_missing, result.text_unused = report.loaded, report.missing, report.unused
        if not report.loaded:
            raise ValueError(f"no text weights could be loaded from {text_init}")
    result.num_parameters = sum(p.numel() for p in model.parameters())

    # Staged next to the output and swapped in whole: a crash leaves the old folder or this one, and the new folder
    # holds this model's files only (nothing of a model it replaces).
    with atomic_directory(output) as staging:
        _write_checkpoint(staging, model, processor or image_processor, variant, task, seed, text_init, answers,
                          result)
    result.files = sorted(p.name for p in output.iterdir())
    return result


def _write_checkpoint(output: Path, model, processor, variant, task, seed, text_init, answers, result) -> None:
    from .model_card import card_template

    model.save_pretrained(output)  # safetensors
    processor.save_pretrained(output)
    template = variant_dir(variant.name) / "README.md"
    (output / "README.md").write_text(template.read_text() if template.is_file() else card_template(variant))
    record = {
        "variant": variant.name,
        "task": task,
        "architecture": result.architecture,
        "seed": seed,
        "text_init": text_init,
        "text_layer_map": variant.text_layer_map if text_init != NO_TEXT_INIT else None,
        "text_loaded": len(result.text_loaded),
        "text_missing": len([k for k in result.text_missing if k.startswith(_TEXT_PARTS)]),
        "answers": (str(answers) if answers is not None else "synthetic-scenes default") if task == "vqa" else None,
    }
    (output / INIT_RECORD).write_text(json.dumps(record, indent=2) + "\n")


__all__ = ["InitResult", "init_checkpoint", "load_answers"]
