"""Training recipes on ``transformers.Trainer`` for every MiniVLM stage.

Stages: ``detector`` (TEE), ``pretrain`` (masked tokens + 3-way contrastive), ``caption``, ``vqa``, ``retrieval``,
``nlvr``. Fusion stages train on precomputed region features (OSCAR style): the trained TEE runs once over every
image (:func:`~minivlm_hf.training.features.extract_features`) unless the config reuses saved features.

The recipe config (keys, defaults and what each does): :mod:`minivlm_hf.training.recipe_config`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, set_seed

from ..io.atomic import atomic_directory, atomic_write_text
from ..io.checkpoints import checkpoint_problem, is_model_file, latest_complete_checkpoint, training_output_problem
from ..modeling.processing_minivlm import tag_token_ids
from ..progress import is_quiet, progress_enabled
from . import collators as C
from . import evaluation as E
from . import trainers as T
from .curves import CURVES_FILE, TrainingCurvesCallback, headline_metrics, plot_training_curves
from .data_setup import RecipeData
from .recipe_config import (  # noqa: F401 - re-exported: the recipes' public names
    COMMON_TRAINING,
    DEFAULT_CONFIG,
    FUSION_STAGES,
    STAGE_TRAINING_DEFAULTS,
    STAGES,
    _merge,
    bf16_available,
    load_recipe_config,
    training_arguments,
    training_attention,
)

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------------
def build_detector(config: dict):
    from ..data.vocab import ATTRIBUTE_ID2LABEL, OBJECT_ID2LABEL
    from ..modeling.configuration_minivlm_tee import TEEConfig
    from ..modeling.image_processing_minivlm import MiniVLMImageProcessor
    from ..modeling.modeling_minivlm_tee import TEEForObjectDetection

    fields = dict(config["detector"])
    image_size = int(fields.pop("image_size", config["data"]["image_size"]))
    tee_config = TEEConfig(id2label=dict(OBJECT_ID2LABEL), attribute_id2label=dict(ATTRIBUTE_ID2LABEL),
                           image_size=image_size, **fields)
    return TEEForObjectDetection(tee_config), MiniVLMImageProcessor(size={"longest_edge": image_size})


def fusion_class(stage: str):
    from ..modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
    from ..modeling.modeling_minivlm_tasks import (
        MiniVLMForImageTextRetrieval,
        MiniVLMForPreTraining,
        MiniVLMForQuestionAnswering,
        MiniVLMForVisualReasoning,
    )

    return {
        "pretrain": MiniVLMForPreTraining, "caption": MiniVLMForImageCaptioning, "vqa": MiniVLMForQuestionAnswering,
        "retrieval": MiniVLMForImageTextRetrieval, "nlvr": MiniVLMForVisualReasoning,
    }[stage]


def build_fusion_model(stage: str, config: dict, data: RecipeData):
    """A fresh fusion model (MiniLM text weights + the trained TEE inside) or one loaded from ``fusion.init_from``."""
    from ..data.vocab import ATTRIBUTE_ID2LABEL, OBJECT_ID2LABEL, build_answer_vocab
    from ..modeling.configuration_minivlm import MiniVLMConfig

    fields = dict(config["fusion"])
    init_from, init_text = fields.pop("init_from", None), fields.pop("init_text", None)
    fields.pop("train_attn_implementation", None)  # a training setting (run_stage), not config
    with_vision = fields.pop("with_vision", True)
    cls = fusion_class(stage)
    extra: dict = {}
    if stage == "vqa":
        answer2id = build_answer_vocab()
        extra = {"id2label": {i: a for a, i in answer2id.items()}, "label2id": dict(answer2id)}
    if init_from:
        path = Path(init_from)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"fusion.init_from: {path / 'config.json'} does not exist")
        if stage != "vqa":  # a VQA source's answer labels do not carry over to another task (2 labels, no warning)
            extra = {"id2label": {0: "LABEL_0", 1: "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}}
        # Another task's checkpoint: its own head is dropped or, under the same name, re-initialised.
        model = cls.from_pretrained(str(path), **extra, **fields, ignore_mismatched_sizes=True)
    else:
        detector = data.detector if (with_vision and config["data"]["features"] == "detector") else None
        vision_config = detector.config if detector is not None else None
        mcfg = MiniVLMConfig(
            vision_config=vision_config,
            region_feature_size=data.feature_size,
            max_regions=data.num_regions,
            tag_token_ids=tag_token_ids(data.tokenizer, vision_config.id2label if vision_config else OBJECT_ID2LABEL),
            tag_score_threshold=config["data"]["tag_threshold"],
            tag_attributes=bool(config["data"].get("tag_attributes", False)),
            tag_attribute_threshold=config["data"].get("tag_attribute_threshold", 0.5),
            tag_order=config["data"].get("tag_order", "score"),
            tag_attribute_token_ids=tag_token_ids(
                data.tokenizer, vision_config.attribute_id2label if vision_config else ATTRIBUTE_ID2LABEL),
            **{**fields, **extra},
        )
        model = cls(mcfg)
        if init_text:
            from ..convert import init_fusion_from_bert

            init_fusion_from_bert(model, init_text)
        if detector is not None:
            model.minivlm.vision_model.load_state_dict(detector.tee.state_dict())
    if model.minivlm.vision_model is not None:
        model.minivlm.vision_model.requires_grad_(False)  # frozen extractor (features are precomputed)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# collators per stage
# ---------------------------------------------------------------------------------------------------------------------
def fusion_collator_settings(model_config, **extra) -> dict:
    """The collator arguments a fusion model's config decides (the lengths)."""
    return dict(max_text_length=model_config.max_text_length, max_tag_length=model_config.max_tag_length,
                max_regions=model_config.max_regions, **extra)


