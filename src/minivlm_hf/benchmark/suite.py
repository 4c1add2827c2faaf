"""The full benchmark behind ``minivlm-hf benchmark``: MiniVLM (minivlm-base) against the OSCAR-B-style baseline,
the cached decoder, the CPU fast paths, batched throughput and ONNX Runtime, in one process.

Parts (``--part``; ``all`` = every part but ``parity``, which needs trained models):

``extractor``  region extraction alone: TEE-B0 @512x512 vs Faster R-CNN R101-FPN @600x1000.
``vqa``        image → VQA answer, end to end (detector included).
``caption``    image → 20-token caption, greedy and 5-beam (both sides decode with the KV cache).
``retrieval``  image-text retrieval: 1 image x 100 captions (detector runs once).
``decoder``    MiniVLM captioning from precomputed regions, ``use_cache=True`` vs ``False`` (tokens compared).
``fast``       MiniVLM fast paths vs fp32: TEE (BN folding, channels_last, bf16, compile), fusion (int8, bf16,
               compile), image → answer and image → caption with the fast paths.
``batch``      images/s at batch 1, 8, 32 for extraction and image → VQA (fp32 and fast paths).
``onnx``       ONNX export of minivlm-base (TEE + fusion/VQA) and ONNX Runtime latency vs PyTorch.
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
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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
from .summary import NOTES, TARGETS, _fmt_s, _fmt_stats, evaluate_targets, to_markdown  # noqa: F401 - re-exported
from .timing import TimingStats, compare, set_threads

__all__ = ["PARTS", "DEFAULT_PARTS", "BenchmarkSettings", "run_benchmark", "TARGETS"]

PARTS = ("extractor", "vqa", "caption", "retrieval", "decoder", "fast", "batch", "onnx", "parity")
DEFAULT_PARTS = tuple(p for p in PARTS if p != "parity")
MIN_RUNS = 10
FAST_TEE_LABEL = "fast paths (TEE fused BN + channels_last)"
FAST_VQA_LABEL = "fast paths (TEE fused BN + channels_last, fusion int8)"
FAST_INT8 = "fast int8 (TEE fused BN + channels_last, fusion int8)"
FAST_MIXED = "fast mixed (TEE fused BN + channels_last + bf16, fusion int8)"
FAST_BF16 = "fast bf16 (TEE fused BN + channels_last + bf16, fusion bf16)"

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


# --------------------------------------------------------------------------------------------------------- helpers


def _flops_by_module(fn: Callable[[], Any], groups: dict[str, str]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn()`` and the FLOPs of each ``label: module FQN`` group (FQNs as FlopCounterMode names
    them: the root module's class name, then attribute names), plus ``(other)`` for the rest."""
    counter = FlopCounterMode(display=False, depth=None)
    with torch.inference_mode(), counter:
        fn()
    counts = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    total = int(counter.get_total_flops())
    out = {label: counts.get(fqn, 0) for label, fqn in groups.items()}
    rest = total - sum(out.values())
    if rest:
        out["(other)"] = rest
    return total, out


def _total_flops(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False, depth=None)
    with torch.inference_mode(), counter:
        fn()
    return int(counter.get_total_flops())


def _param_groups(model: nn.Module, groups: dict[str, str]) -> dict[str, int]:
    """Parameters per ``label: attribute-path prefix`` (longest prefix wins; shared tensors counted once)."""
    out = {label: 0 for label in groups}
    other = 0
    seen = set()
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        for label, prefix in ordered:
            if name == prefix or name.startswith(prefix + "."):
                out[label] += param.numel()
                break
        else:
            other += param.numel()
    if other:
        out["(other)"] = other
    out["total"] = sum(out.values())
    return out


