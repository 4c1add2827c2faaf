"""Loaders from the standard formats to the scene schema (:data:`~minivlm_hf.data.scenes.SCENE_FEATURES`).

- COCO detection: ``instances_*.json`` + an image folder -> :func:`load_coco_detection`;
- COCO captions, Karpathy split (``dataset_coco.json``) + an image root -> :func:`load_karpathy_captions`;
- VQA v2 questions (+ annotations) JSON + a folder of ``COCO_<subtype>_<12-digit id>.jpg`` ->
  :func:`load_vqa_v2`;
- OSCAR/VinVL region-feature TSV -> :func:`iter_feature_tsv` / :func:`read_feature_tsv`, and
  :func:`write_feature_tsv`.

Columns a format does not provide are empty lists (e.g. ``captions`` for COCO detection). Images are stored
by path (decoded lazily by ``datasets``); each one is opened once at load time to read its size, so a
missing or undecodable file fails early. Every malformed input raises ``FileNotFoundError`` or
``ValueError`` with the offending file in the message.
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from .scenes import SCENE_FEATURES

FEATURE_DIM = 2048
BOX_DIM = 6  # x1, y1, x2, y2, w, h, all normalised by the image size


# ----------------------------------------------------------------------------------------------- helpers
def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None


def _require(obj: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {where} should be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise ValueError(f"{path}: {where} lacks the required key {key!r}")
    return obj[key]


def _require_int(obj: Any, key: str, path: Path, where: str) -> int:
    value = _require(obj, key, path, where)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{path}: {where}[{key!r}] should be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: {where}[{key!r}] should be an integer, got {value!r}") from None


def _require_list(obj: Any, key: str, path: Path, where: str) -> list:
    value = _require(obj, key, path, where)
    if not isinstance(value, list):
        raise ValueError(f"{path}: {where}[{key!r}] should be a list, got {type(value).__name__}")
    return value


@contextmanager
def _context(path: Path, where: str):
    """Re-raise a bare TypeError/ValueError from malformed values with the file and the entry named."""
    try:
        yield
    except (TypeError, ValueError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: {where}: malformed value ({err})") from None


def _image_size(path: Path, verify: bool = False) -> tuple[int, int]:
    """(width, height) of an image file; with ``verify`` the whole file is decoded."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            if verify:
                image.load()
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image file {path}: {err}") from None


def _empty_language() -> dict[str, list]:
    return {"captions": [], "questions": [], "question_ids": [], "answers": [], "question_types": []}


def _empty_objects() -> dict[str, list]:
    return {"bbox": [], "category_id": [], "attribute_ids": [], "area": [], "iscrowd": []}


def _image_row(coco_id: int, path: Path, verify: bool, width=None, height=None) -> dict[str, Any]:
    size = _image_size(path, verify)
    return {
        "image_id": str(coco_id),
        "coco_id": int(coco_id),
        "image": {"path": str(path), "bytes": None},
        "width": int(width if width is not None else size[0]),
        "height": int(height if height is not None else size[1]),
        "objects": _empty_objects(),
        **_empty_language(),
    }


def _dataset(rows: list[dict]) -> datasets.Dataset:
    if not rows:
        return datasets.Dataset.from_dict({name: [] for name in SCENE_FEATURES}, features=SCENE_FEATURES)
    return datasets.Dataset.from_list(rows, features=SCENE_FEATURES)


# -------------------------------------------------------------------------------------- COCO detection
def read_coco_categories(annotation_file: str | Path) -> dict[int, str]:
    """``{category id: name}`` of a COCO detection JSON (ids are not contiguous in COCO)."""
    path = Path(annotation_file)
    data = _read_json(path, "COCO annotation file")
    cats = _require_list(data, "categories", path, "the file")
    return {_require_int(c, "id", path, f"categories[{i}]"): str(_require(c, "name", path, f"categories[{i}]"))
            for i, c in enumerate(cats)}