def build_collators(stage: str, config: dict, data: RecipeData, model=None, split: str = "train"):
    """The collator of a stage for ``split`` (``train``: with the training randomness; other splits: evaluation
    collators, e.g. the captioning one returns ``image_index`` for :class:`CaptioningTrainer`)."""
    col, seed = config["collator"], config["seed"]
    streamed = split == "train" and bool(config["data"].get("stream"))  # rows carry their regions
    if stage == "detector":
        flip = col["hflip_probability"] if split == "train" else 0.0
        return C.DetectionCollator(data.image_processor, hflip_probability=flip, seed=seed)
    mcfg = model.config
    common = fusion_collator_settings(mcfg, tag_source=col["tag_source"], seed=seed)
    tok = data.tokenizer
    if streamed:
        store = None
    elif stage in FUSION_STAGES:
        store = data.nlvr_store(split) if stage == "nlvr" else data.store(split)
    if stage == "pretrain":
        return C.PreTrainingCollator(
            tok, regions=store, mask_probability=col["mask_probability"], pollution=col["pollution"],
            caption_pollution=col["caption_pollution"], mask_polluted=col.get("mask_polluted", True), **common)
    if stage == "caption":
        return C.CaptioningCollator(
            tok, regions=store, mask_probability=col["mask_probability"],
            max_masked_tokens=col["max_masked_tokens"], return_image_index=split != "train", **common)
    if stage == "vqa":
        return C.VQACollator(tok, regions=store, answer2id=mcfg.label2id, **common)
    if stage == "retrieval":
        return C.RetrievalCollator(tok, regions=store, caption_swap=col["caption_swap"],
                                   hard_negatives=col["hard_negatives"], **common)
    if stage == "nlvr":
        return C.NLVRCollator(tok, regions=store, **common)
    raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")


