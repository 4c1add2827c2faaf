"""The recipe config of every MiniVLM training stage: defaults, loading and the ``TrainingArguments`` it gives.

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
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from ..tasks import TASK_NAMES

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


__all__ = [
    "COMMON_TRAINING", "DEFAULT_CONFIG", "FUSION_STAGES", "STAGES", "STAGE_TRAINING_DEFAULTS", "bf16_available",
    "load_recipe_config", "training_arguments", "training_attention",
]
