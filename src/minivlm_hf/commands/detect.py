"""`minivlm-hf detect IMAGE... --model PATH_OR_ID`: boxes, labels and scores as JSON (optionally drawn)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_arguments, add_output_argument, check_output_file, emit_json, unit_interval


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect objects with a TEE checkpoint",
        description="Run the TEE detector on images and print boxes (pixels, xyxy), labels and scores as JSON.",
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    add_model_arguments(parser)
    parser.add_argument("--threshold", type=unit_interval, default=0.5, help="minimum score (default 0.5)")
    add_output_argument(parser)
    parser.add_argument(
        "--draw", type=Path, default=None, help="PNG with the boxes drawn (with several images: NAME_<i>.png)"
    )
    parser.set_defaults(func=run)


def draw_detections(image, detections, path: Path) -> None:
    from PIL import ImageDraw

    canvas = image.convert("RGB").copy()
    pen = ImageDraw.Draw(canvas)
    for det in detections:
        x1, y1, x2, y2 = det["box"]
        pen.rectangle([x1, y1, x2, y2], outline=(255, 0, 0), width=2)
        pen.text((x1 + 2, max(0, y1 - 11)), f"{det['label']} {det['score']:.2f}", fill=(255, 0, 0))
    import io

    from ..io.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())  # an interrupted run never leaves half a PNG


def run(args: argparse.Namespace) -> int:
    from ..inference import detect, load, open_image

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    check_output_file(args.output)
    check_output_file(args.draw, "--draw")
    images = [open_image(p) for p in args.images]
    model, processor = load("detector", args.model, args.revision, args.trust_remote_code)
    results = detect(model, processor, images, threshold=args.threshold)
    if args.draw is not None:
        for index, (image, dets) in enumerate(zip(images, results)):
            path = args.draw if len(images) == 1 else args.draw.with_name(f"{args.draw.stem}_{index}.png")
            draw_detections(image, dets, path)
    emit_json([{"image": str(p), "detections": d} for p, d in zip(args.images, results)], args.output)
    return 0
