"""The ``best`` part of the benchmark, mixed into its runner: each side with its best CPU settings, best vs best.

The ratios of the comparison rows are plain fp32 against plain fp32. Here both sides also run with the CPU settings
that suit them, all in the same interleaved rounds, and each task's ratio is MiniVLM's fastest variant over the
baseline's fastest (random weights, batch 1):

- MiniVLM: fp32; ``optimize_for_inference`` (TEE batch norms folded + channels_last, fused QKV); the same with the
  fusion Linears in int8 (``int8=True``); the same with the TEE and the fusion transformer in bfloat16
  (``bf16=True, bf16_vision=True``); the TEE in bfloat16 with the fusion Linears in int8 (``int8=True,
  bf16_vision=True``).
- Baseline: fp32; the R101 Faster R-CNN on channels_last weights under bf16 autocast with the BERT-base-shaped
  fusion in bfloat16; the R101 on channels_last weights in fp32 with the fusion Linears in int8; the R101 under bf16
  autocast with the fusion Linears in int8.

Tasks: image → answer, image → greedy caption and image → beam caption (the scale's token and beam counts). bf16 is
only offered where the CPU has bf16 matmul instructions (elsewhere it is emulated and slow).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .machine import machine_info
from .summary import format_stats

if TYPE_CHECKING:
    from .pipelines import BaselineSide, MiniVLMSide, Scale
    from .suite import BenchmarkSettings
    from .timing import TimingStats

MINIVLM_FAST_FP32 = "fast fp32 (TEE fused BN + channels_last, fused QKV)"
MINIVLM_FAST_INT8 = "fast int8 (TEE fused BN + channels_last, fusion int8)"
MINIVLM_FAST_BF16 = "fast bf16 (TEE fused BN + channels_last + bf16, fusion bf16)"
MINIVLM_FAST_BF16_INT8 = "fast bf16 TEE + int8 fusion (TEE fused BN + channels_last + bf16, fusion int8)"
BASELINE_BF16 = "R101 channels_last + bf16 autocast, fusion bf16"
BASELINE_INT8 = "R101 channels_last, fusion int8"
BASELINE_BF16_INT8 = "R101 channels_last + bf16 autocast, fusion int8"


def _channels_last_extractor(extractor: torch.nn.Module) -> torch.nn.Module:
    """A copy of the baseline's region extractor whose detector weights are channels_last (its convolutions then
    produce NHWC activations, oneDNN's fast layout on CPU)."""
    fast = copy.deepcopy(extractor)
    fast.detector.to(memory_format=torch.channels_last)
    return fast


class BestPathPart:
    """``part_best`` of the benchmark runner (``suite._Runner``), which sets the attributes declared here."""

    s: BenchmarkSettings
    scale: Scale
    result: dict[str, Any]
    log: Callable[[str], None]
    minivlm: MiniVLMSide
    baseline: BaselineSide
    compare: Callable[..., dict[str, TimingStats]]

    def part_best(self):
        from ..fast import optimize_for_inference

        m, b = self.minivlm, self.baseline
        bf16 = bool(machine_info().get("bf16_hardware"))
        cl_extractor = _channels_last_extractor(b.extractor)

        def minivlm_models(model):
            models = {"fp32": model, MINIVLM_FAST_FP32: optimize_for_inference(model),
                      MINIVLM_FAST_INT8: optimize_for_inference(model, int8=True)}
            if bf16:
                models[MINIVLM_FAST_BF16] = optimize_for_inference(model, bf16=True, bf16_vision=True)
                models[MINIVLM_FAST_BF16_INT8] = optimize_for_inference(model, int8=True, bf16_vision=True)
            return models

        def baseline_models(model):
            int8_model = optimize_for_inference(model, int8=True)
            models = {"fp32": (b.extractor, model, False), BASELINE_INT8: (cl_extractor, int8_model, False)}
            if bf16:
                models[BASELINE_BF16] = (cl_extractor, optimize_for_inference(model, bf16=True), True)
                models[BASELINE_BF16_INT8] = (cl_extractor, int8_model, True)
            return models

        def baseline_call(task: Callable, extractor, model, autocast: bool) -> Callable[[], Any]:
            float_regions = autocast and not _is_bf16(model)  # int8 / fp32 fusion Linears take float32 regions

            def run():
                context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
                with context:
                    regions = b.regions(model, extractor=extractor)
                if float_regions:
                    regions = {k: v.float() if v.is_floating_point() else v for k, v in regions.items()}
                return task(model, regions)
            return run

        n, k = self.scale.caption_tokens, self.scale.num_beams
        tasks = [
            ("image → VQA answer", m.vqa, b.vqa, lambda model: m.vqa_call(model),
             lambda model, regions: model(**b.question, **regions).logits),
            (f"image → {n}-token caption, greedy", m.captioner, b.captioner, lambda model: m.caption_call(1, model),
             lambda model, regions: model.generate(input_ids=b.caption_prompt(), **regions, **b.generate_kwargs(1))),
            (f"image → {n}-token caption, {k}-beam", m.captioner, b.captioner, lambda model: m.caption_call(k, model),
             lambda model, regions: model.generate(input_ids=b.caption_prompt(), **regions, **b.generate_kwargs(k))),
        ]
        rows = []
        for task, minivlm_model, baseline_model, minivlm_call, baseline_task in tasks:
            calls = {f"minivlm: {name}": minivlm_call(model) for name, model in minivlm_models(minivlm_model).items()}
            calls.update({f"baseline: {name}": baseline_call(baseline_task, *args)
                          for name, args in baseline_models(baseline_model).items()})
            self.log(f"  best paths — {task}: {len(calls)} contenders, {self.s.runs} interleaved rounds ...")
            timing = self.compare(calls)
            row = _best_row(task, timing)
            rows.append(row)
            self.log(f"    best MiniVLM {row['minivlm_best']} {format_stats(timing['minivlm: ' + row['minivlm_best']])}"
                     f" vs best baseline {row['baseline_best']} "
                     f"{format_stats(timing['baseline: ' + row['baseline_best']])}: ratio {row['best_ratio']:.4f} "
                     f"(fp32 vs fp32 {row['fp32_ratio']:.4f})")
        self.result["best"] = {"bf16_offered": bf16, "rows": rows}


def _is_bf16(model: torch.nn.Module) -> bool:
    return any(p.dtype == torch.bfloat16 for p in model.parameters())


def _best_row(task: str, timing: dict[str, TimingStats]) -> dict[str, Any]:
    """Each side's variants (median seconds), its fastest, and the best-vs-best and fp32-vs-fp32 time ratios."""
    sides: dict[str, dict[str, float]] = {"minivlm": {}, "baseline": {}}
    for key, stats in timing.items():
        side, name = key.split(": ", 1)
        sides[side][name] = stats.median
    best = {side: min(variants, key=variants.get) for side, variants in sides.items()}
    return {
        "task": task,
        "minivlm_s": sides["minivlm"], "baseline_s": sides["baseline"],
        "minivlm_best": best["minivlm"], "baseline_best": best["baseline"],
        "best_ratio": sides["minivlm"][best["minivlm"]] / sides["baseline"][best["baseline"]],
        "fp32_ratio": sides["minivlm"]["fp32"] / sides["baseline"]["fp32"],
        "timing": {key: stats.to_dict() for key, stats in timing.items()},
    }


__all__ = ["BestPathPart", "BASELINE_BF16", "BASELINE_BF16_INT8", "BASELINE_INT8", "MINIVLM_FAST_BF16",
           "MINIVLM_FAST_BF16_INT8", "MINIVLM_FAST_FP32", "MINIVLM_FAST_INT8"]
