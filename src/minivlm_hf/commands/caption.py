"""`minivlm-hf caption IMAGE... --model PATH_OR_ID`: generated captions as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_arguments, add_output_argument, check_output_file, emit_json, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "caption", help="caption images", description="Generate a caption for each image (JSON output)."
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=positive_int, default=20)
    parser.add_argument("--num-beams", type=positive_int, default=1, help="beam search width (OSCAR uses 5)")
    parser.add_argument("--prompt", default="", help="text the caption must start with")
    add_output_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference import caption, load, open_image

    check_output_file(args.output)
    images = [open_image(p) for p in args.images]
    model, processor = load("caption", args.model, args.revision, args.trust_remote_code)
    captions = caption(
        model, processor, images, prompt=args.prompt, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams
    )
    emit_json([{"image": str(p), "caption": c} for p, c in zip(args.images, captions)], args.output)
    return 0