def stage_datasets(stage: str, data: RecipeData, split: str, model=None):
    """The rows a stage trains (``train``) or is validated on."""
    from .features import caption_examples, pretraining_examples, vqa_examples

    if split == "train" and data.config["data"].get("stream"):
        from .streamed_examples import stage_stream

        # Not split here: the Trainer's accelerator hands each rank its shards (see training_arguments).
        return stage_stream(stage, data.config, model)
    if stage == "detector":
        return data.scenes[split]
    if stage == "nlvr":
        return data.nlvr_statements(split)
    table = data.features(split)
    if stage == "pretrain":
        return pretraining_examples(table)
    if stage == "vqa":
        return vqa_examples(table)
    if stage == "caption" and split != "train":
        return caption_examples(table, per_caption=False)
    return caption_examples(table, per_caption=True)


# ---------------------------------------------------------------------------------------------------------------------
# evaluation on the held-out split
# ---------------------------------------------------------------------------------------------------------------------
def evaluate_stage(stage: str, model, config: dict, data: RecipeData, *, progress: bool = True) -> tuple[dict, dict]:
    """Evaluate ``model`` on ``config["evaluation"]["split"]``; with ``evaluation.bf16`` (true / "auto") under bf16
    autocast (the model's weights stay as they are)."""
    use_bf16 = config["evaluation"].get("bf16", False)
    device_type = next(model.parameters()).device.type
    if use_bf16 == "auto":
        use_bf16 = bf16_available(cpu=device_type == "cpu")
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bool(use_bf16)):
        return _evaluate_stage(stage, model, config, data, progress=progress)


def _evaluate_stage(stage: str, model, config: dict, data: RecipeData, *, progress: bool = True) -> tuple[dict, dict]:
    from .features import caption_examples, vqa_examples

    ev = config["evaluation"]
    split, limit, bs = ev["split"], ev["limit"], ev["batch_size"]
    if stage == "detector":
        return E.evaluate_detector(model, data.image_processor, data.scenes[split], limit=limit,
                                   threshold=ev["detection_threshold"], progress=progress)
    if stage == "pretrain":
        return {}, {}
    mcfg, tok = model.config, data.tokenizer
    common = fusion_collator_settings(mcfg, tag_source=config["collator"]["tag_source"])
    if stage == "nlvr":
        collator = C.NLVRCollator(tok, regions=data.nlvr_store(split), **common)
        return E.evaluate_nlvr(model, collator, data.nlvr_statements(split), limit=limit, batch_size=bs,
                               progress=progress)
    table = data.features(split)
    store = data.store(split)
    if stage == "caption":
        collator = C.CaptioningCollator(tok, regions=store, **common)
        return E.evaluate_captioning(model, collator, caption_examples(table, per_caption=False), limit=limit,
                                     batch_size=bs, **caption_generation_kwargs(config), progress=progress)
    if stage == "vqa":
        collator = C.VQACollator(tok, regions=store, answer2id=mcfg.label2id, **common)
        return E.evaluate_vqa(model, collator, vqa_examples(table), limit=limit, batch_size=bs, progress=progress)
    if stage == "retrieval":
        collator = C.RetrievalScoringCollator(tok, regions=store, **common)
        caption_model = None
        if ev.get("caption_model"):
            from ..modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning

            caption_model = MiniVLMForImageCaptioning.from_pretrained(ev["caption_model"])
            caption_model.to(next(model.parameters()).device)
        return E.evaluate_retrieval(model, collator, caption_examples(table, per_caption=False),
                                    num_candidates=ev["num_candidates"], num_groups=ev.get("retrieval_groups", 1),
                                    batch_size=max(bs, 100), progress=progress, caption_model=caption_model,
                                    caption_pmi_weight=float(ev.get("caption_pmi_weight", 0.5)),
                                    sinkhorn=bool(ev.get("retrieval_sinkhorn", False)))
    raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")


# ---------------------------------------------------------------------------------------------------------------------
# one stage end to end
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class StageResult:
    stage: str
    model: Any
    output_dir: Path
    metrics: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    trainer: Any = None


