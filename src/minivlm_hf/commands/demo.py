"""``minivlm-hf demo``: the whole MiniVLM pipeline end to end on synthetic scenes, on this machine.

    minivlm-hf demo --output-dir demo_out            # full demo (~20 min on 2 CPU cores)
    minivlm-hf demo --quick --output-dir demo_quick  # a few steps per stage (~2-3 min)
    minivlm-hf demo --no-pretrain --detector demo_out/detector --output-dir demo_no_pretrain  # the ablation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Build the synthetic scenes, train the TEE region detector, extract region features, pre-train the fusion
transformer from MiniLM, fine-tune captioning, VQA, retrieval and NLVR, evaluate everything on the test split with
the models reloaded through the transformers Auto classes, and write report.md, summary.json and gallery.png."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train and evaluate every MiniVLM stage end to end", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="models, report.md, gallery.png, summary.json")
    parser.add_argument("--quick", action="store_true", help="tiny slices and few steps (a smoke run, ~2-3 min)")
    parser.add_argument("--cache-dir", type=Path, help="where the synthetic datasets are cached")
    parser.add_argument("--config", type=Path,
                        help='JSON overrides of the preset: {"common": {recipe keys}, "stages": {stage: {...}}}')
    parser.add_argument("--no-pretrain", action="store_true",
                        help="ablation: every fine-tune starts from the offline MiniLM instead of the pre-trained "
                             "model (same data, seeds and steps; no pre-training stage)")
    parser.add_argument("--detector", type=Path, metavar="DIR",
                        help="reuse a trained TEE (e.g. demo_out/detector) instead of training one, so that two "
                             "runs compare their fusion stages on the same regions")
    parser.add_argument("--no-gallery", action="store_true", help="skip the PNG gallery")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="reload retrieval / NLVR through the model code saved in their folders (auto_map)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (they are shown only on a terminal anyway)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ._threads import ensure_passive_openmp

    ensure_passive_openmp()
    if args.quiet:
        from ..progress import set_quiet

        set_quiet()
    from ..training.demo import run_demo

    overrides = None
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"demo config {args.config} does not exist")
        try:
            overrides = json.loads(args.config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"demo config {args.config} is not valid JSON: {err}") from None
        if not isinstance(overrides, dict) or set(overrides) - {"common", "stages"}:
            raise ValueError(f"demo config {args.config} must be an object with keys 'common' and/or 'stages'")
    if args.detector is not None and not (args.detector / "config.json").is_file():
        raise FileNotFoundError(f"--detector {args.detector}: no config.json there (not a trained detector folder)")
    run_demo(args.output_dir, quick=args.quick, cache_dir=args.cache_dir, overrides=overrides,
             gallery=not args.no_gallery, trust_remote_code=args.trust_remote_code,
             no_pretrain=args.no_pretrain, detector_dir=args.detector)
    return 0
