"""Training recipes on ``transformers.Trainer`` for every MiniVLM stage.

Stages: ``detector`` (TEE), ``pretrain`` (masked tokens + 3-way contrastive), ``caption``, ``vqa``, ``retrieval``,
``nlvr``. Fusion stages train on precomputed region features (OSCAR style): the trained TEE runs once over every
image (:func:`~minivlm_hf.training.features.extract_features`) unless the config reuses saved features.

Recipe config (JSON; every key optional, defaults in :data:`DEFAULT_CONFIG` and :data:`STAGE_TRAINING_DEFAULTS`)::

    {
      "seed": 0,                              # model init, Trainer, collators
      "data": {
        "cache_dir": null,                    # scenes cache (default $MINIVLM_HF_CACHE or ~/.cache/minivlm_hf)
        "scene_seed": 0, "num_train": 2000, "num_validation": 100, "num_test": 100,
        "nlvr_num_train": 1000, "nlvr_num_validation": 50, "nlvr_num_test": 100,   # image pairs
        "nlvr_statements_per_pair": 2,        # true/false statements per pair (alternating labels)
        "min_size": 160, "max_size": 320,     # image sides of the synthetic scenes
        "fusion_num_train": null,             # train scenes the fusion stages use (first N; null = all)
        "image_size": 256,                    # longest edge fed to the TEE
        "features": "detector",               # fusion-stage regions: "detector" (a trained TEE) or "oracle"
                                              # (ground-truth codes, for tests / upper bounds)
        "detector": null,                     # folder of a trained detector (train detector ... output)
        "features_dir": null,                 # reuse / store extracted features here
        "stream": null,                       # train on this parquet dataset folder / Hub dataset repo, streamed
                                              #   shard by shard: the detector on scenes (`data scenes --format
                                              #   parquet`), a fusion stage on their region features (`data features`)
        "stream_shuffle_buffer": 1000,        # fusion streams: rows shuffled through a buffer of this many (0: off)
        "oracle_feature_size": 32, "oracle_num_regions": 10,
        "tag_threshold": 0.3,                 # a region becomes a tag at this detection score
        "tag_attributes": false,              # tags "attribute … class" per region (VinVL style) instead of
        "tag_attribute_threshold": 0.5,       #   class names once; attributes named at this probability
        "tag_order": "score"                  # tag phrases most confident first, or "area": largest box first
      },
      "detector": {...},                      # TEEConfig fields (backbone, num_regions, anchor_sizes, ...)
      "fusion": {                             # MiniVLMConfig fields (num_hidden_layers, max_text_length, ...) plus
        "init_text": "offline-minilm",        #   text weights for a fresh model (null = random init)
        "init_from": null,                    #   a trained fusion folder to start from (e.g. the pretrain output)
        "with_vision": true,                  #   embed the TEE (vision_config + weights) so the model runs on pixels
        "train_attn_implementation": "auto",  #   attention kernel while training ("auto": eager on CPU, see
                                              #   training_attention); the saved model keeps its own (sdpa)
      },
      "collator": {"mask_probability": 0.15, "max_masked_tokens": 3, "pollution": 0.5, "caption_pollution": 0.25,
                   "caption_swap": 0.5, "tag_source": "detected", "hflip_probability": 0.5,
                   "mask_polluted": true,             # masked-token labels on polluted pre-training pairs too
                   "hard_negatives": 0.0},            # retrieval: share of negatives from the most similar caption
      "training": {...},                      # any transformers.TrainingArguments field (max_steps, learning_rate,
                                              # per_device_train_batch_size, warmup_steps, save_steps, ...);
                                              # "bf16": "auto" = bf16 autocast where the hardware has it
      "evaluation": {"split": "test", "limit": null, "num_candidates": 100, "max_new_tokens": 20, "num_beams": 1,
                     "retrieval_groups": 1,           # retrieval: R@k averaged over this many groups of candidates
                     "caption_model": null,           # retrieval: also rank with this captioning model's PMI (a
                     "caption_pmi_weight": 0.5,       #   folder): margin + weight * PMI, as caption_pmi_* metrics
                     "retrieval_sinkhorn": false,     # retrieval: also rank gallery-normalised (sinkhorn_* metrics)
                     "length_penalty": 1.0,           # captioning beams: log-probability / length ** this
                     "batch_size": 64, "detection_threshold": 0.0,
                     "bf16": false},                  # evaluate under bf16 autocast ("auto": where it is fast)
      "debug": {"param_hash": false}          # every rank writes param_hash_rank{R}.json at the end (DDP checks)
    }

Always set: ``remove_unused_columns=False`` (otherwise the Trainer drops the image columns before the collators see
them), ``use_cpu=True`` when no GPU is visible, ``report_to="none"``. Checkpoints are safetensors (the only format of
transformers 5; ``save_safetensors`` no longer exists) and ``resume_from_checkpoint`` continues exactly: collator
randomness depends only on the seed, the epoch and the rows (see ``collators``), and the Trainer restores the RNGs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainingArguments, set_seed

from ..io.atomic import atomic_directory, atomic_write_text
from ..io.checkpoints import checkpoint_problem, is_model_file, latest_complete_checkpoint, training_output_problem
from ..modeling.processing_minivlm import tag_token_ids
from ..tasks import TASK_NAMES
from ..progress import is_quiet, progress_enabled
from . import collators as C
from . import evaluation as E
from . import trainers as T
from .curves import CURVES_FILE, TrainingCurvesCallback, headline_metrics, plot_training_curves
from .data_setup import RecipeData

_log = logging.getLogger(__name__)

STAGES = TASK_NAMES  # the one task table (minivlm_hf.tasks): detector, pretrain, caption, vqa, retrieval, nlvr
FUSION_STAGES = STAGES[1:]

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 0,
    "data": {
        "cache_dir": None, "scene_seed": 0, "num_train": 2000, "num_validation": 100, "num_test": 100,
        "nlvr_num_train": 1000, "nlvr_num_validation": 50, "nlvr_num_test": 100, "nlvr_statements_per_pair": 2,
        "min_size": 160, "max_size": 320, "image_size": 256, "fusion_num_train": None, "features": "detector",
        "detector": None, "features_dir": None, "stream": None, "stream_shuffle_buffer": 1000,
        "oracle_feature_size": 32, "oracle_num_regions": 10, "extract_batch_size": 16,
        "tag_threshold": 0.3,
        "tag_attributes": False, "tag_attribute_threshold": 0.5, "tag_order": "score",
    },
    "detector": {
        "backbone": "efficientnet_b0", "anchor_sizes": [16, 32, 64, 128, 256], "num_regions": 16,
        "pre_nms_top_k": 300, "post_nms_top_k": 64, "roi_batch_size_per_image": 64, "detection_nms_iou_threshold": 0.5,
        "image_size": 256,
    },
    "fusion": {
        "init_text": "offline-minilm", "init_from": None, "with_vision": True, "num_hidden_layers": 6,
        "max_text_length": 24, "max_tag_length": 12, "train_attn_implementation": "auto",
    },
    "collator": {
        "mask_probability": 0.15, "max_masked_tokens": 3, "pollution": 0.5, "caption_pollution": 0.25,
        "caption_swap": 0.5, "tag_source": "detected", "hflip_probability": 0.5, "mask_polluted": True,
        "hard_negatives": 0.0,
    },
    "training": {},
    "debug": {"param_hash": False},
    "evaluation": {
        "split": "test", "limit": None, "num_candidates": 100, "retrieval_groups": 1, "max_new_tokens": 20,
        "num_beams": 1, "length_penalty": 1.0, "batch_size": 64,
        "detection_threshold": 0.0, "bf16": False, "caption_model": None, "caption_pmi_weight": 0.5,
        "retrieval_sinkhorn": False,
    },
}

STAGE_TRAINING_DEFAULTS: dict[str, dict] = {
    "detector": {"max_steps": 300, "learning_rate": 2e-3, "per_device_train_batch_size": 8, "warmup_steps": 20,
                 "weight_decay": 1e-4, "max_grad_norm": 10.0},
    "pretrain": {"max_steps": 150, "learning_rate": 1e-4, "per_device_train_batch_size": 48, "warmup_steps": 15},
    "caption": {"max_steps": 150, "learning_rate": 1e-4, "per_device_train_batch_size": 48, "warmup_steps": 15},
    "vqa": {"max_steps": 150, "learning_rate": 1e-4, "per_device_train_batch_size": 48, "warmup_steps": 15},
    "retrieval": {"max_steps": 150, "learning_rate": 5e-5, "per_device_train_batch_size": 32, "warmup_steps": 15},
    "nlvr": {"max_steps": 150, "learning_rate": 1e-4, "per_device_train_batch_size": 32, "warmup_steps": 15},
}
COMMON_TRAINING = {
    "logging_steps": 10, "save_strategy": "steps", "save_steps": 100, "save_total_limit": 2, "eval_strategy": "no",
    "lr_scheduler_type": "linear", "dataloader_num_workers": 0, "report_to": "none", "disable_tqdm": False,
}


# ---------------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------------
def _merge(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_recipe_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults ← the JSON file at ``path`` ← ``overrides``. Missing or invalid files raise errors naming the file."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe config {path} does not exist")
        try:
            user = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"recipe config {path} is not valid JSON: {err}") from None
        if not isinstance(user, dict):
            raise ValueError(f"recipe config {path} must hold a JSON object, got {type(user).__name__}")
        from .config_schema import validate_recipe_config

        validate_recipe_config(user, f"recipe config {path}")
        config = _merge(config, user)
    if overrides:
        config = _merge(config, overrides)
    return config


def bf16_available(cpu: bool = True) -> bool:
    """Whether bf16 autocast is fast here: a CUDA GPU with bf16, or a CPU with AVX-512 bf16 / AMX (elsewhere CPU
    bf16 is emulated and slower than fp32)."""
    if not cpu and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def training_attention(config: dict, use_cpu: bool) -> str | None:
    """The attention implementation to train a fusion stage with (``None``: keep the model's own).

    ``"auto"`` picks ``"eager"`` on the CPU: there, without dropout, ``scaled_dot_product_attention`` takes the
    CPU flash-attention kernel, whose backward is far slower there than the eager matmul + softmax path (figures in
    docs/results.md). Elsewhere the model's own (``sdpa``) is kept."""
    choice = config.get("fusion", {}).get("train_attn_implementation", "auto")
    if not choice:
        return None
    if choice == "auto":
        return "eager" if use_cpu else None
    if choice not in ("eager", "sdpa"):
        raise ValueError(f"fusion.train_attn_implementation must be 'auto', 'eager', 'sdpa' or null, got {choice!r}")
    return choice


def training_arguments(stage: str, config: dict, output_dir: str | Path) -> TrainingArguments:
    values = {**COMMON_TRAINING, **STAGE_TRAINING_DEFAULTS[stage], **config.get("training", {})}
    valid = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"training: unknown TrainingArguments fields {unknown}")
    values.setdefault("seed", config.get("seed", 0))
    values.setdefault("use_cpu", not torch.cuda.is_available())
    if values.get("bf16") == "auto":
        values["bf16"] = bf16_available(cpu=values["use_cpu"])
    values["remove_unused_columns"] = False
    if config.get("data", {}).get("stream"):
        # Each rank reads its own shards of the stream (accelerate shards a datasets IterableDataset by files) instead
        # of rank 0 reading every batch and sending it to the others (accelerate's default for iterable datasets).
        accelerator_config = values.get("accelerator_config") or {}
        if isinstance(accelerator_config, dict):
            values["accelerator_config"] = {"dispatch_batches": False, **accelerator_config}
    if stage == "pretrain":
        values.setdefault("label_names", ["labels", "tag_labels", "contrastive_labels"])
    return TrainingArguments(output_dir=str(output_dir), **values)


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
