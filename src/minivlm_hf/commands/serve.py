"""``minivlm-hf serve MODEL [MODEL ...]``: the web demo (Gradio) for every task the checkpoints support."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="web demo: detect, caption, answer and rank captions in the browser",
        description=(
            "Serve a Gradio web demo of the checkpoints: upload an image (or pick the example) and see the detected "
            "boxes with their attributes, the caption, answers to a question and a ranking of captions, with the "
            "latency of each call. MODEL: the demo's output folder (its task checkpoints are found by their "
            "architecture), one checkpoint folder, or Hub ids; give several to combine them. Needs the 'serve' "
            "extra: pip install 'minivlm-hf[serve]'."
        ),
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="demo output folder, checkpoint folder or Hub id")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                             "network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit of Hub ids")
    parser.add_argument("--trust-remote-code", action="store_true", help="load the model code shipped with Hub ids")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="detection score threshold the page starts with (adjustable there)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    try:
        from ..serve.app import serve
    except ImportError as err:
        raise ValueError(f"the web demo needs Gradio ({err}): pip install 'minivlm-hf[serve]'") from None
    serve(args.models, host=args.host, port=args.port, revision=args.revision,
          trust_remote_code=args.trust_remote_code, detection_threshold=args.threshold, quiet=args.quiet)
    return 0