MINIVLM_PARAM_GROUPS = {
    "TEE backbone (EfficientNet)": "minivlm.vision_model.backbone",
    "TEE BiFPN": "minivlm.vision_model.bifpn",
    "TEE proposal head": "minivlm.vision_model.proposal_head",
    "TEE box head (2 FC)": "minivlm.vision_model.box_head",
    "TEE predictors": "minivlm.vision_model.predictor",
    "fusion word/position/type embeddings": "minivlm.embeddings",
    "fusion region embedding": "minivlm.region_embeddings",
    "fusion encoder": "minivlm.encoder",
    "fusion pooler": "minivlm.pooler",
    "VQA classifier": "classifier",
}
BASELINE_DETECTOR_GROUPS = {
    "detector backbone (ResNet)": "detector.backbone.body",
    "detector FPN": "detector.backbone.fpn",
    "detector RPN": "detector.rpn",
    "detector box head (2 FC, 2048)": "detector.roi_heads.box_head",
    "detector box predictor": "detector.roi_heads.box_predictor",
}
BASELINE_FUSION_GROUPS = {
    "fusion word/position/type embeddings": "minivlm.embeddings",
    "fusion region embedding": "minivlm.region_embeddings",
    "fusion encoder": "minivlm.encoder",
    "fusion pooler": "minivlm.pooler",
    "VQA classifier": "classifier",
}


def _flop_groups_minivlm(root: str = "MiniVLMForQuestionAnswering") -> dict[str, str]:
    return {label: f"{root}.{prefix}" for label, prefix in MINIVLM_PARAM_GROUPS.items()}


def _flop_groups_baseline(fusion_root: str = "MiniVLMForQuestionAnswering") -> dict[str, str]:
    groups = {label: f"BaselineRegionExtractor.{prefix}" for label, prefix in BASELINE_DETECTOR_GROUPS.items()}
    groups.update({label: f"{fusion_root}.{prefix}" for label, prefix in BASELINE_FUSION_GROUPS.items()})
    return groups


def _stats_dict(stats: TimingStats) -> dict[str, Any]:
    return stats.to_dict()


def _max_diff(a, b) -> dict[str, float] | None:
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape:
        return None
    a, b = a.detach().float(), b.detach().float()
    if a.numel() == 0:
        return {"max_abs": 0.0, "max_ref": 0.0}
    return {"max_abs": float((a - b).abs().max()), "max_ref": float(b.abs().max())}


def _agree(a, b) -> float | None:
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape:
        return None
    return float((a.float().argmax(-1) == b.float().argmax(-1)).float().mean())


# --------------------------------------------------------------------------------------------------------- runner


