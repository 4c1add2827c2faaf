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

from .._lazy import lazy_attributes

# public name -> submodule that defines it; imported on first use (PEP 562)
_LAZY = {
    **dict.fromkeys((
        "BaselineOutput", "BaselineRegionExtractor", "build_baseline_extractor", "build_baseline_fusion_config",
        "calibrate_frozen_batchnorm",
    ), "baseline"),
    **dict.fromkeys((
        "BenchmarkReport", "ComparisonRow", "format_comparison_table", "format_parameter_table", "to_json",
    ), "report"),
    **dict.fromkeys((
        "BenchmarkSettings", "run_benchmark",
    ), "suite"),
    **dict.fromkeys((
        "MemoryStats", "current_rss_bytes", "machine_info", "measure_machine_gflops", "measure_matmul_gflops",
        "measure_peak_memory", "measure_peak_memory_isolated", "peak_rss_bytes",
    ), "machine"),
    **dict.fromkeys((
        "TimingStats", "compare", "ratio", "set_threads", "thread_info", "time_callable",
    ), "timing"),
    **dict.fromkeys((
        "call_region_extractor", "default_tee_factory", "region_features_of", "run_extractor_benchmark",
    ), "extractor"),
    **dict.fromkeys((
        "count_flops", "count_parameters", "format_count",
    ), "flops"),
    **dict.fromkeys((
        "run_parity",
    ), "parity"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
