"""``minivlm-hf train STAGE``: one training recipe (transformers.Trainer) from a JSON config.

    minivlm-hf train detector  --config cfg.json --output-dir runs/tee
    minivlm-hf train pretrain  --config cfg.json --output-dir runs/pretrain --detector runs/tee
    minivlm-hf train vqa       --config cfg.json --output-dir runs/vqa --detector runs/tee --init-from runs/pretrain

Multi-process (data parallel): ``torchrun --nproc_per_node N -m minivlm_hf.cli train ...`` (CPU: gloo; GPUs: NCCL).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import non_negative_int, positive_float, positive_int

STAGE_HELP = {
    "detector": "the TEE region detector (EfficientNet + BiFPN, two-stage)",
    "pretrain": "fusion pre-training: masked text/tag tokens + 3-way contrastive loss",
    "caption": "image captioning (masked caption tokens, generate for evaluation)",
    "vqa": "visual question answering (soft-score classification over the answer vocabulary)",
    "retrieval": "image-text retrieval (match / no-match, one negative per positive)",
    "nlvr": "NLVR2-style reasoning over an image pair",
}

EPILOG = """\
config JSON (every key optional; see minivlm_hf.training.recipe_config for all of them and their defaults):
  seed                  int
  data.*                cache_dir, num_train/num_validation/num_test, nlvr_num_*, min_size, max_size, image_size,
                        features ("detector" | "oracle"), detector (trained TEE folder), features_dir, tag_threshold,
                        stream (parquet folder / Hub dataset repo to stream: scenes for the detector, the
                        output of `minivlm-hf data features` for the fusion stages), stream_shuffle_buffer
  detector.*            TEEConfig fields (backbone, num_regions, anchor_sizes, ...) + image_size
  fusion.*              MiniVLMConfig fields (num_hidden_layers, max_text_length, ...) + init_text
                        ("offline-minilm" | null), init_from (a trained fusion folder), with_vision
  collator.*            mask_probability, max_masked_tokens, pollution, caption_pollution, caption_swap,
                        tag_source ("detected" | "gt"), hflip_probability
  training.*            any transformers.TrainingArguments field (max_steps, learning_rate, warmup_steps, ...)
  evaluation.*          split, limit, num_candidates, max_new_tokens, num_beams, batch_size
  debug.param_hash      write param_hash_rank{R}.json per rank at the end (data-parallel checks)

outputs in --output-dir: checkpoint-*/ (safetensors), the final model + processor (save_pretrained),
metrics.json (training and held-out metrics), log_history.json (what the Trainer logged per step) and
training_curves.png (loss, evaluation metrics, learning rate); with --report-to tensorboard, runs/ (event files).
"""


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_path(config: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _resume_hint(output_dir: Path) -> str:
    """Where the last whole checkpoint is and how to go on from it."""
    from ..io.checkpoints import latest_complete_checkpoint

    last = latest_complete_checkpoint(output_dir)
    if last is None:
        return f"no complete checkpoint in {output_dir} yet (they are saved every training.save_steps steps)"
    return (f"the last complete checkpoint is {last}; run the same command with --resume-from-checkpoint auto "
            "to continue from it")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one stage (detector, pretrain, caption, vqa, retrieval, nlvr)",
        description="Train one MiniVLM stage with transformers.Trainer from a JSON recipe config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=list(STAGE_HELP), help="; ".join(f"{k}: {v}" for k, v in STAGE_HELP.items()))
    parser.add_argument("--config", type=Path, help="recipe config JSON (defaults are used for missing keys)")
    parser.add_argument("--output-dir", type=Path, required=True, help="checkpoints, final model and metrics.json")
    parser.add_argument("--max-steps", type=positive_int, help="override training.max_steps")
    parser.add_argument("--learning-rate", type=positive_float, help="override training.learning_rate")
    parser.add_argument("--batch-size", type=positive_int, help="override training.per_device_train_batch_size")
    parser.add_argument("--seed", type=non_negative_int, help="override seed")
    parser.add_argument("--detector", type=Path, help="override data.detector (trained TEE folder)")
    parser.add_argument("--init-from", type=Path, help="override fusion.init_from (e.g. the pretrain output)")
    parser.add_argument("--features-dir", type=Path, help="override data.features_dir (reuse extracted features)")
    parser.add_argument("--resume-from-checkpoint", metavar="PATH|auto",
                        help="continue from a checkpoint folder, or 'auto' for the latest one in --output-dir")
    parser.add_argument("--report-to", metavar="NAME[,NAME]",
                        help="also log to these integrations (transformers' report_to), e.g. tensorboard "
                             "(pip install 'minivlm-hf[tensorboard]'): event files under OUTPUT_DIR/runs/")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (they are shown only on a terminal anyway)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation after training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set training.warmup_steps=10 (value parsed as JSON)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ._threads import ensure_passive_openmp

    ensure_passive_openmp()
    if args.quiet:
        from ..progress import set_quiet

        set_quiet()
    from ..training.recipes import load_recipe_config, run_stage

    overrides: dict = {}
    for flag, dotted in (
        ("max_steps", "training.max_steps"), ("learning_rate", "training.learning_rate"),
        ("batch_size", "training.per_device_train_batch_size"), ("seed", "seed"),
    ):
        if getattr(args, flag) is not None:
            _set_path(overrides, dotted, getattr(args, flag))
    for flag, dotted in (("detector", "data.detector"), ("init_from", "fusion.init_from"),
                         ("features_dir", "data.features_dir")):
        if getattr(args, flag) is not None:
            _set_path(overrides, dotted, str(getattr(args, flag)))
    if args.report_to:
        _set_path(overrides, "training.report_to", [name.strip() for name in args.report_to.split(",") if name.strip()])
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        _set_path(overrides, key.strip(), _parse_value(value))
    if overrides:
        from ..training.config_schema import validate_recipe_config

        validate_recipe_config(overrides, "command-line overrides (--set and flags)")
    config = load_recipe_config(args.config, overrides)
    try:
        result = run_stage(args.stage, config, args.output_dir, resume_from_checkpoint=args.resume_from_checkpoint,
                           evaluate=not args.no_eval)
    except KeyboardInterrupt:
        print(f"minivlm-hf train: interrupted; {_resume_hint(args.output_dir)}", file=sys.stderr)
        return 130
    if result.trainer is None or result.trainer.is_world_process_zero():
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.metrics.items()
                 if k.startswith("test_") or k in ("train_loss", "global_step", "train_seconds")}
        print(f"[{args.stage}] saved to {args.output_dir}: {json.dumps(shown)}", file=sys.stderr)
    return 0
