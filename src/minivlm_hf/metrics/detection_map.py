# Copyright (c) minivlm-hf contributors. MIT license.
"""COCO-style box mAP as an `evaluate` metric, plus the plain function it calls (pycocotools COCOeval).

Per image, a prediction is ``{"boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]}`` and a
reference is ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [...]}``; boxes are absolute pixel
coordinates, corner format (x_min, y_min, x_max, y_max) on both sides by default -- the format
``post_process_object_detection`` returns. References in COCO's own ``[x, y, width, height]`` format are
accepted with ``reference_box_format="xywh"``. Labels are any integers (class ids); they are remapped to
1..K internally and reported back under their own ids.

The boxes go into in-memory COCO objects (no files): ground-truth ``area`` is the box area (COCO's
annotation files use the mask area there, which only matters for the small/medium/large breakdowns,
not reported here), ``iscrowd`` is 0 for every box, and COCOeval runs with ``iouType="bbox"`` and its
defaults: IoU thresholds 0.50:0.05:0.95, 101 recall points, area range "all", at most ``max_dets``
(default 100) detections per image and class. pycocotools' printing is silenced.

Images with no predictions and images with no ground truth are fine (they are included in the
evaluation: detections on an image without ground truth count as false positives). A class that
has predictions but no ground-truth box anywhere is ignored, as in COCO.

Output (fractions in [0, 1]; papers show x100):
``map`` (AP@[.5:.95]), ``map_50`` (AP@0.5), ``map_75`` (AP@0.75), and ``per_class_ap50`` (dict class id ->
AP@0.5, classes that have ground truth; omitted with ``per_class=False``). When there is no ground-truth
box at all, the APs are -1.0 (pycocotools' convention for "undefined").
"""

import contextlib
import io
from typing import Dict, List, Mapping, Sequence

import datasets
import evaluate
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def _as_array(x, shape_tail, dtype, what):
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x if x is not None else [], dtype=dtype)
    if a.size == 0:
        return np.zeros((0,) + shape_tail, dtype=dtype)
    if a.shape[1:] != shape_tail:
        raise ValueError(f"{what} must have shape (N,{','.join(map(str, shape_tail))}), got {a.shape}")
    return a


