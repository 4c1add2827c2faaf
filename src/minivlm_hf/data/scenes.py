"""Synthetic scenes as ``datasets.DatasetDict`` (train / validation / test), built once and cached on disk.

Two datasets come from the same generator:

- :func:`load_scenes`: one row per image, with detection ground truth, 5 captions and 4-6 VQA questions
  (10 answers each); the schema is :data:`SCENE_FEATURES`, shared with the real-format loaders of
  :mod:`minivlm_hf.data.formats`.
- :func:`load_nlvr`: NLVR2-style rows (two images, one statement, a true/false label); schema
  :data:`NLVR_FEATURES`.

Determinism: every image has its own random stream, seeded by ``(seed, task, split, index)``, and within
it separate streams for the pixels, the captions and the questions. The same parameters therefore give
byte-identical PNGs, and splits (different split codes) never share a stream. A build additionally checks
that no PNG occurs twice across its splits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import datasets
import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Features, Image, List, Value
from datasets.table import InMemoryTable

from ..progress import progress as progress_bar
from .cache import cached_build
from .language import annotator_answers, make_captions, make_nlvr_statements, make_questions
from .render import SceneObject, encode_png, render_scene
from .vocab import MAX_OBJECTS, OBJECT_ID2LABEL, color_attribute_id, size_attribute_id

#: Bump whenever the generator's output changes: it is part of every cache key.
GENERATOR_VERSION = "scenes-v1"
SPLITS = ("train", "validation", "test")
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
_TASK_CODES = {"scenes": 0, "nlvr": 1}
_STREAM_PIXELS, _STREAM_CAPTIONS, _STREAM_QUESTIONS, _STREAM_NLVR = 0, 1, 2, 3

OBJECT_FEATURES = {
    "bbox": List(List(Value("float32"), length=4)),
    "category_id": List(Value("int32")),
    "attribute_ids": List(List(Value("int32"))),
    "area": List(Value("float32")),
    "iscrowd": List(Value("int8")),
}
SCENE_FEATURES = Features(
    {
        "image_id": Value("string"),
        "coco_id": Value("int64"),
        "image": Image(),
        "width": Value("int32"),
        "height": Value("int32"),
        "objects": OBJECT_FEATURES,
        "captions": List(Value("string")),
        "questions": List(Value("string")),
        "question_ids": List(Value("int64")),
        "answers": List(List(Value("string"))),
        "question_types": List(Value("string")),
    }
)
NLVR_FEATURES = Features(
    {
        "pair_id": Value("string"),
        "left_image": Image(),
        "right_image": Image(),
        "sentence": Value("string"),
        "label": ClassLabel(names=["false", "true"]),
        "statement_type": Value("string"),
        "left_objects": OBJECT_FEATURES,
        "right_objects": OBJECT_FEATURES,
    }
)


@dataclass(frozen=True)
class SceneConfig:
    """Per-image generation settings (image sides drawn independently in ``[min_size, max_size]``)."""

    min_size: int = 160
    max_size: int = 320
    min_objects: int = 1
    max_objects: int = MAX_OBJECTS

    def __post_init__(self):
        if not 64 <= self.min_size <= self.max_size:
            raise ValueError(f"need 64 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}")


def _rng(seed: int, task: str, split: str, index: int, stream: int, retry: int = 0) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, _TASK_CODES[task], _SPLIT_CODES[split], index, stream, retry])


def _draw(rng: np.random.Generator, config: SceneConfig) -> tuple[bytes, int, int, list[SceneObject]]:
    width = int(rng.integers(config.min_size, config.max_size + 1))
    height = int(rng.integers(config.min_size, config.max_size + 1))
    num = int(rng.integers(config.min_objects, config.max_objects + 1))
    image, objects, _kind = render_scene(rng, width, height, num)
    return encode_png(image), width, height, objects


def objects_to_columns(objects: list[SceneObject]) -> dict[str, list]:
    """The ``objects`` column (a struct of per-object lists) for drawn objects."""
    return {
        "bbox": [list(o.bbox) for o in objects],
        "category_id": [o.shape for o in objects],
        "attribute_ids": [[color_attribute_id(o.color_name), size_attribute_id(o.size_name)] for o in objects],
        "area": [float(o.area) for o in objects],
        "iscrowd": [0] * len(objects),
    }


def make_scene(
    seed: int, split: str, index: int, config: SceneConfig = SceneConfig(), retry: int = 0
) -> tuple[dict[str, Any], list[SceneObject]]:
    """One scene row (image as PNG bytes) and its drawn objects (back to front)."""
    png, width, height, objects = _draw(_rng(seed, "scenes", split, index, _STREAM_PIXELS, retry), config)
    captions = make_captions(_rng(seed, "scenes", split, index, _STREAM_CAPTIONS, retry), objects)
    q_rng = _rng(seed, "scenes", split, index, _STREAM_QUESTIONS, retry)
    questions = make_questions(q_rng, objects)
    coco_id = index + 1
    row = {
        "image_id": f"{split}_{index:06d}",
        "coco_id": coco_id,
        "image": {"bytes": png, "path": None},
        "width": width,
        "height": height,
        "objects": objects_to_columns(objects),
        "captions": captions,
        "questions": [q for q, _, _ in questions],
        "question_ids": [coco_id * 10 + k for k in range(len(questions))],
        "answers": [annotator_answers(q_rng, a) for _, a, _ in questions],
        "question_types": [t for _, _, t in questions],
    }
    return row, objects


def _unique(make, seen: set[bytes], pngs_of) -> Any:
    """Call ``make(retry)`` until none of its PNGs was generated before in this build (a collision is
    astronomically unlikely, but no split may share an image with another)."""
    for retry in range(100):
        made = make(retry)
        digests = [hashlib.sha256(png).digest() for png in pngs_of(made)]
        if len(set(digests)) == len(digests) and not seen.intersection(digests):
            seen.update(digests)
            return made
    raise RuntimeError("could not generate a unique image")  # pragma: no cover


def _scene_rows(seed: int, split: str, count: int, config: SceneConfig, seen: set[bytes]) -> Iterator[dict]:
    for index in range(count):
        row, _ = _unique(lambda r: make_scene(seed, split, index, config, r), seen, lambda m: [m[0]["image"]["bytes"]])
        yield row


def _nlvr_rows(
    seed: int, split: str, count: int, config: SceneConfig, statements_per_pair: int, seen: set[bytes]
) -> Iterator[dict]:
    for index in range(count):
        def make(retry):
            rng = _rng(seed, "nlvr", split, index, _STREAM_PIXELS, retry)
            return _draw(rng, config), _draw(rng, config)

        (left_png, *_, left), (right_png, *_, right) = _unique(make, seen, lambda m: [m[0][0], m[1][0]])
        text_rng = _rng(seed, "nlvr", split, index, _STREAM_NLVR)
        for sentence, label, stype in make_nlvr_statements(text_rng, left, right, statements_per_pair):
            yield {
                "pair_id": f"{split}_{index:06d}",
                "left_image": {"bytes": left_png, "path": None},
                "right_image": {"bytes": right_png, "path": None},
                "sentence": sentence,
                "label": label,
                "statement_type": stype,
                "left_objects": objects_to_columns(left),
                "right_objects": objects_to_columns(right),
            }


def rows_to_dataset(rows: Iterable[dict], features: Features, fingerprint: str | None = None) -> datasets.Dataset:
    """A Dataset with exactly ``features`` from already-encoded row dicts (images as ``{"bytes", "path"}``).

    Rows go straight into an Arrow table; with a ``fingerprint`` (a deterministic id of the content),
    ``datasets`` does not hash the table, which matters for thousands of PNGs. An empty split keeps the
    schema."""
    table = pa.Table.from_pylist(list(rows), schema=features.arrow_schema)
    return datasets.Dataset(InMemoryTable(table), fingerprint=fingerprint)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def build_scenes(
    num_train: int, num_validation: int, num_test: int, seed: int = 0, config: SceneConfig = SceneConfig(),
    progress: bool = True,
) -> datasets.DatasetDict:
    """Generate the scene DatasetDict in memory (no cache; see :func:`load_scenes`); ``progress``: a bar per split
    (on a terminal, see :mod:`minivlm_hf.progress`)."""
    seen: set[bytes] = set()
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    return datasets.DatasetDict(
        {
            s: rows_to_dataset(
                progress_bar(_scene_rows(seed, s, n, config, seen), total=n, desc=f"Generating {s} scenes",
                             unit="scene", enabled=progress), SCENE_FEATURES,
                _fingerprint(GENERATOR_VERSION, "scenes", seed, s, n, asdict(config)),
            )
            for s, n in counts.items()
        }
    )


def build_nlvr(
    num_train: int,
    num_validation: int,
    num_test: int,
    seed: int = 0,
    config: SceneConfig = SceneConfig(),
    statements_per_pair: int = 2,
    progress: bool = True,
) -> datasets.DatasetDict:
    """Generate the NLVR DatasetDict in memory; ``num_*`` count image pairs, each giving
    ``statements_per_pair`` rows with alternating labels."""
    seen: set[bytes] = set()
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    return datasets.DatasetDict(
        {
            s: rows_to_dataset(
                progress_bar(_nlvr_rows(seed, s, n, config, statements_per_pair, seen), total=n * statements_per_pair,
                             desc=f"Generating {s} NLVR statements", unit="row", enabled=progress), NLVR_FEATURES,
                _fingerprint(GENERATOR_VERSION, "nlvr", seed, s, n, statements_per_pair, asdict(config)),
            )
            for s, n in counts.items()
        }
    )


def _check_counts(**counts: int) -> None:
    for name, n in counts.items():
        if int(n) != n or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")


def load_scenes(
    cache_dir: str | Path | None = None,
    num_train: int = 2000,
    num_validation: int = 200,
    num_test: int = 200,
    seed: int = 0,
    *,
    min_size: int = 160,
    max_size: int = 320,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    use_cache: bool = True,
    rebuild_corrupt: bool = True,
    progress: bool = True,
) -> datasets.DatasetDict:
    """The synthetic scene dataset (splits ``train`` / ``validation`` / ``test``, schema
    :data:`SCENE_FEATURES`).

    Built on first use and saved under ``cache_dir`` (default ``$MINIVLM_HF_CACHE`` or
    ``~/.cache/minivlm_hf``) in a folder keyed by a hash of every generation parameter and
    :data:`GENERATOR_VERSION`; later calls load it from there. A cache folder that fails verification is
    rebuilt with a warning (or raises ``ValueError`` when ``rebuild_corrupt=False``).
    ``use_cache=False`` builds in memory only."""
    _check_counts(num_train=num_train, num_validation=num_validation, num_test=num_test)
    config = SceneConfig(min_size, max_size, min_objects, max_objects)
    params = {"task": "scenes", "version": GENERATOR_VERSION, "seed": seed, "num_train": num_train,
              "num_validation": num_validation, "num_test": num_test, **asdict(config)}

    def build():
        return build_scenes(num_train, num_validation, num_test, seed, config, progress=progress)

    if not use_cache:
        return build()
    return cached_build("scenes", params, build, cache_dir, rebuild_corrupt=rebuild_corrupt)


def load_nlvr(
    cache_dir: str | Path | None = None,
    num_train: int = 1000,
    num_validation: int = 100,
    num_test: int = 100,
    seed: int = 0,
    *,
    statements_per_pair: int = 2,
    min_size: int = 160,
    max_size: int = 320,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    use_cache: bool = True,
    rebuild_corrupt: bool = True,
    progress: bool = True,
) -> datasets.DatasetDict:
    """NLVR2-style pairs (schema :data:`NLVR_FEATURES`); ``num_*`` count image pairs, each pair gives
    ``statements_per_pair`` statements with alternating true/false labels. Cached like :func:`load_scenes`."""
    _check_counts(num_train=num_train, num_validation=num_validation, num_test=num_test)
    if statements_per_pair < 1:
        raise ValueError(f"statements_per_pair must be >= 1, got {statements_per_pair}")
    config = SceneConfig(min_size, max_size, min_objects, max_objects)
    params = {"task": "nlvr", "version": GENERATOR_VERSION, "seed": seed, "num_train": num_train,
              "num_validation": num_validation, "num_test": num_test,
              "statements_per_pair": statements_per_pair, **asdict(config)}

    def build():
        return build_nlvr(num_train, num_validation, num_test, seed, config, statements_per_pair, progress=progress)

    if not use_cache:
        return build()
    return cached_build("nlvr", params, build, cache_dir, rebuild_corrupt=rebuild_corrupt)


# ------------------------------------------------------------------------------------ detection targets
def detection_annotations(example: dict) -> dict[str, Any]:
    """The per-image target the detector's image processor consumes (COCO detection style):
    ``{"image_id": int, "annotations": [{"bbox", "category_id", "area", "iscrowd", "attribute_ids"}]}``."""
    objects = example["objects"]
    return {
        "image_id": int(example["coco_id"]),
        "annotations": [
            {
                "bbox": [float(v) for v in objects["bbox"][k]],
                "category_id": int(objects["category_id"][k]),
                "area": float(objects["area"][k]),
                "iscrowd": int(objects["iscrowd"][k]),
                "attribute_ids": [int(a) for a in objects["attribute_ids"][k]],
            }
            for k in range(len(objects["category_id"]))
        ],
    }


def scene_to_coco(dataset: datasets.Dataset, categories: dict[int, str] | None = None) -> dict[str, Any]:
    """COCO-format ground truth (``images`` / ``annotations`` / ``categories``) of one split, for mAP
    evaluation with pycocotools. Image ids are the ``coco_id`` column; annotation ids start at 1 (pycocotools
    treats id 0 as "unmatched"). Images are not decoded."""
    categories = OBJECT_ID2LABEL if categories is None else categories
    columns = dataset.select_columns(["image_id", "coco_id", "width", "height", "objects"])
    images, annotations = [], []
    for row in columns:
        images.append(
            {"id": int(row["coco_id"]), "file_name": f"{row['image_id']}.png", "width": int(row["width"]),
             "height": int(row["height"])}
        )
        for ann in detection_annotations(row)["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": int(row["coco_id"]), **ann})
    return {
        "info": {"description": "minivlm-hf synthetic scenes", "version": GENERATOR_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": int(i), "name": n, "supercategory": "shape"} for i, n in sorted(categories.items())],
    }
