"""``minivlm-hf benchmark``: MiniVLM (minivlm-base) against the OSCAR-B-style baseline, the cached decoder, the CPU
fast paths, batched throughput and ONNX Runtime, in one process (see ``minivlm_hf.benchmark.suite``).

    minivlm-hf benchmark --json bench.json                    # every part but best / parity (~10 min on 2 cores)
    minivlm-hf benchmark --part extractor                     # TEE vs R101 Faster R-CNN feature extraction only
    minivlm-hf benchmark --part parity --model-dir demo_out   # fast paths vs fp32 on the scenes test split
    minivlm-hf benchmark --part int8                          # int8 torch.ao vs saveable torchao vs fp32
    minivlm-hf benchmark --part best                          # each side's best CPU settings, best vs best
    minivlm-hf benchmark --tiny --runs 2                      # tiny configs: a smoke run of the whole pipeline
    minivlm-hf benchmark --part startup                       # command-line start-up: imports, --help, one image
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import non_negative_int, positive_float, positive_int

PARTS_HELP = (
    "extractor (region extraction), vqa (image → answer), caption (greedy + beam), retrieval (1 image × 100 "
    "captions), decoder (KV cache vs none), fast (fast paths), batch (images/s at batch 1/8/32), onnx (ONNX "
    "Runtime), int8 (int8 torch.ao vs saveable torchao vs fp32), best (each side with its best CPU settings: "
    "bf16 / int8 / channels_last, best vs best; not in all), parity (fast paths vs fp32 on the test split; "
    "needs --model-dir), all (every part but best and parity, plus parity when --model-dir is given), startup "
    "(command-line start-up in fresh processes: imports, every --help, one-image caption / answer / detect split "
    "into import / load / inference / rest; not in all). "
    "Comma-separated or repeated."
)
STARTUP_PART = "startup"  # runs in subprocesses, apart from the in-process suite


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="speed, size and FLOPs of MiniVLM vs the OSCAR-B baseline; fast paths; ONNX",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--part", action="append", default=None, metavar="PART", help=PARTS_HELP)
    parser.add_argument("--runs", type=positive_int, default=10, help="timed interleaved rounds per row (>= 10; default 10)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed warm-up rounds before timing (default 1)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="only cpu is supported")
    parser.add_argument("--json", type=Path, default=None, help="write every number as JSON here")
    parser.add_argument("--model-dir", "--model", dest="model_dir", type=Path, default=None,
                        help="output folder of `minivlm-hf demo` (trained models) for --part parity")
    parser.add_argument("--parity-limit", type=positive_int, default=None, help="cap the test examples per task in parity")
    parser.add_argument("--parity-num-test", type=positive_int, default=None,
                        help="parity on a larger test split of the same generator (e.g. 500: retrieval averaged over "
                             "5 groups of 100 candidates, NLVR pairs scaled alike) instead of the demo's")
    parser.add_argument("--parity-int8-torchao", action="store_true",
                        help="--part parity: also evaluate the saveable int8 models of transformers' TorchAoConfig "
                             "(minivlm_hf.fast.quantize_int8; needs torchao)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="--part parity: load the model code shipped in --model-dir (default: the installed package's)")
    parser.add_argument("--tiny", action="store_true", help="tiny random configs, --runs may be < 10 (smoke test)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile variants (compile time reported separately; minutes on 2 cores)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-flops", action="store_true", help="skip FLOP counting (and the lower bounds)")
    parser.add_argument("--batch-runs", type=positive_int, default=3, help="timed rounds per batched-throughput row (default 3)")
    parser.add_argument("--batch-sizes", type=str, default=None, help="comma-separated batch sizes (default 1,8,32)")
    parser.add_argument("--opset", type=positive_int, default=17, help="ONNX opset for --part onnx (default 17)")
    parser.add_argument("--gflops-seconds", type=positive_float, default=1.0, help="seconds per matmul-throughput probe")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (shown only on a terminal anyway)")
    parser.set_defaults(func=run)


def parse_parts(values: list[str] | None, has_model_dir: bool) -> tuple[str, ...]:
    from ..benchmark.suite import DEFAULT_PARTS, PARTS

    requested = []
    for value in values or ["all"]:
        requested += [v.strip() for v in value.split(",") if v.strip()]
    parts: list[str] = []
    for name in requested:
        if name == "all":
            parts += list(DEFAULT_PARTS) + (["parity"] if has_model_dir else [])
        elif name in PARTS or name == STARTUP_PART:
            parts.append(name)
        else:
            raise ValueError(f"unknown --part {name!r}; choose from {', '.join(PARTS)}, {STARTUP_PART}, all")
    return tuple(dict.fromkeys(parts))


def run(args: argparse.Namespace) -> int:
    if args.quiet:
        from ..progress import set_quiet

        set_quiet()
    from ..benchmark.suite import BenchmarkSettings, run_benchmark

    batch_sizes = None
    if args.batch_sizes:
        try:
            batch_sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b.strip())
        except ValueError:
            raise ValueError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError("--batch-sizes must be positive integers")
    if args.model_dir is not None and not args.model_dir.is_dir():
        raise FileNotFoundError(f"--model-dir {args.model_dir} does not exist")
    parts = parse_parts(args.part, args.model_dir is not None)
    if STARTUP_PART in parts:
        from ..benchmark.startup import run_startup_benchmark
        from ..benchmark.suite import MIN_RUNS

        if args.runs < MIN_RUNS and not args.tiny:
            raise ValueError(
                f"--runs must be >= {MIN_RUNS} (medians over fewer runs are not reported); --tiny allows less")
        parts = tuple(p for p in parts if p != STARTUP_PART)
        json_path = args.json if not parts or args.json is None else args.json.with_suffix(".startup.json")
        run_startup_benchmark(runs=args.runs, warmup=args.warmup, threads=args.threads,
                              json_path=str(json_path) if json_path else None)
        if not parts:
            return 0
    settings = BenchmarkSettings(
        parts=parts, runs=args.runs, warmup=args.warmup,
        threads=args.threads, device=args.device, tiny=args.tiny, compile=args.compile, memory=not args.no_memory,
        flops=not args.no_flops, batch_runs=args.batch_runs, batch_sizes=batch_sizes, gflops_seconds=args.gflops_seconds,
        opset=args.opset, model_dir=str(args.model_dir) if args.model_dir else None, parity_limit=args.parity_limit,
        parity_num_test=args.parity_num_test, trust_remote_code=args.trust_remote_code,
        parity_int8_torchao=args.parity_int8_torchao,
        json_path=str(args.json) if args.json else None,
    )
    run_benchmark(settings)
    return 0
