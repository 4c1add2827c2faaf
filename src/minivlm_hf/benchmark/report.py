"""Rows and JSON of the MiniVLM-vs-baseline comparison (the markdown is :mod:`.summary`).

A row compares one task (feature extraction, captioning, VQA, ...) for the two models: median wall
time with its (min–max) range, the time ratio MiniVLM / baseline, each side's FLOPs, and each side's
*FLOP lower bound*: FLOPs divided by the matmul GFLOP/s this machine achieved (see
:func:`minivlm_hf.benchmark.machine.measure_matmul_gflops`). ``measured / lower bound`` says how far
a model is from running at matmul speed: near 1 it is compute-bound and well-fed; much larger
means time goes to memory traffic, small or element-wise ops, Python overhead or ops that the FLOP
counter ignores (NMS, RoIAlign).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .timing import TimingStats, ratio

__all__ = ["ComparisonRow", "format_count", "lower_bound_seconds", "to_json"]


def lower_bound_seconds(flops: int | float | None, gflops_per_s: float | None) -> float | None:
    """Time the FLOPs would take at ``gflops_per_s`` (None when either is unknown or zero)."""
    if not flops or not gflops_per_s:
        return None
    return float(flops) / (gflops_per_s * 1e9)


def format_count(n: float | int | None, unit: str = "") -> str:
    """``1234567 -> "1.23M"``; ``None -> "n/a"``."""
    if n is None:
        return "n/a"
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


@dataclass
class ComparisonRow:
    """One task: the two sides' timings and (optional) FLOP counts."""

    task: str
    minivlm: TimingStats
    baseline: TimingStats
    minivlm_flops: int | None = None
    baseline_flops: int | None = None

    @property
    def time_ratio(self) -> float:
        return ratio(self.minivlm, self.baseline)

    @property
    def flops_ratio(self) -> float | None:
        if not self.minivlm_flops or not self.baseline_flops:
            return None
        return self.minivlm_flops / self.baseline_flops

    def to_dict(self, gflops_per_s: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task,
            "minivlm": self.minivlm.to_dict(),
            "baseline": self.baseline.to_dict(),
            "time_ratio": self.time_ratio,
            "minivlm_flops": self.minivlm_flops,
            "baseline_flops": self.baseline_flops,
            "flops_ratio": self.flops_ratio,
        }
        for side, stats, flops in (
            ("minivlm", self.minivlm, self.minivlm_flops),
            ("baseline", self.baseline, self.baseline_flops),
        ):
            lb = lower_bound_seconds(flops, gflops_per_s)
            out[f"{side}_lower_bound_s"] = lb
            out[f"{side}_measured_over_lower_bound"] = stats.median / lb if lb else None
        return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, TimingStats):
        return _jsonable(obj.to_dict())
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def to_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` (dicts, lists, TimingStats, reports, ...) as indented JSON; NaN becomes null."""
    from ..io.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2) + "\n")  # never half a file
    return path