def load_coco_detection(
    annotation_file: str | Path, image_dir: str | Path, *, verify_images: bool = False
) -> datasets.Dataset:
    """COCO detection ground truth (``instances_*.json``) as a Dataset with the scene schema.

    ``image_id`` is the COCO id as a string and ``coco_id`` the id itself; ``objects`` holds each
    annotation's ``bbox`` ([x, y, w, h], pixels), ``category_id`` (the COCO id), ``area``, ``iscrowd`` and
    ``attribute_ids`` (from an ``attribute_ids`` key when present, else empty). Images without annotations
    are kept with no objects. Category names: :func:`read_coco_categories`."""
    path = Path(annotation_file)
    image_dir = Path(image_dir)
    data = _read_json(path, "COCO annotation file")
    images = _require_list(data, "images", path, "the file")
    annotations = _require_list(data, "annotations", path, "the file")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder not found: {image_dir}")
    rows: dict[int, dict] = {}
    for i, img in enumerate(images):
        where = f"images[{i}]"
        image_id = _require_int(img, "id", path, where)
        file_name = str(_require(img, "file_name", path, where))
        rows[image_id] = _image_row(image_id, image_dir / file_name, verify_images, img.get("width"), img.get("height"))
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        image_id = _require_int(ann, "image_id", path, where)
        if image_id not in rows:
            raise ValueError(f"{path}: {where} refers to image_id {image_id}, which is not in 'images'")
        bbox = _require(ann, "bbox", path, where)
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{path}: {where}['bbox'] should be 4 numbers [x, y, w, h], got {bbox!r}")
        with _context(path, where):
            category_id = _require_int(ann, "category_id", path, where)
            area = float(ann.get("area", bbox[2] * bbox[3]))
            iscrowd = int(ann.get("iscrowd", 0))
            attribute_ids = [int(a) for a in ann.get("attribute_ids", [])]
        objects = rows[image_id]["objects"]
        objects["bbox"].append([float(v) for v in bbox])
        objects["category_id"].append(category_id)
        objects["area"].append(area)
        objects["iscrowd"].append(iscrowd)
        objects["attribute_ids"].append(attribute_ids)
    return _dataset(list(rows.values()))


# ------------------------------------------------------------------------------- Karpathy COCO captions
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}


def load_karpathy_captions(
    karpathy_file: str | Path,
    image_root: str | Path,
    *,
    merge_restval: bool = True,
    verify_images: bool = False,
) -> datasets.DatasetDict:
    """COCO captions in the Karpathy split (``dataset_coco.json``) as a DatasetDict with the scene schema.

    Splits: ``train`` (``train`` plus ``restval`` when ``merge_restval``, else a separate ``restval``),
    ``validation`` (``val``) and ``test``. Each image is ``image_root/filepath/filename`` (``filepath``
    optional); ``captions`` are the ``raw`` sentences, stripped (the joined ``tokens`` when ``raw`` is
    absent); ``coco_id`` is ``cocoid``."""
    path = Path(karpathy_file)
    root = Path(image_root)
    data = _read_json(path, "Karpathy split file")
    images = _require_list(data, "images", path, "the file")
    if not root.is_dir():
        raise FileNotFoundError(f"image root folder not found: {root}")
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    if not merge_restval:
        splits["restval"] = []
    for i, img in enumerate(images):
        where = f"images[{i}]"
        split = str(_require(img, "split", path, where))
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"{path}: {where} has unknown split {split!r} (expected one of {sorted(KARPATHY_SPLITS)})")
        target = "restval" if split == "restval" and not merge_restval else KARPATHY_SPLITS[split]
        cocoid = _require_int(img, "cocoid", path, where)
        file_name = str(_require(img, "filename", path, where))
        image_path = root / str(img.get("filepath", "")) / file_name
        captions = []
        for j, sentence in enumerate(_require_list(img, "sentences", path, where)):
            if isinstance(sentence, dict) and "raw" in sentence:
                captions.append(str(sentence["raw"]).strip())
            else:
                tokens = _require_list(sentence, "tokens", path, f"{where}['sentences'][{j}]")
                captions.append(" ".join(str(t) for t in tokens))
        row = _image_row(cocoid, image_path, verify_images)
        row["captions"] = captions
        splits[target].append(row)
    return datasets.DatasetDict({name: _dataset(rows) for name, rows in splits.items()})