def _to_xywh(boxes: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "xywh":
        return boxes
    if box_format != "xyxy":
        raise ValueError(f"box format must be 'xyxy' or 'xywh', got {box_format!r}")
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _coco(images, categories, annotations) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _mean_valid(p: np.ndarray) -> float:
    v = p[p > -1]
    return float(v.mean()) if v.size else -1.0


def compute_detection_map(
    predictions: Sequence[Mapping],
    references: Sequence[Mapping],
    reference_box_format: str = "xyxy",
    max_dets: int = 100,
    per_class: bool = True,
) -> Dict[str, object]:
    """COCO box mAP of per-image predictions against per-image references.

    Args:
        predictions: per image {"boxes": (N,4) xyxy, "scores": (N,), "labels": (N,)}; lists, numpy arrays
            or torch tensors.
        references: per image {"boxes": (M,4), "labels": (M,)}, in ``reference_box_format``.
        reference_box_format: "xyxy" (default, same as predictions) or "xywh" (COCO annotation format).
        max_dets: detections kept per image (and class), COCO uses 100.
        per_class: add "per_class_ap50".

    Returns:
        {"map", "map_50", "map_75"} and "per_class_ap50" ({class id: AP@0.5}).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references (one each per image)")

    preds, refs = [], []
    for i, (p, r) in enumerate(zip(predictions, references)):
        pb = _as_array(p.get("boxes"), (4,), np.float64, f"predictions[{i}]['boxes']")
        ps = _as_array(p.get("scores"), (), np.float64, f"predictions[{i}]['scores']").reshape(-1)
        pl = _as_array(p.get("labels"), (), np.int64, f"predictions[{i}]['labels']").reshape(-1)
        rb = _as_array(r.get("boxes"), (4,), np.float64, f"references[{i}]['boxes']")
        rl = _as_array(r.get("labels"), (), np.int64, f"references[{i}]['labels']").reshape(-1)
        if not (len(pb) == len(ps) == len(pl)):
            raise ValueError(f"predictions[{i}]: {len(pb)} boxes, {len(ps)} scores, {len(pl)} labels")
        if len(rb) != len(rl):
            raise ValueError(f"references[{i}]: {len(rb)} boxes, {len(rl)} labels")
        preds.append((_to_xywh(pb, "xyxy"), ps, pl))
        refs.append((_to_xywh(rb, reference_box_format), rl))

    class_ids = sorted({int(c) for _, _, pl in preds for c in pl} | {int(c) for _, rl in refs for c in rl})
    cat_of = {c: k + 1 for k, c in enumerate(class_ids)}  # COCO category ids 1..K
    images = [{"id": i + 1} for i in range(len(refs))]  # image ids 1..N
    categories = [{"id": k} for k in cat_of.values()]

    # annotation ids must be >= 1: COCOeval uses 0 for "unmatched"
    gt_anns: List[dict] = []
    for img, (boxes, labels) in enumerate(refs, start=1):
        for b, c in zip(boxes.tolist(), labels.tolist()):
            gt_anns.append(
                {"id": len(gt_anns) + 1, "image_id": img, "category_id": cat_of[c], "bbox": b,
                 "area": b[2] * b[3], "iscrowd": 0}
            )
    dt_anns: List[dict] = []
    for img, (boxes, scores, labels) in enumerate(preds, start=1):
        for b, s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            dt_anns.append(
                {"id": len(dt_anns) + 1, "image_id": img, "category_id": cat_of[c], "bbox": b,
                 "area": b[2] * b[3], "score": s, "iscrowd": 0}
            )

    if not gt_anns or not images:
        out: Dict[str, object] = {"map": -1.0, "map_50": -1.0, "map_75": -1.0}
        if per_class:
            out["per_class_ap50"] = {}
        return out

    coco_gt = _coco(images, categories, gt_anns)
    coco_dt = _coco(images, categories, dt_anns)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max-dets]; -1 = no GT
    prec = ev.eval["precision"][:, :, :, 0, -1]  # area "all", max_dets
    thr = ev.params.iouThrs
    t50 = int(np.argmin(np.abs(thr - 0.5)))
    t75 = int(np.argmin(np.abs(thr - 0.75)))
    out = {"map": _mean_valid(prec), "map_50": _mean_valid(prec[t50]), "map_75": _mean_valid(prec[t75])}
    if per_class:
        has_gt = {a["category_id"] for a in gt_anns}
        per = {}
        for k, cat in enumerate(ev.params.catIds):
            if cat in has_gt:
                per[class_ids[cat - 1]] = _mean_valid(prec[t50, :, k])
        out["per_class_ap50"] = per
    return out


_CITATION = """\
@inproceedings{lin2014microsoft,
  title={Microsoft {COCO}: Common Objects in Context},
  author={Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and Perona, Pietro and Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle={ECCV},
  year={2014}
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of dict): per image {"boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]}.
    references (list of dict): per image {"boxes": [[...], ...], "labels": [...]}.
    reference_box_format ("xyxy" | "xywh", compute() keyword, default "xyxy").
    max_dets (int, compute() keyword, default 100).
    per_class (bool, compute() keyword, default True).
Returns:
    map, map_50, map_75 (float in [0, 1], -1.0 without any ground truth), per_class_ap50 (dict).
Example:
    >>> m = evaluate.load("/path/to/detection_map.py")
    >>> m.compute(predictions=[{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [1]}],
    ...           references=[{"boxes": [[0, 0, 10, 10]], "labels": [1]}])["map"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class DetectionMap(evaluate.Metric):
    """COCO box mAP@[.5:.95] and mAP@0.5 via pycocotools."""

    def _info(self):
        box_list = datasets.List(datasets.List(datasets.Value("float64")))
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "boxes": box_list,
                        "scores": datasets.List(datasets.Value("float64")),
                        "labels": datasets.List(datasets.Value("int64")),
                    },
                    "references": {"boxes": box_list, "labels": datasets.List(datasets.Value("int64"))},
                }
            ),
            codebase_urls=["https://github.com/cocodataset/cocoapi"],
        )

    def _compute(self, predictions, references, reference_box_format="xyxy", max_dets=100, per_class=True):
        return compute_detection_map(
            predictions, references, reference_box_format=reference_box_format, max_dets=max_dets, per_class=per_class
        )
