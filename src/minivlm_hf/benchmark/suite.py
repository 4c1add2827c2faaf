"""The full benchmark behind ``minivlm-hf benchmark``: MiniVLM (minivlm-base) against the OSCAR-B-style baseline,
the cached decoder, the CPU fast paths, batched throughput and ONNX Runtime, in one process.

Parts (``--part``; ``all`` = every part but ``best`` and ``parity``, which needs trained models):

``extractor``  region extraction alone: TEE-B0 @512x512 vs Faster R-CNN R101-FPN @600x1000.
``vqa``        image → VQA answer, end to end (detector included).
``caption``    image → 20-token caption, greedy and 5-beam (both sides decode with the KV cache).
``retrieval``  image-text retrieval: 1 image x 100 captions (detector runs once).
``decoder``    MiniVLM captioning from precomputed regions, ``use_cache=True`` vs ``False`` (tokens compared).
``fast``       MiniVLM fast paths vs fp32: TEE (BN folding, channels_last, bf16, compile), fusion (int8, bf16,
               compile), image → answer and image → caption with the fast paths.
``batch``      images/s at batch 1, 8, 32 for extraction and image → VQA (fp32 and fast paths).
``onnx``       ONNX export of minivlm-base (TEE + fusion/VQA) and ONNX Runtime latency vs PyTorch.
``int8``       the int8 paths side by side: torch.ao dynamic (inference-only) vs torchao via TorchAoConfig
               (saveable) vs fp32, fusion from regions, image → answer, image → caption (needs torchao).
``best``       each side with its best CPU settings (bf16 / int8 / channels_last), best vs best: image → answer,
               image → greedy and beam caption (not in ``all``: about 7 min on 2 cores).
``parity``     quality of every fast path vs fp32 on the scenes test split (``--model-dir`` = demo output).

Timing rules (see :mod:`.timing`): one process, batch 1 unless stated, warm-up rounds first, then ``runs`` rounds
in which the contenders of a row run interleaved (A B A B ...), median and min-max reported, torch intra-op threads
fixed (``--threads``). FLOPs come from ``torch.utils.flop_counter`` (matmul / conv work only); the machine's
achieved matmul GFLOP/s (fp32 and bf16) is measured at the start and at the end of the run, and the higher value
of each dtype turns FLOPs into the lower bound printed next to every measured time.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from .accounting import (
    BASELINE_DETECTOR_GROUPS,
    BASELINE_FUSION_GROUPS,
    MINIVLM_PARAM_GROUPS,
    flop_groups_baseline,
    flop_groups_minivlm,
    flops_by_module,
    param_groups,
    set_lower_bounds,
    total_flops,
)
from .best_part import BestPathPart
from .fast_parts import FastPathParts
from .int8_part import Int8Part
from .machine import machine_info, measure_machine_gflops, measure_peak_memory_isolated
from .pipelines import (
    FULL,
    TINY,
    BaselineSide,
    MiniVLMSide,
    Scale,
    build_baseline_vqa_state,
    build_minivlm_vqa_state,
    run_vqa_once,
)
from .report import ComparisonRow, lower_bound_seconds, to_json
from .summary import NOTES, TARGETS, evaluate_targets, format_stats, to_markdown
from .timing import compare, set_threads

__all__ = ["PARTS", "DEFAULT_PARTS", "BenchmarkSettings", "run_benchmark", "TARGETS"]

PARTS = ("extractor", "vqa", "caption", "retrieval", "decoder", "fast", "batch", "onnx", "int8", "best", "parity")
DEFAULT_PARTS = tuple(p for p in PARTS if p not in ("best", "parity"))
MIN_RUNS = 10
FAST_TEE_LABEL = "fast paths (TEE fused BN + channels_last)"
FAST_VQA_LABEL = "fast paths (TEE fused BN + channels_last, fusion int8)"
# every computation still in float32: the fp32 answer to the image → VQA time target
FAST_VQA_FP32_LABEL = "fp32 fast paths (TEE fused BN + channels_last, fusion fused QKV)"

#: name → (description, comparison, threshold)
@dataclass
class BenchmarkSettings:
    parts: tuple[str, ...] = DEFAULT_PARTS
    runs: int = 10
    warmup: int = 1
    threads: int | None = 2
    device: str = "cpu"
    tiny: bool = False
    compile: bool = False
    memory: bool = True
    flops: bool = True
    batch_runs: int = 3
    batch_sizes: tuple[int, ...] | None = None
    gflops_seconds: float = 1.0
    opset: int = 17
    model_dir: str | None = None
    parity_limit: int | None = None
    parity_num_test: int | None = None
    trust_remote_code: bool = False  # parity: run the model code shipped in model_dir (explicit opt-in only)
    parity_int8_torchao: bool = False  # parity: also the saveable torchao int8 models (needs torchao)
    json_path: str | None = None
    seed: int = 0

    def check(self) -> None:
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)} or 'all'")
        if self.device != "cpu":
            raise ValueError("only --device cpu is supported (int8 dynamic quantisation and the timings are CPU-only)")
        if self.runs < MIN_RUNS and not self.tiny:
            raise ValueError(f"--runs must be >= {MIN_RUNS} (medians over fewer runs are not reported); --tiny allows less")
        if self.runs < 1 or self.warmup < 0 or self.batch_runs < 1:
            raise ValueError("--runs and --batch-runs must be >= 1, --warmup >= 0")
        if "parity" in self.parts and not self.model_dir:
            raise ValueError("--part parity needs --model-dir (the output folder of `minivlm-hf demo`)")

    @property
    def scale(self) -> Scale:
        return TINY if self.tiny else FULL


# --------------------------------------------------------------------------------------------------------- runner


class _Runner(BestPathPart, Int8Part, FastPathParts):
    def __init__(self, settings: BenchmarkSettings, log: Callable[[str], None]):
        self.s = settings
        self.log = log
        self.scale = settings.scale
        self.result: dict[str, Any] = {"settings": _settings_dict(settings), "rows": [], "fast": [], "batch": [],
                                       "notes": []}
        self._minivlm: MiniVLMSide | None = None
        self._baseline: BaselineSide | None = None
        self.gflops_used: dict[str, float] = {}

    # sides ------------------------------------------------------------------------------------------------------
    @property
    def minivlm(self) -> MiniVLMSide:
        if self._minivlm is None:
            start = time.perf_counter()
            self._minivlm = MiniVLMSide(self.scale, seed=self.s.seed)
            self.result.setdefault("build_s", {})["minivlm"] = time.perf_counter() - start
        return self._minivlm

    @property
    def baseline(self) -> BaselineSide:
        if self._baseline is None:
            start = time.perf_counter()
            self._baseline = BaselineSide(self.minivlm.config, self.scale, seed=self.s.seed)
            self.result.setdefault("build_s", {})["baseline"] = time.perf_counter() - start
        return self._baseline

    def compare(self, callables: dict[str, Callable[[], Any]], runs: int | None = None, warmup: int | None = None):
        return compare(callables, runs=runs or self.s.runs, warmup=self.s.warmup if warmup is None else warmup)

    def lb(self, flops: int | None, dtype: str = "float32") -> float | None:
        return lower_bound_seconds(flops, self.gflops_used.get(dtype))

    def save(self) -> None:
        if self.s.json_path:
            to_json(self.result, self.s.json_path)

    # parts ------------------------------------------------------------------------------------------------------
    def comparison(self, key: str, task: str, a: Callable, b: Callable, groups=None,
                   fast: list[tuple[str, Callable]] | None = None) -> ComparisonRow:
        """MiniVLM fp32 (``a``) vs baseline (``b``), interleaved; each ``fast`` ``(label, callable)`` adds MiniVLM
        with fast paths as a further contender in the same rounds (A B C D A B C D ...)."""
        self.log(f"  {task}: timing {self.s.runs} interleaved rounds ...")
        fast = list(fast or [])
        callables = {"minivlm": a, "baseline": b}
        for i, (_, call) in enumerate(fast):
            callables[f"minivlm_fast_{i}"] = call
        timing = self.compare(callables)
        flops_a = flops_b = None
        per_module = {}
        if self.s.flops:
            if groups:
                flops_a, per_module["minivlm"] = flops_by_module(a, groups[0])
                flops_b, per_module["baseline"] = flops_by_module(b, groups[1])
            else:
                flops_a, flops_b = total_flops(a), total_flops(b)
        row = ComparisonRow(task=task, minivlm=timing["minivlm"], baseline=timing["baseline"],
                            minivlm_flops=flops_a, baseline_flops=flops_b)
        entry = {"key": key, **row.to_dict(self.gflops_used.get("float32"))}
        if per_module:
            entry["flops_per_module"] = per_module
        variants = []
        for i, (label, _) in enumerate(fast):
            stats = timing[f"minivlm_fast_{i}"]
            variants.append({"variant": label, **stats.to_dict(),
                             "time_ratio": stats.median / timing["baseline"].median})
        if variants:
            entry["minivlm_fast"] = variants[0]
            entry["minivlm_fast_variants"] = variants
        self.result["rows"].append(entry)
        self.log(f"    MiniVLM {format_stats(row.minivlm)} vs baseline {format_stats(row.baseline)}: "
                 f"ratio {row.time_ratio:.4f}"
                 + "".join(f"; MiniVLM {v['variant']} {format_stats(timing[f'minivlm_fast_{i}'])}: ratio "
                           f"{v['time_ratio']:.4f}" for i, v in enumerate(variants)))
        return row

    def part_extractor(self):
        from ..fast import optimize_for_inference

        m, b = self.minivlm, self.baseline
        tee_groups = {k.replace("TEE ", ""): v.replace("MiniVLMForQuestionAnswering.minivlm.vision_model", "TEEModel")
                      for k, v in flop_groups_minivlm().items() if k.startswith("TEE")}
        det_groups = {k: v for k, v in flop_groups_baseline().items() if v.startswith("BaselineRegionExtractor")}
        s = self.scale
        self.comparison(
            "extraction",
            f"region extraction: TEE {s.image_size}×{s.image_size} vs R101-FPN {s.baseline_image[0]}×"
            f"{s.baseline_image[1]}",
            m.extraction(), b.extraction(), groups=(tee_groups, det_groups),
            fast=[(FAST_TEE_LABEL, m.extraction(optimize_for_inference(m.tee)))],
        )

    def part_vqa(self):
        from ..fast import optimize_for_inference

        m, b = self.minivlm, self.baseline
        self.comparison("image_to_vqa", "image → VQA answer (end to end)", m.vqa_call(), b.vqa_call(),
                        groups=(flop_groups_minivlm(), flop_groups_baseline()),
                        fast=[(FAST_VQA_FP32_LABEL, m.vqa_call(optimize_for_inference(m.vqa))),
                              (FAST_VQA_LABEL, m.vqa_call(optimize_for_inference(m.vqa, int8=True)))])

    def part_caption(self):
        m, b = self.minivlm, self.baseline
        n = self.scale.caption_tokens
        self.comparison("image_to_caption_greedy", f"image → {n}-token caption, greedy", m.caption_call(1),
                        b.caption_call(1))
        k = self.scale.num_beams
        self.comparison("image_to_caption_beam", f"image → {n}-token caption, {k}-beam", m.caption_call(k),
                        b.caption_call(k))

    def part_retrieval(self):
        m, b = self.minivlm, self.baseline
        n = self.scale.num_captions
        self.comparison("retrieval", f"retrieval: 1 image × {n} captions", m.retrieval_call(), b.retrieval_call())

    def part_decoder(self):
        m = self.minivlm
        with torch.inference_mode():
            regions = m.regions(m.captioner, m.pixel_values, m.pixel_mask)
            cached_fn = m.caption_from_regions(regions, use_cache=True)
            uncached_fn = m.caption_from_regions(regions, use_cache=False)
            tokens_cached, tokens_uncached = cached_fn(), uncached_fn()
        self.log(f"  decoder: {self.scale.caption_tokens} tokens, use_cache=True vs False ...")
        timing = self.compare({"use_cache=True": cached_fn, "use_cache=False": uncached_fn})
        identical = bool(tokens_cached.shape == tokens_uncached.shape and torch.equal(tokens_cached, tokens_uncached))
        flops = {}
        if self.s.flops:
            flops = {"use_cache=True": total_flops(cached_fn), "use_cache=False": total_flops(uncached_fn)}
        speedup = timing["use_cache=False"].median / timing["use_cache=True"].median
        self.result["decoder"] = {
            "tokens": self.scale.caption_tokens,
            "timing": {k: v.to_dict() for k, v in timing.items()},
            "speedup": speedup,
            "identical_tokens": identical,
            "tokens_cached": tokens_cached.tolist(),
            "flops": flops,
        }
        self.log(f"    cached {format_stats(timing['use_cache=True'])}, uncached {format_stats(timing['use_cache=False'])}:"
                 f" {speedup:.2f}× faster, identical tokens: {identical}")
        if "fast" in self.s.parts:
            # The same comparison on the fp32 fast-path captioner (fused QKV: the same arithmetic up to rounding)
            # and on the bf16 one, for information next to the plain fp32 model the target is about.
            from ..fast import optimize_for_inference

            for key, label, options in (("fp32_fast", "fp32 fast-path", {}), ("bf16", "bf16", {"bf16": True})):
                model = optimize_for_inference(m.captioner, **options)
                cached_fn = m.caption_from_regions(regions, use_cache=True, model=model)
                uncached_fn = m.caption_from_regions(regions, use_cache=False, model=model)
                with torch.inference_mode():
                    a, b = cached_fn(), uncached_fn()
                self.log(f"  decoder, {label} captioner ...")
                timing = self.compare({"use_cache=True": cached_fn, "use_cache=False": uncached_fn})
                self.result["decoder"][key] = {
                    "timing": {k: v.to_dict() for k, v in timing.items()},
                    "speedup": timing["use_cache=False"].median / timing["use_cache=True"].median,
                    "identical_tokens": bool(a.shape == b.shape and torch.equal(a, b)),
                    "same_tokens_as_fp32": bool(a.shape == tokens_cached.shape and torch.equal(a, tokens_cached)),
                    "speedup_vs_fp32_cached": self.result["decoder"]["timing"]["use_cache=True"]["median_s"]
                    / timing["use_cache=True"].median,
                }
                d = self.result["decoder"][key]
                self.log(f"    cached {format_stats(timing['use_cache=True'])}, uncached "
                         f"{format_stats(timing['use_cache=False'])}: {d['speedup']:.2f}× faster, identical tokens: "
                         f"{d['identical_tokens']}")

    def part_parity(self):
        from .parity import run_parity

        self.log(f"  parity on the scenes test split of {self.s.model_dir} ...")
        self.result["parity"] = run_parity(self.s.model_dir, limit=self.s.parity_limit,
                                           num_test=self.s.parity_num_test, log=self.log,
                                           trust_remote_code=self.s.trust_remote_code,
                                           int8_torchao=self.s.parity_int8_torchao)

    # static facts -----------------------------------------------------------------------------------------------
    def params(self):
        m, b = self.minivlm, self.baseline
        minivlm = param_groups(m.vqa, MINIVLM_PARAM_GROUPS)
        baseline = param_groups(b.extractor, BASELINE_DETECTOR_GROUPS)
        fusion = param_groups(b.vqa, BASELINE_FUSION_GROUPS)
        baseline_all = {k: v for k, v in baseline.items() if k != "total"}
        baseline_all.update({k: v for k, v in fusion.items() if k != "total"})
        baseline_all["total"] = baseline["total"] + fusion["total"]
        self.result["params"] = {"minivlm": minivlm, "baseline": baseline_all}
        self.result["param_ratio"] = minivlm["total"] / baseline_all["total"]
        self.result["weights_bytes_fp32"] = {"minivlm": 4 * minivlm["total"], "baseline": 4 * baseline_all["total"]}
        tee = sum(v for k, v in minivlm.items() if k.startswith("TEE"))
        det = baseline["total"]
        self.result["param_ratio_extractor"] = tee / det
        self.result["param_ratio_fusion"] = (minivlm["total"] - tee) / fusion["total"]

    def memory(self):
        tiny, threads = self.s.tiny, torch.get_num_threads()
        out = {}
        for side, setup in (("minivlm", build_minivlm_vqa_state), ("baseline", build_baseline_vqa_state)):
            self.log(f"  peak memory of one image → VQA call, {side}, fresh subprocess ...")
            try:
                stats = measure_peak_memory_isolated(run_vqa_once, threads, setup=functools.partial(setup, tiny))
                out[side] = stats.to_dict()
            except RuntimeError as err:
                out[side] = {"error": str(err)}
        self.result["memory"] = out


def _settings_dict(s: BenchmarkSettings) -> dict[str, Any]:
    d = asdict(s)
    d["parts"] = list(s.parts)
    return d


def run_benchmark(settings: BenchmarkSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected parts; returns the JSON-friendly result (also written to ``settings.json_path``), with
    ``result["markdown"]`` holding the printed report."""
    settings.check()
    start = time.perf_counter()
    runner = _Runner(settings, log)
    result = runner.result
    parts = [p for p in PARTS if p in settings.parts]
    needs_models = any(p != "parity" for p in parts)
    with set_threads(settings.threads) as threads:
        result["threads"] = threads
        result["machine"] = machine_info()
        log(f"minivlm-hf benchmark: parts {', '.join(parts)}; {threads} torch threads; load average "
            f"{result['machine'].get('load_average')}")
        if needs_models:
            log("  measuring matmul GFLOP/s (fp32, bf16) ...")
            gflops_start = measure_machine_gflops(n=512 if settings.tiny else 2048, seconds=settings.gflops_seconds)
            result["gflops"] = {"start": gflops_start}
            runner.gflops_used = dict(gflops_start)
            log("  building models (random weights) ...")
            with torch.inference_mode(False):
                _ = runner.minivlm
                if any(p in parts for p in ("extractor", "vqa", "caption", "retrieval", "best")):
                    _ = runner.baseline
                    runner.params()
        for part in parts:
            log(f"[{part}]")
            getattr(runner, f"part_{part}")()
            runner.save()
        if needs_models and settings.memory and any(p in parts for p in ("extractor", "vqa")):
            runner.memory()
        if needs_models:
            gflops_end = measure_machine_gflops(n=512 if settings.tiny else 2048, seconds=settings.gflops_seconds)
            result["gflops"]["end"] = gflops_end
            result["gflops"]["used"] = {k: max(v, gflops_end.get(k, 0.0)) for k, v in result["gflops"]["start"].items()}
            runner.gflops_used = result["gflops"]["used"]
            _refresh_lower_bounds(result, runner)
    result["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["runtime_s"] = time.perf_counter() - start
    result["targets"] = evaluate_targets(result)
    result["notes"] = list(NOTES) if needs_models else []
    result["markdown"] = to_markdown(result)
    log(result["markdown"])
    if settings.json_path:
        to_json(result, settings.json_path)
        log(f"wrote {settings.json_path}")
    return result


def _refresh_lower_bounds(result: dict[str, Any], runner: _Runner) -> None:
    """Recompute every lower bound with the final (higher of start / end) GFLOP/s."""
    rate32 = runner.gflops_used.get("float32")
    for r in result.get("rows", []):
        for side in ("minivlm", "baseline"):
            lb = lower_bound_seconds(r.get(f"{side}_flops"), rate32)
            r[f"{side}_lower_bound_s"] = lb
            r[f"{side}_measured_over_lower_bound"] = r[side]["median_s"] / lb if lb else None
    for f in result.get("fast", []):
        set_lower_bounds(f, runner.gflops_used)