class _Runner:
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
                   fast: tuple[str, Callable] | None = None) -> ComparisonRow:
        """MiniVLM fp32 (``a``) vs baseline (``b``), interleaved; ``fast = (label, callable)`` adds MiniVLM with
        fast paths as a third contender in the same rounds (A B C A B C ...)."""
        self.log(f"  {task}: timing {self.s.runs} interleaved rounds ...")
        callables = {"minivlm": a, "baseline": b}
        if fast is not None:
            callables["minivlm_fast"] = fast[1]
        timing = self.compare(callables)
        flops_a = flops_b = None
        per_module = {}
        if self.s.flops:
            if groups:
                flops_a, per_module["minivlm"] = _flops_by_module(a, groups[0])
                flops_b, per_module["baseline"] = _flops_by_module(b, groups[1])
            else:
                flops_a, flops_b = _total_flops(a), _total_flops(b)
        row = ComparisonRow(task=task, minivlm=timing["minivlm"], baseline=timing["baseline"],
                            minivlm_flops=flops_a, baseline_flops=flops_b)
        entry = {"key": key, **row.to_dict(self.gflops_used.get("float32"))}
        if per_module:
            entry["flops_per_module"] = per_module
        if fast is not None:
            stats = timing["minivlm_fast"]
            entry["minivlm_fast"] = {"variant": fast[0], **_stats_dict(stats),
                                     "time_ratio": stats.median / timing["baseline"].median}
        self.result["rows"].append(entry)
        self.log(f"    MiniVLM {_fmt_stats(row.minivlm)} vs baseline {_fmt_stats(row.baseline)}: "
                 f"ratio {row.time_ratio:.4f}"
                 + (f"; MiniVLM {fast[0]} {_fmt_stats(timing['minivlm_fast'])}: ratio "
                    f"{entry['minivlm_fast']['time_ratio']:.4f}" if fast else ""))
        return row

    def part_extractor(self):
        from ..fast import optimize_for_inference

        m, b = self.minivlm, self.baseline
        tee_groups = {k.replace("TEE ", ""): v.replace("MiniVLMForQuestionAnswering.minivlm.vision_model", "TEEModel")
                      for k, v in _flop_groups_minivlm().items() if k.startswith("TEE")}
        det_groups = {k: v for k, v in _flop_groups_baseline().items() if v.startswith("BaselineRegionExtractor")}
        s = self.scale
        self.comparison(
            "extraction",
            f"region extraction: TEE {s.image_size}×{s.image_size} vs R101-FPN {s.baseline_image[0]}×"
            f"{s.baseline_image[1]}",
            m.extraction(), b.extraction(), groups=(tee_groups, det_groups),
            fast=(FAST_TEE_LABEL, m.extraction(optimize_for_inference(m.tee))),
        )

    def part_vqa(self):
        from ..fast import optimize_for_inference

        m, b = self.minivlm, self.baseline
        self.comparison("image_to_vqa", "image → VQA answer (end to end)", m.vqa_call(), b.vqa_call(),
                        groups=(_flop_groups_minivlm(), _flop_groups_baseline()),
                        fast=(FAST_VQA_LABEL, m.vqa_call(optimize_for_inference(m.vqa, int8=True))))

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
            flops = {"use_cache=True": _total_flops(cached_fn), "use_cache=False": _total_flops(uncached_fn)}
        speedup = timing["use_cache=False"].median / timing["use_cache=True"].median
        self.result["decoder"] = {
            "tokens": self.scale.caption_tokens,
            "timing": {k: _stats_dict(v) for k, v in timing.items()},
            "speedup": speedup,
            "identical_tokens": identical,
            "tokens_cached": tokens_cached.tolist(),
            "flops": flops,
        }
        self.log(f"    cached {_fmt_stats(timing['use_cache=True'])}, uncached {_fmt_stats(timing['use_cache=False'])}:"
                 f" {speedup:.2f}× faster, identical tokens: {identical}")
        if "fast" in self.s.parts:
            # The same comparison on the bf16 captioner (for information; the target is about fp32).
            from ..fast import optimize_for_inference

            bf16 = optimize_for_inference(m.captioner, bf16=True)
            cached_fn = m.caption_from_regions(regions, use_cache=True, model=bf16)
            uncached_fn = m.caption_from_regions(regions, use_cache=False, model=bf16)
            with torch.inference_mode():
                a, b = cached_fn(), uncached_fn()
            self.log("  decoder, bf16 captioner ...")
            timing = self.compare({"use_cache=True": cached_fn, "use_cache=False": uncached_fn})
            self.result["decoder"]["bf16"] = {
                "timing": {k: _stats_dict(v) for k, v in timing.items()},
                "speedup": timing["use_cache=False"].median / timing["use_cache=True"].median,
                "identical_tokens": bool(a.shape == b.shape and torch.equal(a, b)),
                "speedup_vs_fp32_cached": self.result["decoder"]["timing"]["use_cache=True"]["median_s"]
                / timing["use_cache=True"].median,
            }

    # fast paths -------------------------------------------------------------------------------------------------
    def _fast_group(self, group: str, variants: dict[str, Callable], flops: int | None, reference: str = "fp32",
                    outputs: dict[str, Any] | None = None, bf16_flops: dict[str, int | None] | None = None,
                    compile_times: dict[str, float] | None = None, runs: int | None = None,
                    logits: bool = True):
        """Time ``variants`` interleaved. ``bf16_flops[name]``: how many of the ``flops`` that variant runs in
        bfloat16 (its own lower bound counts those at the bf16 matmul rate, the rest at the fp32 rate)."""
        self.log(f"  fast paths — {group}: {', '.join(variants)} ...")
        timing = self.compare(variants, runs=runs)
        ref = timing[reference].median
        for name, stats in timing.items():
            in_bf16 = min((bf16_flops or {}).get(name) or 0, flops or 0)
            arithmetic = "float32" if not in_bf16 else ("bfloat16" if in_bf16 == flops else "mixed fp32/bf16")
            entry = {
                "group": group, "variant": name, "timing": _stats_dict(stats), "speedup_vs_fp32": ref / stats.median,
                "flops": flops, "flops_bf16": in_bf16, "arithmetic": arithmetic,
            }
            _set_lower_bounds(entry, self.gflops_used)
            if outputs and name in outputs and reference in outputs and name != reference:
                entry["parity"] = {"max_diff": _max_diff(outputs[name], outputs[reference])}
                if logits:
                    entry["parity"]["argmax_agreement"] = _agree(outputs[name], outputs[reference])
            if compile_times and name in compile_times:
                entry["compile_s"] = compile_times[name]
            self.result["fast"].append(entry)
            self.log(f"    {name}: {_fmt_stats(stats)} ({ref / stats.median:.2f}× vs fp32)")

    def _compiled_first_call(self, fn: Callable) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        return time.perf_counter() - start

    def part_fast(self):
        from ..fast import optimize_for_inference

        m = self.minivlm
        compile_times: dict[str, float] = {}
        # --- TEE ------------------------------------------------------------------------------------------------
        tee = m.tee
        variants = {
            "fp32": tee,
            "fused BN": optimize_for_inference(tee, channels_last=False),
            "fused BN + channels_last": optimize_for_inference(tee),
            "fused BN + channels_last + bf16": optimize_for_inference(tee, bf16_vision=True),
        }
        if self.s.compile:
            compiled = optimize_for_inference(tee, compile=True)
            compile_times["fused BN + channels_last + compile"] = self._compiled_first_call(m.extraction(compiled))
            variants["fused BN + channels_last + compile"] = compiled
        calls = {k: m.extraction(v) for k, v in variants.items()}
        with torch.inference_mode():
            outputs = {k: fn() for k, fn in calls.items()}
        dense, tee_flops = _tee_flop_split(calls["fp32"]) if self.s.flops else (None, None)
        self._fast_group("TEE region extraction", calls, tee_flops, outputs=outputs,
                         bf16_flops={"fused BN + channels_last + bf16": dense}, compile_times=compile_times,
                         logits=False)
        # --- fusion from regions ---------------------------------------------------------------------------------
        with torch.inference_mode():
            regions = m.regions(m.vqa, m.pixel_values, m.pixel_mask)
        fusion_variants = {
            "fp32": m.vqa,
            "fp32 + fused QKV": optimize_for_inference(m.vqa),
            "int8": optimize_for_inference(m.vqa, int8=True),
            "bf16": optimize_for_inference(m.vqa, bf16=True),
        }
        if self.s.compile:
            compiled = optimize_for_inference(m.vqa, compile=True, compile_vision=False, compile_fusion=True)
            compile_times["compile"] = self._compiled_first_call(m.vqa_from_regions(regions, compiled))
            fusion_variants["compile"] = compiled
        calls = {k: m.vqa_from_regions(regions, v) for k, v in fusion_variants.items()}
        with torch.inference_mode():
            outputs = {k: fn() for k, fn in calls.items()}
        flops = _total_flops(calls["fp32"]) if self.s.flops else None
        self._fast_group("fusion + VQA head from regions", calls, flops, outputs=outputs, bf16_flops={"bf16": flops},
                         compile_times=compile_times)
        # --- image → answer ----------------------------------------------------------------------------------------
        e2e = {
            "fp32": m.vqa,
            FAST_INT8: optimize_for_inference(m.vqa, int8=True),
            FAST_MIXED: optimize_for_inference(m.vqa, int8=True, bf16_vision=True),
            FAST_BF16: optimize_for_inference(m.vqa, bf16=True, bf16_vision=True),
        }
        if self.s.compile:
            compiled = optimize_for_inference(m.vqa, int8=True, compile=True)
            name = "fast int8 + compiled TEE"
            compile_times[name] = self._compiled_first_call(m.vqa_call(compiled))
            e2e[name] = compiled
        self._fast_models = e2e
        calls = {k: m.vqa_call(v) for k, v in e2e.items()}
        with torch.inference_mode():
            outputs = {k: fn() for k, fn in calls.items()}
        flops = _total_flops(calls["fp32"]) if self.s.flops else None
        tee_rest = (tee_flops - dense) if self.s.flops else 0
        self._fast_group("image → VQA answer", calls, flops, outputs=outputs,
                         bf16_flops={FAST_MIXED: dense, FAST_BF16: flops and flops - tee_rest},
                         compile_times=compile_times)
        # --- image → caption ---------------------------------------------------------------------------------------
        captioners = {
            "fp32": m.captioner,
            "fast int8": optimize_for_inference(m.captioner, int8=True),
            "fast bf16": optimize_for_inference(m.captioner, bf16=True, bf16_vision=True),
        }
        calls = {k: m.caption_call(1, v) for k, v in captioners.items()}
        with torch.inference_mode():
            outputs = {k: fn() for k, fn in calls.items()}
        flops = _total_flops(calls["fp32"]) if self.s.flops else None
        self._fast_group(f"image → {self.scale.caption_tokens}-token caption, greedy", calls, flops,
                         bf16_flops={"fast bf16": flops and flops - tee_rest})
        for entry in self.result["fast"]:
            if entry["group"].startswith("image →") and "caption" in entry["group"] and entry["variant"] in outputs:
                ref = outputs["fp32"]
                out = outputs[entry["variant"]]
                entry["parity"] = {"identical_tokens": bool(out.shape == ref.shape and torch.equal(out, ref)),
                                   "token_agreement": float((out == ref).float().mean()) if out.shape == ref.shape
                                   else None}
        if compile_times:
            self.result["compile_s"] = compile_times

    def part_batch(self):
        from ..fast import optimize_for_inference

        m = self.minivlm
        sizes = self.s.batch_sizes or self.scale.batch_sizes
        fast_tee = optimize_for_inference(m.tee)
        fast_vqa = getattr(self, "_fast_models", {}).get(
            FAST_INT8) or optimize_for_inference(m.vqa, int8=True)
        for batch in sizes:
            for task, variants in (
                ("region extraction", {"fp32": m.extraction(m.tee, batch), "fast": m.extraction(fast_tee, batch)}),
                ("image → VQA answer", {"fp32": m.vqa_call(m.vqa, batch), "fast int8": m.vqa_call(fast_vqa, batch)}),
            ):
                self.log(f"  batch {batch}, {task} ...")
                timing = self.compare(variants, runs=self.s.batch_runs)
                for name, stats in timing.items():
                    self.result["batch"].append({"task": task, "variant": name, "batch": batch,
                                                 "timing": _stats_dict(stats), "images_per_s": batch / stats.median})
                    self.log(f"    {name}: {batch / stats.median:.2f} images/s ({_fmt_stats(stats)} per batch)")
            self.save()

    def part_onnx(self):
        from ..export.onnx import FUSION_VQA, TEE_BOX_HEAD, TEE_DENSE, OnnxTEE, OnnxVQA, export_onnx

        m = self.minivlm
        threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory(prefix="minivlm-onnx-") as tmp:
            self.log("  ONNX export (TorchScript exporter) + verification ...")
            start = time.perf_counter()
            result = export_onnx(m.vqa, tmp, opset=self.s.opset, threads=threads)
            export_s = time.perf_counter() - start
            ort_tee = OnnxTEE(m.tee, Path(tmp) / TEE_DENSE, Path(tmp) / TEE_BOX_HEAD, threads=threads)
            ort_vqa = OnnxVQA(Path(tmp) / FUSION_VQA, threads=threads)
            sizes = {name: os.path.getsize(Path(tmp) / name) for name in (TEE_DENSE, TEE_BOX_HEAD, FUSION_VQA)}
            with torch.inference_mode():
                regions = m.regions(m.vqa, m.pixel_values, m.pixel_mask)
            graph_inputs = {**m.question, **regions}

            def ort_extraction():
                return ort_tee(m.pixel_values, m.pixel_mask)["region_features"]

            def ort_fusion():
                return ort_vqa(**graph_inputs)

            def ort_image_to_answer():
                r = ort_tee(m.pixel_values, m.pixel_mask)
                limit = m.config.max_regions
                r = {k: v[:, :limit] for k, v in r.items()}
                tag_ids, tag_mask, tag_regions = m.vqa.minivlm.tags_from_regions(
                    r["region_labels"], r["region_scores"], r["region_mask"],
                    r["attribute_logits"].float().sigmoid(), return_region_index=True,
                    region_boxes=r["region_boxes"],
                )
                return ort_vqa(**m.question, tag_ids=tag_ids, tag_attention_mask=tag_mask, tag_region_index=tag_regions,
                               region_features=r["region_features"], region_boxes=r["region_boxes"],
                               region_mask=r["region_mask"].bool())

            groups = {
                "TEE region extraction": {"PyTorch fp32": m.extraction(), "ONNX Runtime": ort_extraction},
                "fusion + VQA head from regions": {"PyTorch fp32": m.vqa_from_regions(regions),
                                                   "ONNX Runtime": ort_fusion},
                "image → VQA answer": {"PyTorch fp32": m.vqa_call(), "ONNX Runtime": ort_image_to_answer},
            }
            rows = []
            for group, calls in groups.items():
                with torch.inference_mode():
                    outs = {k: fn() for k, fn in calls.items()}
                self.log(f"  ONNX Runtime vs PyTorch — {group} ...")
                timing = self.compare(calls)
                pt, ort_stats = timing["PyTorch fp32"], timing["ONNX Runtime"]
                rows.append({"group": group, "pytorch": _stats_dict(pt), "onnxruntime": _stats_dict(ort_stats),
                             "speedup": pt.median / ort_stats.median,
                             "max_diff": _max_diff(outs["ONNX Runtime"], outs["PyTorch fp32"])})
                self.log(f"    PyTorch {_fmt_stats(pt)}, ORT {_fmt_stats(ort_stats)}")
        import onnxruntime

        self.result["onnx"] = {
            "opset": self.s.opset, "export_s": export_s, "verification_passed": result.passed,
            "verification": result.verification, "file_bytes": sizes, "rows": rows,
            "onnxruntime": onnxruntime.__version__, "threads": threads,
        }

    def part_parity(self):
        from .parity import run_parity

        self.log(f"  parity on the scenes test split of {self.s.model_dir} ...")
        self.result["parity"] = run_parity(self.s.model_dir, limit=self.s.parity_limit, log=self.log)

    # static facts -----------------------------------------------------------------------------------------------
    def params(self):
        m, b = self.minivlm, self.baseline
        minivlm = _param_groups(m.vqa, MINIVLM_PARAM_GROUPS)
        baseline = _param_groups(b.extractor, BASELINE_DETECTOR_GROUPS)
        fusion = _param_groups(b.vqa, BASELINE_FUSION_GROUPS)
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


