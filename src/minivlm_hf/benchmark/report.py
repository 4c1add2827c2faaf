"""Markdown and JSON reports of a MiniVLM-vs-baseline comparison.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .flops import format_count
from .timing import TimingStats, ratio, thread_info

__all__ = [
    "BenchmarkReport",
    "ComparisonRow",
    "format_comparison_table",
    "format_parameter_table",
    "lower_bound_seconds",
    "to_json",
]


def lower_bound_seconds(flops: int | float | None, gflops_per_s: float | None) -> float | None:
    """Time the FLOPs would take at ``gflops_per_s`` (None when either is unknown or zero)."""
    if not flops or not gflops_per_s:
        return None
    return float(flops) / (gflops_per_s * 1e9)


def _fmt_ratio(r: float | None) -> str:
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "n/a"
    return f"{r:.3f} ({(1.0 - r) * 100:.0f}% less)" if r <= 1 else f"{r:.3f} ({(r - 1.0) * 100:.0f}% more)"


def _fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _fmt_x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}×"


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


def format_comparison_table(
    rows: Sequence[ComparisonRow],
    gflops_per_s: float | None = None,
    labels: tuple[str, str] = ("MiniVLM", "Baseline"),
) -> str:
    """Markdown table, one line per row (see module doc for the columns)."""
    a, b = labels
    header = [
        "Task",
        f"{a} median (min–max)",
        f"{b} median (min–max)",
        f"Time ratio {a}/{b}",
        f"{a} FLOPs",
        f"{b} FLOPs",
        f"{a} FLOP lower bound",
        f"{a} measured/LB",
        f"{b} FLOP lower bound",
        f"{b} measured/LB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        d = row.to_dict(gflops_per_s)
        cells = [
            row.task,
            row.minivlm.format(),
            row.baseline.format(),
            _fmt_ratio(row.time_ratio),
            format_count(row.minivlm_flops),
            format_count(row.baseline_flops),
            _fmt_ms(d["minivlm_lower_bound_s"]),
            _fmt_x(d["minivlm_measured_over_lower_bound"]),
            _fmt_ms(d["baseline_lower_bound_s"]),
            _fmt_x(d["baseline_measured_over_lower_bound"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_parameter_table(
    params: Mapping[str, Mapping[str, int]],
) -> str:
    """Markdown table of per-module parameter counts: ``{model_label: {module: count, "total": n}}``.

    Each model gets its own block of rows (module, count, share of that model's total); a final
    line gives the totals and, for two models, the ratio first / second.
    """
    lines = ["| Model | Module | Parameters | Share |", "|---|---|---|---|"]
    totals = {}
    for label, counts in params.items():
        total = counts.get("total", sum(v for k, v in counts.items() if k != "total"))
        totals[label] = total
        for name, n in counts.items():
            if name == "total":
                continue
            share = f"{100 * n / total:.1f}%" if total else "n/a"
            lines.append(f"| {label} | {name} | {n:,} ({format_count(n)}) | {share} |")
        lines.append(f"| {label} | **total** | **{total:,} ({format_count(total)})** | 100% |")
    if len(totals) == 2:
        (la, ta), (lb, tb) = totals.items()
        lines.append(f"\nParameter ratio {la}/{lb}: {_fmt_ratio(ta / tb if tb else None)}")
    return "\n".join(lines)


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


@dataclass
class BenchmarkReport:
    """Rows, parameter counts, machine facts and the machine's matmul GFLOP/s, as markdown or JSON.

    ``gflops`` maps dtype names to GFLOP/s (``{"float32": ..., "bfloat16": ...}``); the lower bounds
    use ``gflops[bound_dtype]``.
    """

    title: str = "MiniVLM vs baseline"
    rows: list[ComparisonRow] = field(default_factory=list)
    params: dict[str, dict[str, int]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    gflops: dict[str, float] = field(default_factory=dict)
    bound_dtype: str = "float32"
    threads: int | None = None
    labels: tuple[str, str] = ("MiniVLM", "Baseline")
    notes: list[str] = field(default_factory=list)

    @property
    def gflops_per_s(self) -> float | None:
        return self.gflops.get(self.bound_dtype)

    def add_row(self, row: ComparisonRow) -> ComparisonRow:
        self.rows.append(row)
        return row

    def to_markdown(self) -> str:
        parts = [f"## {self.title}", ""]
        facts = []
        if self.machine:
            m = self.machine
            facts.append(
                f"CPU: {m.get('cpu_model', '?')} ({m.get('usable_cpus', '?')} usable cores), "
                f"torch {m.get('torch', '?')}, load average {m.get('load_average')}"
            )
        facts.append(thread_info() if self.threads is None else f"torch threads: {self.threads}")
        if self.gflops:
            facts.append(
                "matmul throughput: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in self.gflops.items())
                + f" (lower bounds use {self.bound_dtype})"
            )
        parts += [f"- {f}" for f in facts] + [""]
        if self.rows:
            parts += [format_comparison_table(self.rows, self.gflops_per_s, self.labels), ""]
        if self.params:
            parts += ["### Parameters", "", format_parameter_table(self.params), ""]
        if self.notes:
            parts += ["### Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "labels": list(self.labels),
            "threads": self.threads,
            "machine": self.machine,
            "gflops": self.gflops,
            "bound_dtype": self.bound_dtype,
            "rows": [row.to_dict(self.gflops_per_s) for row in self.rows],
            "params": self.params,
            "notes": self.notes,
        }

    def to_json(self, path: str | Path) -> Path:
        return to_json(self.to_dict(), path)
