"""The retention table of ``minivlm-hf compare`` (the paper's Table: size, cost and accuracy, MiniVLM vs OSCAR-B)."""

from __future__ import annotations

import json
import math
from pathlib import Path

#: (key, label, unit, scale for display): the cost rows, from each side's ``costs``
COST_ROWS = (
    ("parameters", "Parameters (detector + fusion)", "M", 1e-6),
    ("flops", "FLOPs, image → answer (one image, one question)", "G", 1e-9),
    ("time_s", "Time, image → answer (median, side by side)", "ms", 1e3),
)
#: (stage, metric key, label, unit, scale): the task rows, from each side's held-out test metrics
METRIC_ROWS = (
    ("detector", "test_map_50", "Detection mAP@0.5 (each side's detector)", "", 1.0),
    ("detector", "test_map", "Detection mAP@[.5:.95]", "", 1.0),
    ("vqa", "test_accuracy", "VQA accuracy", "%", 100.0),
    ("caption", "test_cider", "Caption CIDEr-D", "", 1.0),
    ("retrieval", "test_i2t_r1", "Image→text R@1", "%", 100.0),
    ("retrieval", "test_t2i_r1", "Text→image R@1", "%", 100.0),
    ("nlvr", "test_accuracy", "NLVR accuracy", "%", 100.0),
)


def ratio(a, b) -> float | None:
    """``a / b``; None when either is missing or ``b`` is 0."""
    if a is None or b is None or not b or any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
        return None
    return float(a) / float(b)


def table_rows(minivlm: dict, oscar_b: dict) -> list[dict]:
    """One row per cost and per task metric: both sides' values and MiniVLM ÷ OSCAR-B (for a task metric: the
    accuracy MiniVLM retains). ``minivlm`` / ``oscar_b``: ``{"costs": {...}, "metrics": {stage: {...}}}``."""
    rows = []
    for key, label, unit, scale in COST_ROWS:
        a, b = minivlm["costs"].get(key), oscar_b["costs"].get(key)
        rows.append({"kind": "cost", "key": key, "label": label, "unit": unit, "scale": scale,
                     "minivlm": a, "oscar_b": b, "ratio": ratio(a, b)})
    for stage, key, label, unit, scale in METRIC_ROWS:
        a = minivlm["metrics"].get(stage, {}).get(key)
        b = oscar_b["metrics"].get(stage, {}).get(key)
        rows.append({"kind": "metric", "key": f"{stage}.{key}", "label": label, "unit": unit, "scale": scale,
                     "minivlm": a, "oscar_b": b, "ratio": ratio(a, b)})
    return rows


def _value(value, unit: str, scale: float) -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value * scale:.1f}%"
    if unit in ("M", "G"):
        return f"{value * scale:,.1f} {unit}"
    if unit == "ms":
        return f"{value * scale:,.0f} ms"
    return f"{value * scale:.3f}"


def markdown(rows: list[dict], settings: dict, notes: list[str], title: str, timings: dict | None = None) -> str:
    lines = [f"# {title}", "", "| | MiniVLM | OSCAR-B | MiniVLM ÷ OSCAR-B |", "|---|---|---|---|"]
    for row in rows:
        r = row["ratio"]
        ratio_text = "n/a" if r is None else f"{r * 100:.1f}%"
        lines.append(f"| {row['label']} | {_value(row['minivlm'], row['unit'], row['scale'])} | "
                     f"{_value(row['oscar_b'], row['unit'], row['scale'])} | {ratio_text} |")
    lines += ["", "For the task metrics, MiniVLM ÷ OSCAR-B is the accuracy MiniVLM retains (the paper's "
              "retention); for the costs, MiniVLM's share of OSCAR-B's.", "", "## Settings", ""]
    lines += [f"- **{key}**: {value}" for key, value in settings.items()]
    if timings:
        lines += ["", "## Time per part (wall clock, this run)", "", "| Part | Seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def plain_text(rows: list[dict]) -> str:
    """The table for the terminal."""
    out = [f"{'':<50} {'MiniVLM':>12} {'OSCAR-B':>12} {'ratio':>8}"]
    for row in rows:
        r = row["ratio"]
        out.append(f"{row['label']:<50} {_value(row['minivlm'], row['unit'], row['scale']):>12} "
                   f"{_value(row['oscar_b'], row['unit'], row['scale']):>12} "
                   f"{'n/a' if r is None else f'{r * 100:.1f}%':>8}")
    return "\n".join(out)


def write_tables(output_dir: Path, rows: list[dict], settings: dict, notes: list[str], extra: dict,
                 title: str = "MiniVLM vs OSCAR-B: size, cost and accuracy retained") -> tuple[Path, Path]:
    """``compare.md`` and ``compare.json`` (the rows, settings, notes and ``extra``) in ``output_dir``."""
    from ..io.atomic import atomic_write_text

    md, js = output_dir / "compare.md", output_dir / "compare.json"
    atomic_write_text(md, markdown(rows, settings, notes, title, extra.get("timings")))
    atomic_write_text(js, json.dumps({"rows": rows, "settings": settings, "notes": notes, **extra}, indent=1,
                                     default=float))
    return md, js
