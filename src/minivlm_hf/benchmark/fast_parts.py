"""The fast-path parts of the benchmark (``fast``, ``batch``, ``onnx``), mixed into its runner: MiniVLM's
``minivlm_hf.fast`` paths against fp32 (TEE BN folding + channels_last / bf16 / compile, int8 / calibrated int8 /
bf16 fusion, image → answer and image → caption), batched throughput, and ONNX Runtime against PyTorch."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .accounting import (
    argmax_agreement,
    max_diff,
    set_lower_bounds,
    tee_flop_split,
    total_flops,
)
from .parity import INT8_SCALED_CHANNELS
from .summary import format_stats

FAST_INT8 = "fast int8 (TEE fused BN + channels_last, fusion int8)"
FAST_MIXED = "fast mixed (TEE fused BN + channels_last + bf16, fusion int8)"
FAST_BF16 = "fast bf16 (TEE fused BN + channels_last + bf16, fusion bf16)"


if TYPE_CHECKING:
    from .pipelines import MiniVLMSide, Scale
    from .suite import BenchmarkSettings
    from .timing import TimingStats


class FastPathParts:
    """``part_fast``, ``part_batch`` and ``part_onnx`` of the benchmark runner (``suite._Runner``), which sets the
    attributes and implements the methods declared here."""

    s: BenchmarkSettings
    scale: Scale
    result: dict[str, Any]  # the JSON result; these parts append to result["fast"] and result["batch"]
    gflops_used: dict[str, float]  # achieved matmul GFLOP/s per dtype, for the lower bounds
    log: Callable[[str], None]
    minivlm: MiniVLMSide
    # the image → answer fast-path models built by part_fast, reused by part_batch (None: part_fast did not run)
    _fast_models: dict[str, Any] | None = None

    # provided by the runner: interleaved timing of named callables, and writing the JSON result so far
    compare: Callable[..., dict[str, TimingStats]]
    save: Callable[[], None]

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
                "group": group, "variant": name, "timing": stats.to_dict(), "speedup_vs_fp32": ref / stats.median,
                "flops": flops, "flops_bf16": in_bf16, "arithmetic": arithmetic,
            }
            set_lower_bounds(entry, self.gflops_used)
            if outputs and name in outputs and reference in outputs and name != reference:
                entry["parity"] = {"max_diff": max_diff(outputs[name], outputs[reference])}
                if logits:
                    entry["parity"]["argmax_agreement"] = argmax_agreement(outputs[name], outputs[reference])
            if compile_times and name in compile_times:
                entry["compile_s"] = compile_times[name]
            self.result["fast"].append(entry)
            self.log(f"    {name}: {format_stats(stats)} ({ref / stats.median:.2f}× vs fp32)")

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
        dense, tee_flops = tee_flop_split(calls["fp32"]) if self.s.flops else (None, None)
        self._fast_group("TEE region extraction", calls, tee_flops, outputs=outputs,
                         bf16_flops={"fused BN + channels_last + bf16": dense}, compile_times=compile_times,
                         logits=False)
        # --- fusion from regions ---------------------------------------------------------------------------------
        with torch.inference_mode():
            regions = m.regions(m.vqa, m.pixel_values, m.pixel_mask)
        calibration = {**m.question, **regions}  # random weights: only the speed of the calibrated variants matters
        fusion_variants = {
            "fp32": m.vqa,
            "fp32 + fused QKV": optimize_for_inference(m.vqa),
            "int8": optimize_for_inference(m.vqa, int8=True),
            INT8_SCALED_CHANNELS: optimize_for_inference(m.vqa, int8=True, int8_calibration=calibration),
            "bf16": optimize_for_inference(m.vqa, bf16=True),
        }
        calls = {k: m.vqa_from_regions(regions, v) for k, v in fusion_variants.items()}
        with torch.inference_mode():
            outputs = {k: fn() for k, fn in calls.items()}
        flops = total_flops(calls["fp32"]) if self.s.flops else None
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
        flops = total_flops(calls["fp32"]) if self.s.flops else None
        tee_rest = (tee_flops - dense) if self.s.flops else 0
        self._fast_group("image → VQA answer", calls, flops, outputs=outputs,
                         bf16_flops={FAST_MIXED: dense, FAST_BF16: flops and flops - tee_rest},
                         compile_times=compile_times)
        # --- image → caption ---------------------------------------------------------------------------------------
        captioners = {
            "fp32": m.captioner,
            "fast fp32": optimize_for_inference(m.captioner),
            "fast int8": optimize_for_inference(m.captioner, int8=True),
            "fast bf16": optimize_for_inference(m.captioner, bf16=True, bf16_vision=True),
        }
        calls = {k: m.caption_call(1, v) for k, v in captioners.items()}
        with torch.inference_mode():
            outputs = {k: fn() for k, fn in calls.items()}
        flops = total_flops(calls["fp32"]) if self.s.flops else None
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
        fast_vqa = (self._fast_models or {}).get(FAST_INT8) or optimize_for_inference(m.vqa, int8=True)
        for batch in sizes:
            for task, variants in (
                ("region extraction", {"fp32": m.extraction(m.tee, batch), "fast": m.extraction(fast_tee, batch)}),
                ("image → VQA answer", {"fp32": m.vqa_call(m.vqa, batch), "fast int8": m.vqa_call(fast_vqa, batch)}),
            ):
                self.log(f"  batch {batch}, {task} ...")
                timing = self.compare(variants, runs=self.s.batch_runs)
                for name, stats in timing.items():
                    self.result["batch"].append({"task": task, "variant": name, "batch": batch,
                                                 "timing": stats.to_dict(), "images_per_s": batch / stats.median})
                    self.log(f"    {name}: {batch / stats.median:.2f} images/s ({format_stats(stats)} per batch)")
            self.save()

    def part_onnx(self):
        from ..export.onnx import (
            FUSION_VQA,
            TEE_BOX_HEAD,
            TEE_DENSE,
            OnnxTEE,
            OnnxVQA,
            export_onnx,
        )

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
                tag_ids, tag_mask = m.vqa.minivlm.tags_from_regions(
                    r["region_labels"], r["region_scores"], r["region_mask"],
                    r["attribute_logits"].float().sigmoid(), region_boxes=r["region_boxes"],
                )
                return ort_vqa(**m.question, tag_ids=tag_ids, tag_attention_mask=tag_mask,
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
                rows.append({"group": group, "pytorch": pt.to_dict(), "onnxruntime": ort_stats.to_dict(),
                             "speedup": pt.median / ort_stats.median,
                             "max_diff": max_diff(outs["ONNX Runtime"], outs["PyTorch fp32"])})
                self.log(f"    PyTorch {format_stats(pt)}, ORT {format_stats(ort_stats)}")
        import onnxruntime

        self.result["onnx"] = {
            "opset": self.s.opset, "export_s": export_s, "verification_passed": result.passed,
            "verification": result.verification, "file_bytes": sizes, "rows": rows,
            "onnxruntime": onnxruntime.__version__, "threads": threads,
        }
