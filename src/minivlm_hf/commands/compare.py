"""``minivlm-hf compare``: MiniVLM's accuracy retained vs an OSCAR-B-shaped model trained the same way.

    minivlm-hf demo --output-dir demo_out
    minivlm-hf compare --model-dir demo_out --output-dir compare_out            # the full-size comparison
    minivlm-hf compare --model-dir demo_out --output-dir compare_out --detector-steps 100
    minivlm-hf compare --model-dir demo_quick --output-dir compare_tiny --tiny  # a smoke run of every part
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import positive_int

DESCRIPTION = """\
Train an OSCAR-B-shaped model (Faster R-CNN ResNet-101-FPN regions, 50 x 2048-d at 600x1000, feeding a
BERT-base-shaped fusion transformer) on the scenes of a `minivlm-hf demo` run, with the demo's recipes, seeds and
step counts; evaluate it on the same test split; and write compare.md / compare.json: parameters, FLOPs and
image-to-answer time of both sides (timed side by side), every task metric, and MiniVLM's retention
(MiniVLM / OSCAR-B). MiniVLM's side is read from --model-dir (its summary.json and saved VQA model)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="MiniVLM vs an OSCAR-B-shaped model trained the same way: the retention table",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="the output folder of a finished `minivlm-hf demo` run (MiniVLM's side)")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="the OSCAR-B models, region tables, compare.md and compare.json; a run interrupted "
                             "there goes on from its saved detector, region tables and finished stages")
    parser.add_argument("--tiny", action="store_true",
                        help="a ResNet-18 detector at 128-160 px and a 2-layer fusion model (a smoke run)")
    parser.add_argument("--detector-steps", type=positive_int,
                        help="training steps of the OSCAR-B detector (default: the demo detector's); the table "
                             "states a reduced count")
    parser.add_argument("--timing-runs", type=positive_int, default=10,
                        help="timed image-to-answer rounds per side (interleaved; default 10)")
    parser.add_argument("--cache-dir", type=Path, help="where the synthetic datasets are cached (default: the demo's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ._threads import ensure_passive_openmp

    ensure_passive_openmp()
    if args.quiet:
        from ..progress import set_quiet

        set_quiet()
    from ..compare.run import run_compare

    run_compare(args.model_dir, args.output_dir, tiny=args.tiny, detector_steps=args.detector_steps,
                cache_dir=args.cache_dir, timing_runs=args.timing_runs, progress=not args.quiet)
    return 0