def _set_lower_bounds(entry: dict[str, Any], rates: dict[str, float]) -> None:
    """Lower bounds of a fast-path entry: all FLOPs at the fp32 rate, all at the bf16 rate, and its own (the FLOPs
    it runs in bf16 at the bf16 rate, the rest, int8 included, at the fp32 rate)."""
    flops, in_bf16 = entry.get("flops"), entry.get("flops_bf16") or 0
    entry["lower_bound_fp32_s"] = lower_bound_seconds(flops, rates.get("float32"))
    entry["lower_bound_bf16_s"] = lower_bound_seconds(flops, rates.get("bfloat16"))
    own = None
    if flops and rates.get("float32") and (not in_bf16 or rates.get("bfloat16")):
        own = (flops - in_bf16) / (rates["float32"] * 1e9) + (in_bf16 / (rates["bfloat16"] * 1e9) if in_bf16 else 0)
    entry["lower_bound_own_s"] = own
    entry["measured_over_lower_bound"] = entry["timing"]["median_s"] / own if own else None


def _tee_flop_split(fn: Callable[[], Any]) -> tuple[int, int]:
    """(FLOPs of the TEE's dense part = EfficientNet + BiFPN, FLOPs of the whole TEE) of a call of a bare TEE."""
    total, per = _flops_by_module(fn, {"backbone": "TEEModel.backbone", "bifpn": "TEEModel.bifpn"})
    return per.get("backbone", 0) + per.get("bifpn", 0), total


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
                if any(p in parts for p in ("extractor", "vqa", "caption", "retrieval")):
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
        _set_lower_bounds(f, runner.gflops_used)