def run_stage(
    stage: str,
    config: dict,
    output_dir: str | Path,
    *,
    data: RecipeData | None = None,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: tuple = (),
    evaluate: bool = True,
    progress: bool = True,
) -> StageResult:
    """Train ``stage`` with ``config`` into ``output_dir`` (checkpoints, final model + processor, ``metrics.json``),
    then evaluate it on ``config["evaluation"]["split"]``. Returns the trained model and its metrics."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    output_dir = Path(output_dir)
    problem = training_output_problem(output_dir)
    if problem:
        raise ValueError(f"refusing to train into {output_dir}: {problem}; choose a new or empty folder")
    data = data or RecipeData(config)
    args = training_arguments(stage, config, output_dir)
    if not progress_enabled(progress):
        args.disable_tqdm = True  # the Trainer's bar only on a terminal (and not under --quiet)
    # Rank 0 first: it builds the scenes cache and extracts / saves the features, the other ranks then load them.
    with args.main_process_first(desc=f"{stage} data", local=False):
        set_seed(config["seed"])
        if stage == "detector":
            model, image_processor = build_detector(config)
            data.image_processor = image_processor
        else:
            model = build_fusion_model(stage, config, data)
        from ..fast.cpu import enable_cpu_fast_paths

        enable_cpu_fast_paths(model)  # CPU kernel choices (depthwise convs, NHWC input, few-row Linears)
        train_collator = build_collators(stage, config, data, model, "train")
        train_set = stage_datasets(stage, data, "train", model)
        eval_set = eval_collator = None
        if args.eval_strategy != "no":
            eval_set = stage_datasets(stage, data, "validation")
            eval_collator = build_collators(stage, config, data, model, "validation")
    timing = T.TimingCallback()
    # log_history.json at every log, training_curves.png at the end (loss, evaluation metrics, learning rate)
    all_callbacks = [timing, TrainingCurvesCallback(output_dir, title=f"{stage} training"), *callbacks]
    if hasattr(train_collator, "epoch"):
        all_callbacks.append(C.CollatorEpochCallback(train_collator))
    if config.get("debug", {}).get("param_hash"):
        all_callbacks.append(T.ParamHashCallback(output_dir))
    # The Trainer overwrites config.use_cache with its training value (TrainingArguments.use_cache, False), even on
    # configs without the field; the saved model keeps its own (restored below), for inference.
    inference_use_cache = getattr(model.config, "use_cache", None)
    kwargs = dict(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                  data_collator=train_collator, callbacks=all_callbacks)
    if stage == "detector":
        trainer = T.DetectionTrainer(image_processor=data.image_processor, compute_metrics=T.detection_metrics, **kwargs)
    else:
        if stage == "caption":
            trainer = T.CaptioningTrainer(
                generation_kwargs=caption_generation_kwargs(config),
                compute_metrics=T.caption_metrics_fn(data.tokenizer, eval_set) if eval_set is not None else None,
                **kwargs,
            )
        else:
            metric_fn = {"vqa": T.vqa_metrics, "nlvr": T.accuracy_metrics, "retrieval": T.accuracy_metrics}.get(stage)
            trainer = T.FusionTrainer(compute_metrics=metric_fn, **kwargs)
    if is_quiet():
        trainer.remove_callback(PrinterCallback)  # the per-log dicts it prints when the bar is off
    if eval_set is not None:
        trainer.get_eval_dataloader = _eval_loader(trainer, eval_collator)
    inference_attention = None
    train_attention = training_attention(config, args.use_cpu) if stage != "detector" else None
    if train_attention and train_attention != model.config._attn_implementation:
        inference_attention = model.config._attn_implementation
        model.set_attn_implementation({"": train_attention})  # {"": ...}: the fusion model only, not the TEE inside
    if resume_from_checkpoint == "auto":  # the newest whole checkpoint: a killed save leaves a partial one
        resume_from_checkpoint = latest_complete_checkpoint(output_dir, log=_log.warning)
        if resume_from_checkpoint:
            _log.warning("resuming from %s", resume_from_checkpoint)
    elif resume_from_checkpoint not in (None, False, True):
        problem = checkpoint_problem(resume_from_checkpoint, trainer_state=True)
        if problem:
            raise ValueError(f"cannot resume from {resume_from_checkpoint}: {problem}")
    train_output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    # keep_fp32_wrapper=False: after bf16 training accelerate leaves an autocast wrapper on forward, and the returned
    # model must compute like the saved (and reloaded) fp32 one.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if inference_attention:
        model.set_attn_implementation({"": inference_attention})
    result = StageResult(stage=stage, model=model, output_dir=output_dir,
                         trainer=trainer, train_seconds=timing.seconds)
    metrics = {f"train_{k}" if not k.startswith("train") else k: v for k, v in train_output.metrics.items()}
    metrics["global_step"] = trainer.state.global_step
    if inference_use_cache is None:
        vars(model.config).pop("use_cache", None)
    else:
        model.config.use_cache = inference_use_cache
    if stage == "caption":  # the saved model decodes as it was evaluated (generation_config.json)
        model.generation_config.update(use_cache=True, **caption_generation_kwargs(config, model))
    # Every rank has finished writing into output_dir (e.g. param_hash_rank{R}.json) before rank 0 swaps it.
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        # Staged and swapped in: a crash leaves the previous model or this one; the run's checkpoint-N folders and
        # records are carried over, stale model files (another tokenizer, single-file weights next to shards) are not.
        with atomic_directory(output_dir, carry=lambda name: not is_model_file(name)) as staging:
            trainer.save_model(str(staging))
            data.save_processor(staging, stage, result.model)
    if evaluate and trainer.is_world_process_zero():
        start = time.perf_counter()
        test_metrics, details = evaluate_stage(stage, result.model, config, data, progress=progress)
        result.eval_seconds = time.perf_counter() - start
        result.details = details
        metrics.update({f"test_{k}": v for k, v in test_metrics.items()})
        plot_training_curves(trainer.state.log_history, output_dir / CURVES_FILE, title=f"{stage} training",
                             final_metrics=headline_metrics(stage, metrics))
    metrics["train_seconds"] = round(result.train_seconds, 2)
    metrics["eval_seconds"] = round(result.eval_seconds, 2)
    result.metrics = metrics
    if trainer.is_world_process_zero():
        atomic_write_text(output_dir / "metrics.json", json.dumps({"stage": stage, **metrics}, indent=1, default=float))
    return result


def caption_generation_kwargs(config: dict, model=None) -> dict:
    """The captioning decode settings of ``config["evaluation"]``: ``max_new_tokens`` (with ``model``: at most what
    its ``max_text_length`` leaves after [CLS] and the [MASK] query), ``num_beams``, ``length_penalty``."""
    ev = config["evaluation"]
    max_new = ev["max_new_tokens"] if model is None else min(ev["max_new_tokens"], model.config.max_text_length - 2)
    return {"max_new_tokens": max_new, "num_beams": ev["num_beams"], "length_penalty": ev.get("length_penalty", 1.0)}


def _eval_loader(trainer, collator):
    original = trainer.get_eval_dataloader

    def get_eval_dataloader(eval_dataset=None):
        saved = trainer.data_collator
        trainer.data_collator = collator
        try:
            return original(eval_dataset)
        finally:
            trainer.data_collator = saved

    return get_eval_dataloader


__all__ = [
    "DEFAULT_CONFIG",
    "FUSION_STAGES",
    "STAGES",
    "STAGE_TRAINING_DEFAULTS",
    "StageResult",
    "build_collators",
    "build_detector",
    "build_fusion_model",
    "evaluate_stage",
    "load_recipe_config",
    "run_stage",
    "training_arguments",
]
