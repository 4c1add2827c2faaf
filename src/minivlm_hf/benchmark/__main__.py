"""``python -m minivlm_hf.benchmark extractor [--runs N] [--threads T] [--json PATH]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minivlm_hf.benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extractor", help="TEE (512x512) vs R101-FPN Faster R-CNN (600x1000) feature extraction")
    ext.add_argument("--runs", type=int, default=10)
    ext.add_argument("--warmup", type=int, default=2)
    ext.add_argument("--threads", type=int, default=2)
    ext.add_argument("--image-size", type=int, default=512)
    ext.add_argument("--gflops-seconds", type=float, default=1.0)
    ext.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    ext.add_argument("--memory", action="store_true", help="also measure per-call peak RSS growth")
    ext.add_argument("--json", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from .extractor import run_extractor_benchmark

    run_extractor_benchmark(
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        image_size=args.image_size,
        gflops_seconds=args.gflops_seconds,
        measure_flops=not args.no_flops,
        measure_memory=args.memory,
        json_path=args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
