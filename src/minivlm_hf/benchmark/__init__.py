"""Benchmark machinery comparing MiniVLM with the large OSCAR-B-style baseline.

- :mod:`.baseline`: the R101-FPN Faster R-CNN feature extractor (600x1000, 50 x 2048-d regions) and the
  BERT-base fusion settings, random weights, nothing downloaded.
- :mod:`.timing`: interleaved wall-clock comparison of callables (:func:`compare`, :class:`TimingStats`).
- :mod:`.flops`: FLOP counts (``FlopCounterMode``) and parameter counts, per module.
- :mod:`.machine`: achieved matmul GFLOP/s, peak memory, machine facts.
- :mod:`.report`: markdown / JSON reports.
- :mod:`.extractor`: the TEE-vs-baseline feature-extraction benchmark (:func:`run_extractor_benchmark`).
- :mod:`.pipelines`: both sides of the end-to-end benchmark (minivlm-base vs R101 Faster R-CNN + BERT-base) as
  image → result callables (extraction, VQA, captioning, retrieval).
- :mod:`.suite`: the full benchmark of ``minivlm-hf benchmark`` (:func:`run_benchmark`): end-to-end comparisons,
  cached decoding, CPU fast paths, batched throughput, ONNX Runtime, targets.
- :mod:`.parity`: fast paths vs fp32 on the scenes test split with trained models (:func:`run_parity`).

Command line: ``minivlm-hf benchmark --help`` (the full benchmark; ``--part extractor`` for extraction alone) and
``python -m minivlm_hf.benchmark extractor --help`` (the stand-alone extraction benchmark).
"""

from .baseline import (
    BaselineOutput,
    BaselineRegionExtractor,
    build_baseline_extractor,
    build_baseline_fusion_config,
    calibrate_frozen_batchnorm,
)
from .extractor import call_region_extractor, default_tee_factory, region_features_of, run_extractor_benchmark
from .flops import count_flops, count_parameters, format_count
from .machine import (
    MemoryStats,
    current_rss_bytes,
    machine_info,
    measure_machine_gflops,
    measure_matmul_gflops,
    measure_peak_memory,
    measure_peak_memory_isolated,
    peak_rss_bytes,
)
from .parity import run_parity
from .report import BenchmarkReport, ComparisonRow, format_comparison_table, format_parameter_table, to_json
from .suite import BenchmarkSettings, run_benchmark
from .timing import TimingStats, compare, ratio, set_threads, thread_info, time_callable

__all__ = [
    "BaselineOutput",
    "BaselineRegionExtractor",
    "BenchmarkReport",
    "BenchmarkSettings",
    "ComparisonRow",
    "MemoryStats",
    "TimingStats",
    "build_baseline_extractor",
    "build_baseline_fusion_config",
    "calibrate_frozen_batchnorm",
    "call_region_extractor",
    "compare",
    "count_flops",
    "count_parameters",
    "current_rss_bytes",
    "default_tee_factory",
    "format_comparison_table",
    "format_count",
    "format_parameter_table",
    "machine_info",
    "measure_machine_gflops",
    "measure_matmul_gflops",
    "measure_peak_memory",
    "measure_peak_memory_isolated",
    "peak_rss_bytes",
    "ratio",
    "region_features_of",
    "run_benchmark",
    "run_parity",
    "run_extractor_benchmark",
    "set_threads",
    "thread_info",
    "time_callable",
    "to_json",
]