# ------------------------------------------------------------------------------------------------ VQA v2
def load_vqa_v2(
    questions_file: str | Path,
    image_dir: str | Path,
    annotations_file: str | Path | None = None,
    *,
    data_subtype: str | None = None,
    verify_images: bool = False,
) -> datasets.Dataset:
    """VQA v2 questions (and, when given, annotations) grouped per image, with the scene schema.

    Images are ``image_dir/COCO_<data_subtype>_<image id as 12 digits>.jpg``; ``data_subtype`` (e.g.
    ``val2014``) defaults to the questions file's ``data_subtype`` field. Per image: ``questions``,
    ``question_ids``, ``answers`` (the 10 annotator answers of each question; empty lists without
    annotations) and ``question_types`` (the annotation's ``answer_type``: "yes/no", "number" or "other";
    empty strings without annotations). Images keep the order of first appearance in the questions file."""
    qpath = Path(questions_file)
    image_dir = Path(image_dir)
    qdata = _read_json(qpath, "VQA questions file")
    questions = _require_list(qdata, "questions", qpath, "the file")
    subtype = data_subtype or (qdata.get("data_subtype") if isinstance(qdata, dict) else None)
    if not subtype:
        raise ValueError(f"{qpath} has no 'data_subtype' field; pass data_subtype= (e.g. 'val2014')")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"VQA image folder not found: {image_dir}")
    by_question: dict[int, dict] = {}
    if annotations_file is not None:
        apath = Path(annotations_file)
        adata = _read_json(apath, "VQA annotations file")
        for i, ann in enumerate(_require_list(adata, "annotations", apath, "the file")):
            where = f"annotations[{i}]"
            qid = _require_int(ann, "question_id", apath, where)
            answers = []
            for j, a in enumerate(_require_list(ann, "answers", apath, where)):
                answers.append(str(_require(a, "answer", apath, f"{where}['answers'][{j}]")))
            by_question[qid] = {"answers": answers, "answer_type": str(ann.get("answer_type", ""))}
    rows: dict[int, dict] = {}
    for i, q in enumerate(questions):
        where = f"questions[{i}]"
        image_id = _require_int(q, "image_id", qpath, where)
        qid = _require_int(q, "question_id", qpath, where)
        text = str(_require(q, "question", qpath, where))
        if image_id not in rows:
            rows[image_id] = _image_row(image_id, image_dir / f"COCO_{subtype}_{image_id:012d}.jpg", verify_images)
        row = rows[image_id]
        if annotations_file is not None and qid not in by_question:
            raise ValueError(f"{annotations_file}: no annotation for question_id {qid} (from {qpath})")
        ann = by_question.get(qid, {"answers": [], "answer_type": ""})
        row["questions"].append(text)
        row["question_ids"].append(qid)
        row["answers"].append(ann["answers"])
        row["question_types"].append(ann["answer_type"])
    return _dataset(list(rows.values()))


