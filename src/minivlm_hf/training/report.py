"""report.md and the PNG gallery of the demo."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

#: (stage, metric key in the stage's metrics, label, target, scale for display, unit)
TARGETS = (
    ("detector", "test_map_50", "Detection mAP@0.5 (TEE)", 0.70, 1.0, ""),
    ("vqa", "test_accuracy", "VQA accuracy", 0.80, 100.0, "%"),
    ("caption", "test_cider", "Caption CIDEr-D", 1.5, 1.0, ""),
    ("retrieval", "test_i2t_r1", "Image→text R@1", 0.60, 100.0, "%"),
    ("nlvr", "test_accuracy", "NLVR accuracy", 0.75, 100.0, "%"),
)

EXTRA_METRICS = (
    ("detector", "test_map", "Detection mAP@[.5:.95]", 1.0, ""),
    ("caption", "test_bleu_4", "Caption BLEU-4", 1.0, ""),
    ("retrieval", "test_i2t_r5", "Image→text R@5", 100.0, "%"),
    ("retrieval", "test_i2t_r10", "Image→text R@10", 100.0, "%"),
    ("retrieval", "test_t2i_r1", "Text→image R@1", 100.0, "%"),
    ("retrieval", "test_t2i_r5", "Text→image R@5", 100.0, "%"),
    ("retrieval", "test_t2i_r10", "Text→image R@10", 100.0, "%"),
    ("retrieval", "test_sinkhorn_i2t_r1", "Image→text R@1, gallery-normalised (Sinkhorn)", 100.0, "%"),
    ("retrieval", "test_sinkhorn_t2i_r1", "Text→image R@1, gallery-normalised (Sinkhorn)", 100.0, "%"),
    ("nlvr", "test_consistency", "NLVR consistency (both statements of a pair right)", 100.0, "%"),
)


def _fmt(value, scale, unit) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value * scale:.1f}{unit}" if unit == "%" else f"{value * scale:.3f}"


def target_rows(metrics: dict[str, dict]) -> list[dict]:
    rows = []
    for stage, key, label, target, scale, unit in TARGETS:
        value = metrics.get(stage, {}).get(key)
        rows.append({
            "stage": stage, "metric": label, "key": key, "target": target, "value": value,
            "target_text": ("≥ " + _fmt(target, scale, unit)), "value_text": _fmt(value, scale, unit),
            "met": (value is not None and value >= target),
        })
    return rows


def write_report(path: Path, *, title: str, metrics: dict[str, dict], timings: dict[str, float], settings: dict,
                 reload_checks: dict[str, dict], gallery: str | None, notes: list[str],
                 curves: dict[str, str] | None = None) -> str:
    lines = [f"# {title}", ""]
    lines += ["## Results on the held-out test split", "",
              "| Task | Metric | Target | Measured | Met |", "|---|---|---|---|---|"]
    for row in target_rows(metrics):
        lines.append(f"| {row['stage']} | {row['metric']} | {row['target_text']} | {row['value_text']} | "
                     f"{'yes' if row['met'] else 'no'} |")
    lines += ["", "Other metrics:", "", "| Task | Metric | Measured |", "|---|---|---|"]
    for stage, key, label, scale, unit in EXTRA_METRICS:
        value = metrics.get(stage, {}).get(key)
        if value is not None:
            lines.append(f"| {stage} | {label} | {_fmt(value, scale, unit)} |")
    vqa = metrics.get("vqa", {})
    per_type = {k[len("test_accuracy_"):]: v for k, v in vqa.items() if k.startswith("test_accuracy_")}
    if per_type:
        lines.append("| vqa | accuracy per question type | "
                     + ", ".join(f"{t} {v * 100:.1f}%" for t, v in sorted(per_type.items())) + " |")
    lines += ["", "## Time per stage (wall clock, this machine)", "", "| Stage | Seconds |", "|---|---|"]
    for name, seconds in timings.items():
        lines.append(f"| {name} | {seconds:.1f} |")
    lines += ["", "## Reloaded models", "",
              "Every model was saved with `save_pretrained` (with its processor) and reloaded through the Auto classes; "
              "the metrics above come from the reloaded models. In-memory vs reloaded outputs on test inputs:", "",
              "| Model | Auto class | Check | Equal |", "|---|---|---|---|"]
    for name, check in reload_checks.items():
        lines.append(f"| {name} | {check.get('auto_class', '')} | {check.get('check', '')} | "
                     f"{'yes' if check.get('equal') else 'NO'} |")
    lines += ["", "## Settings", ""]
    for key, value in settings.items():
        lines.append(f"- **{key}**: {value}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if curves:
        lines += ["", "## Training curves", "",
                  "Per stage, as the Trainer logged them: loss, evaluation metrics (the held-out test metrics of the "
                  "reloaded model as stars at the last step) and learning rate; the values are in each stage's "
                  "`log_history.json`.", ""]
        lines += [f"![{stage} training curves]({png})" for stage, png in curves.items()]
    if gallery:
        lines += ["", "## Gallery", "",
                  "Per test image: ground truth | detections (red: missed objects, false detections) | the "
                  "generated caption against two references (FAIL: it names a colour or shape the image does not "
                  "have, or none of its objects) and the answers against the annotators' most common answer.", "",
                  f"![test images: ground truth vs detections, captions, answers]({gallery})"]
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


# ---------------------------------------------------------------------------------------------------------------------
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (128, 128, 0))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return lines or [""]


def label_color(label: str) -> tuple[int, int, int]:
    """A fixed colour per label (the same in every image and run)."""
    return PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


def draw_boxes(image: Image.Image, boxes, labels, scores=None, *, scale: float = 1.0, width: int = 2,
               font_size: int = 12, colors=None) -> Image.Image:
    """A copy of ``image`` with each xyxy pixel box (times ``scale``) outlined and named ``"label score"``."""
    image = image.convert("RGB").copy()
    layer = ImageDraw.Draw(image)
    font = _font(font_size)
    scores = scores if scores is not None else [None] * len(boxes)
    for n, (box, label, score) in enumerate(zip(boxes, labels, scores)):
        color = colors[n] if colors is not None else label_color(label.split()[-1] if label else "")
        x1, y1, x2, y2 = (v * scale for v in box)
        layer.rectangle([x1, y1, x2, y2], outline=color, width=width)
        text = label if score is None else f"{label} {score:.2f}"
        anchor = (x1 + 2, max(0, y1 - font_size - 2))
        left, top, right, bottom = layer.textbbox(anchor, text, font=font)
        layer.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill="white")
        layer.text(anchor, text, fill=color, font=font)
    return image


__all__ = ["TARGETS", "draw_boxes", "label_color", "target_rows", "write_report"]
