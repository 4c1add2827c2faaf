"""`minivlm-hf answer IMAGE --question "..." --model PATH_OR_ID`: VQA answers with scores as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_arguments, add_output_argument, check_output_file, emit_json, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "answer", help="answer a question about an image", description="Visual question answering (JSON output)."
    )
    parser.add_argument("image", type=Path, help="image file")
    parser.add_argument("--question", required=True, help="the question")
    add_model_arguments(parser)
    parser.add_argument("--top-k", type=positive_int, default=3, help="answers to return")
    add_output_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference import answer, load, open_image

    if not args.question.strip():
        raise ValueError("--question is empty")
    check_output_file(args.output)
    image = open_image(args.image)
    model, processor = load("vqa", args.model, args.revision, args.trust_remote_code)
    answers = answer(model, processor, image, args.question, top_k=args.top_k)
    emit_json({"image": str(args.image), "question": args.question, "answers": answers}, args.output)
    return 0