# ------------------------------------------------------------------------------ OSCAR / VinVL features
def write_feature_tsv(
    path: str | Path, rows: Iterable[tuple[str, np.ndarray, np.ndarray]], feature_dim: int = FEATURE_DIM
) -> None:
    """Write ``(image_id, features [n, feature_dim], boxes [n, 4])`` rows in the OSCAR layout
    ``image_id \\t num_boxes \\t base64(float32 [n, feature_dim + 6])``; boxes are normalised
    ``[x1, y1, x2, y2]`` and the written 6-d box appends their width and height."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for image_id, features, boxes in rows:
            features = np.asarray(features, dtype=np.float32).reshape(-1, feature_dim)
            boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            if len(features) != len(boxes):
                raise ValueError(f"image {image_id}: {len(features)} feature rows but {len(boxes)} boxes")
            wh = boxes[:, 2:4] - boxes[:, 0:2]
            block = np.concatenate([features, boxes, wh], axis=1).astype("<f4")
            encoded = base64.b64encode(block.tobytes()).decode("ascii")
            fh.write(f"{image_id}\t{len(block)}\t{encoded}\n")


def iter_feature_tsv(path: str | Path, feature_dim: int = FEATURE_DIM) -> Iterator[dict[str, Any]]:
    """Read an OSCAR/VinVL region-feature TSV row by row.

    Accepts ``image_id \\t num_boxes \\t base64`` and VinVL's ``image_id \\t {"num_boxes": n, "features":
    base64}``. Yields ``{"image_id": str, "region_features": float32 [n, feature_dim], "region_boxes":
    float32 [n, 4]}`` (normalised ``x1, y1, x2, y2``; the stored width/height columns are dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature TSV not found: {path}")
    row_dim = feature_dim + BOX_DIM
    with path.open("r", encoding="utf-8", errors="strict") as fh:
        lineno = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: line {lineno + 1} is not UTF-8 text: {err}") from None
            if not line:
                break
            lineno += 1
            line = line.rstrip("\r\n")
            if not line:
                continue
            image_id, num_boxes, encoded = _split_tsv_row(line, path, lineno)
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ValueError(f"{path}: line {lineno} (image {image_id}): invalid base64: {err}") from None
            expected = num_boxes * row_dim * 4
            if len(raw) != expected:
                raise ValueError(
                    f"{path}: line {lineno} (image {image_id}): {len(raw)} bytes of features, expected "
                    f"{num_boxes} boxes x {row_dim} float32 = {expected}"
                )
            block = np.frombuffer(raw, dtype="<f4").reshape(num_boxes, row_dim).astype(np.float32)
            if not np.isfinite(block).all():
                bad_box, bad_col = (int(i) for i in np.argwhere(~np.isfinite(block))[0])
                raise ValueError(
                    f"{path}: line {lineno} (image {image_id}): non-finite value {block[bad_box, bad_col]} in box "
                    f"{bad_box}, column {bad_col} ({'feature' if bad_col < feature_dim else 'box'})"
                )
            yield {
                "image_id": image_id,
                "region_features": block[:, :feature_dim].copy(),
                "region_boxes": block[:, feature_dim : feature_dim + 4].copy(),
            }


def _split_tsv_row(line: str, path: Path, lineno: int) -> tuple[str, int, str]:
    cols = line.split("\t")
    if len(cols) == 2 and cols[1].lstrip().startswith("{"):
        try:
            info = json.loads(cols[1])
            cols = [cols[0], str(info["num_boxes"]), info["features"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: line {lineno}: bad VinVL JSON column: {err!r}") from None
    if len(cols) != 3:
        raise ValueError(f"{path}: line {lineno}: expected 3 tab-separated columns, found {len(cols)}")
    try:
        num_boxes = int(cols[1])
    except ValueError:
        raise ValueError(f"{path}: line {lineno}: num_boxes {cols[1][:20]!r} is not an integer") from None
    if num_boxes < 0:
        raise ValueError(f"{path}: line {lineno}: negative num_boxes {num_boxes}")
    return cols[0], num_boxes, cols[2]


def read_feature_tsv(path: str | Path, feature_dim: int = FEATURE_DIM) -> dict[str, dict[str, np.ndarray]]:
    """The whole TSV as ``{image_id: {"region_features": [n, D], "region_boxes": [n, 4]}}``; a repeated
    image id is an error."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for row in iter_feature_tsv(path, feature_dim):
        if row["image_id"] in out:
            raise ValueError(f"{path}: image id {row['image_id']!r} occurs more than once")
        out[row["image_id"]] = {"region_features": row["region_features"], "region_boxes": row["region_boxes"]}
    return out
