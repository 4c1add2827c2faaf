"""The benchmark of ``minivlm-hf benchmark``: MiniVLM against the large OSCAR-B-style baseline, the CPU fast paths,
batched throughput, ONNX Runtime and the command line's start-up.

- :mod:`.suite`: the runner (:func:`run_benchmark`, :class:`BenchmarkSettings`): end-to-end comparisons (region
  extraction, VQA, captioning, retrieval), cached decoding, targets; :mod:`.fast_parts`: its fast-path, batch and
  ONNX parts;
- :mod:`.pipelines`: both sides as image → result callables (minivlm-base vs R101 Faster R-CNN + BERT-base);
- :mod:`.baseline`: the R101-FPN Faster R-CNN feature extractor (600x1000, 50 x 2048-d regions) and the BERT-base
  fusion settings, random weights, nothing downloaded;
- :mod:`.timing`: interleaved wall-clock comparison of callables (:func:`compare`, :class:`TimingStats`);
- :mod:`.accounting`: FLOPs and parameters per module group, output differences, FLOP lower bounds;
- :mod:`.machine`: achieved matmul GFLOP/s, peak memory, machine facts;
- :mod:`.report` / :mod:`.summary`: rows and JSON / the markdown report and the targets;
- :mod:`.parity`: fast paths vs fp32 on the scenes test split with trained models (:func:`run_parity`);
- :mod:`.startup`: the command line's start-up, in fresh processes (``--part startup``).

Command line: ``minivlm-hf benchmark --help`` (``--part extractor`` for region extraction alone).
"""

from .._lazy import lazy_attributes

# public name -> submodule that defines it; imported on first use (PEP 562)
_LAZY = {
    **dict.fromkeys((
        "BaselineOutput", "BaselineRegionExtractor", "build_baseline_extractor", "build_baseline_fusion_config",
        "calibrate_frozen_batchnorm",
    ), "baseline"),
    **dict.fromkeys(("ComparisonRow", "format_count", "lower_bound_seconds", "to_json"), "report"),
    **dict.fromkeys(("BenchmarkSettings", "run_benchmark"), "suite"),
    **dict.fromkeys((
        "MemoryStats", "current_rss_bytes", "machine_info", "measure_machine_gflops", "measure_matmul_gflops",
        "measure_peak_memory", "measure_peak_memory_isolated", "peak_rss_bytes",
    ), "machine"),
    **dict.fromkeys(("TimingStats", "compare", "ratio", "set_threads", "thread_info", "time_callable"), "timing"),
    **dict.fromkeys(("run_parity",), "parity"),
    **dict.fromkeys(("run_startup_benchmark",), "startup"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
