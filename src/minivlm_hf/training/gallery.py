"""The demo's gallery: per test image, what the models got right and wrong.

One row per image: the ground-truth objects | the detections (missed objects and false detections marked) | the
generated caption against two references (colours / shapes it names that are not in the image marked) and the
answers against the annotators' most common answer (wrong ones marked).
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageDraw

from .report import _font, _wrap, draw_boxes

OK, FAIL, MUTED = (20, 130, 40), (200, 20, 30), (90, 90, 90)


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_detections(truth: list[tuple], found: list[tuple], iou: float = 0.5) -> tuple[list[int], list[int]]:
    """Greedy matching as in detection mAP: ``truth`` and ``found`` are ``(box, label)`` lists (``found`` best
    first); a detection matches an unmatched object of its label at IoU ≥ ``iou``. Returns ``(missed object
    indices, false detection indices)``."""
    matched: set[int] = set()
    false = []
    for j, (box, label) in enumerate(found):
        best, best_iou = None, iou
        for i, (true_box, true_label) in enumerate(truth):
            if i not in matched and true_label == label and box_iou(box, true_box) >= best_iou:
                best, best_iou = i, box_iou(box, true_box)
        if best is None:
            false.append(j)
        else:
            matched.add(best)
    return [i for i in range(len(truth)) if i not in matched], false


def caption_mistakes(caption: str, scene_words: set[str], vocabulary: dict[str, str],
                     objects: set[str] | None = None) -> list[str]:
    """What is wrong with ``caption``: each word naming a colour or shape (``vocabulary``: word → the name it stands
    for, plurals included) that the image does not have (``scene_words``: the names of its objects' classes and
    attributes), as ``"<word> not in the image"``, and, given the image's class names ``objects``, a caption that
    names none of them."""
    words = re.findall(r"[a-z]+", caption.lower())
    mistakes = [f"{w} not in the image" for w in sorted({w for w in words if w in vocabulary
                                                          and vocabulary[w] not in scene_words})]
    if objects and not any(vocabulary.get(w) in objects for w in words):
        mistakes.append("names no object of the image")
    return mistakes


def _text_block(draw, x, y, lines, font, width_chars: int, max_y: int) -> int:
    """Draw ``(text, colour)`` lines wrapped at ``width_chars``; returns the next y."""
    for text, color in lines:
        for line in _wrap(text, width_chars):
            if y + 14 > max_y:
                return y
            draw.text((x, y), line, fill=color, font=font)
            y += 14
    return y


def draw_gallery(path: Path, items: list[dict], *, tile: int = 220, text_width: int = 420) -> None:
    """``items``: per image, dicts with ``image`` (PIL), ``truth_boxes`` / ``truth_labels`` (ground truth, xyxy
    pixels and names with attributes), ``boxes`` / ``labels`` / ``scores`` (detections), ``caption``,
    ``references`` (list), ``caption_mistakes`` (list), ``qa`` (``[{"question", "answer", "score", "truth"}]``),
    ``missed`` / ``false`` (indices from :func:`match_detections`)."""
    font, small = _font(13), _font(11)
    row_height = tile + 30
    canvas = Image.new("RGB", (10 + 2 * (tile + 10) + text_width, 10 + len(items) * (row_height + 10)), "white")
    draw = ImageDraw.Draw(canvas)
    for n, item in enumerate(items):
        x0, y0 = 10, 10 + n * (row_height + 10)
        image = item["image"].convert("RGB")
        scale = tile / max(image.size)
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        missed, false = set(item.get("missed", [])), set(item.get("false", []))
        truth = draw_boxes(image.resize(size), item["truth_boxes"], item["truth_labels"], scale=scale,
                           font_size=10, colors=[FAIL if i in missed else OK for i in range(len(item["truth_boxes"]))])
        found = draw_boxes(image.resize(size), item["boxes"], item["labels"], item["scores"], scale=scale,
                           font_size=10, colors=[FAIL if j in false else OK for j in range(len(item["boxes"]))])
        canvas.paste(truth, (x0, y0))
        canvas.paste(found, (x0 + tile + 10, y0))
        draw.text((x0, y0 + tile + 4), f"ground truth ({len(item['truth_boxes'])} objects)", fill=MUTED, font=small)
        detection_note = f"detections: {len(missed)} missed, {len(false)} false" if missed or false else \
            "detections: all objects found"
        draw.text((x0 + tile + 10, y0 + tile + 4), detection_note, fill=FAIL if missed or false else OK, font=small)
        lines = []
        mistakes = item.get("caption_mistakes", [])
        lines.append((f"caption: {item['caption']}" + (f"  [FAIL: {'; '.join(mistakes)}]"
                                                       if mistakes else "  [OK]"), FAIL if mistakes else OK))
        lines += [(f"  reference: {ref}", MUTED) for ref in item.get("references", [])[:2]]
        for qa in item.get("qa", []):
            right = qa["answer"] == qa["truth"]
            lines.append((f"Q: {qa['question']}", (0, 0, 0)))
            lines.append((f"  A: {qa['answer']} ({qa['score']:.2f})  truth: {qa['truth']}  "
                          f"[{'OK' if right else 'FAIL'}]", OK if right else FAIL))
        _text_block(draw, x0 + 2 * (tile + 10), y0, lines, font, text_width // 7, y0 + row_height)
    canvas.save(path)


__all__ = ["box_iou", "caption_mistakes", "draw_gallery", "match_detections"]
