"""Precomputed region features (OSCAR style) and the per-task example tables built on them.

- :func:`extract_features` runs a trained TEE once over a dataset of images (``datasets.map``, batched, with a
  progress bar) and adds ``region_features`` (float16), ``region_boxes`` (normalised xyxy), ``region_mask``,
  ``region_scores``, ``region_labels`` and ``tags`` (detected class names, most confident first, no repeats, score
  ``>= tag_threshold``: the same rule as ``MiniVLMModel.tags_from_regions``, so a fusion model trained on these
  features behaves the same when it runs the TEE itself from pixels).
- :func:`oracle_features`: the same columns built from the ground truth (one-hot shape / colour / size codes,
  exact boxes, true tags), no detector needed: for tests and as an upper-bound diagnostic.
- :class:`RegionStore`: all regions of an image table held in memory, gathered by ``image_index`` by the collators.
- ``*_examples``: the task tables (one row per caption / question / statement) that point into a store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import Array2D, Features, List, Value

from ..data.vocab import ATTRIBUTE_ID2LABEL, COLORS, OBJECT_ID2LABEL, SHAPES, SIZES
from ..modeling.modeling_minivlm_inputs import select_tag_phrases
from ..progress import datasets_progress

REGION_COLUMNS = ("region_features", "region_boxes", "region_mask", "region_scores", "region_labels", "tags")


def region_features_schema(num_regions: int, feature_size: int, dtype: str = "float16") -> dict:
    return {
        "region_features": Array2D((num_regions, feature_size), dtype),
        "region_boxes": Array2D((num_regions, 4), "float32"),
        "region_mask": List(Value("bool"), length=num_regions),
        "region_scores": List(Value("float32"), length=num_regions),
        "region_labels": List(Value("int32"), length=num_regions),
        "tags": List(Value("string")),
    }


def tags_from_detections(labels, scores, mask, id2label: dict, threshold: float, attribute_scores=None,
                         attribute_id2label: dict | None = None, attribute_threshold: float = 0.5,
                         max_attributes: int = 2, order: str = "score", boxes=None) -> list[str]:
    """Tag strings of one image by :func:`select_tag_phrases` (the rule ``MiniVLMModel.tags_from_regions`` applies):
    class names once each, or with ``attribute_scores`` one "attribute … class" phrase per region. ``order="area"``:
    largest box (``boxes``) first."""
    phrases = select_tag_phrases(labels, scores, mask, threshold, attribute_scores, attribute_threshold, max_attributes,
                                 order=order, boxes=boxes)
    names = []
    for label, attributes in phrases:
        words = [attribute_id2label.get(a, str(a)) for a in attributes] if attributes else []
        words.append(id2label.get(label, str(label)))
        names.append(" ".join(w.replace("_", " ") for w in words))
    return names


def region_extractor(
    detector,
    image_processor,
    *,
    tag_threshold: float = 0.2,
    tag_attributes: bool = False,
    attribute_threshold: float = 0.5,
    max_attributes: int = 2,
    tag_order: str = "score",
    dtype: str = "float16",
):
    """``(extract, schema)``: ``extract(images, prefix="")`` runs the TEE (``TEEForObjectDetection`` or
    ``TEEModel``, put in eval mode) on a list of images and returns the :data:`REGION_COLUMNS` of each image (keys
    prefixed with ``prefix``, e.g. ``"left_"`` for NLVR); ``schema`` maps the unprefixed column names to their
    ``datasets`` features. Shared by the in-memory (:func:`extract_features`) and the sharded
    (:mod:`~minivlm_hf.training.feature_shards`) extraction, so both produce the same values."""
    from ..fast.cpu import enable_cpu_fast_paths

    tee = getattr(detector, "tee", detector)
    tee.eval()
    enable_cpu_fast_paths(tee)  # NHWC input and the per-image dense part on CPU
    config = tee.config
    num_regions, feature_size = config.num_regions, config.box_head_dim
    id2label = {int(k): v for k, v in config.id2label.items()}
    attribute_id2label = {int(k): v for k, v in config.attribute_id2label.items()}
    device = next(tee.parameters()).device
    np_dtype = np.float16 if dtype == "float16" else np.float32

    @torch.no_grad()
    def extract(images, prefix: str = "") -> dict:
        encoded = image_processor(images=images, return_tensors="pt")
        out = tee(pixel_values=encoded["pixel_values"].to(device), pixel_mask=encoded["pixel_mask"].to(device))
        n, k = out.region_mask.shape
        feats = np.zeros((n, num_regions, feature_size), dtype=np_dtype)
        boxes = np.zeros((n, num_regions, 4), dtype=np.float32)
        mask = np.zeros((n, num_regions), dtype=bool)
        scores = np.zeros((n, num_regions), dtype=np.float32)
        labels = np.zeros((n, num_regions), dtype=np.int32)
        k = min(k, num_regions)
        feats[:, :k] = out.region_features[:, :k].float().cpu().numpy()
        boxes[:, :k] = out.region_boxes[:, :k].float().clamp(0, 1).cpu().numpy()
        mask[:, :k] = out.region_mask[:, :k].cpu().numpy()
        scores[:, :k] = out.region_scores[:, :k].float().cpu().numpy()
        labels[:, :k] = out.region_labels[:, :k].cpu().numpy()
        attributes = out.attribute_logits[:, :k].float().sigmoid().cpu() if tag_attributes else [None] * n
        tags = [tags_from_detections(labels[i, :k], scores[i, :k], mask[i, :k], id2label, tag_threshold, attributes[i],
                                     attribute_id2label, attribute_threshold, max_attributes,
                                     order=tag_order, boxes=boxes[i, :k])
                for i in range(n)]
        columns = dict(region_features=list(feats), region_boxes=list(boxes), region_mask=mask.tolist(),
                       region_scores=scores.tolist(), region_labels=labels.tolist(), tags=tags)
        return {prefix + key: value for key, value in columns.items()}

    return extract, region_features_schema(num_regions, feature_size, dtype)


def extract_features(
    detector,
    image_processor,
    dataset: datasets.Dataset,
    *,
    image_column: str = "image",
    batch_size: int = 16,
    tag_threshold: float = 0.2,
    tag_attributes: bool = False,
    attribute_threshold: float = 0.5,
    max_attributes: int = 2,
    tag_order: str = "score",
    drop_image: bool = True,
    dtype: str = "float16",
    desc: str = "Extracting regions",
    progress: bool = True,
) -> datasets.Dataset:
    """Run the TEE (``TEEForObjectDetection`` or ``TEEModel``) over ``dataset[image_column]`` and return the dataset
    with the region columns of :data:`REGION_COLUMNS` added (kept in memory; nothing is written next to the source
    dataset, so a cached scenes folder stays intact). ``drop_image`` removes the image column."""
    if image_column not in dataset.column_names:
        raise ValueError(f"dataset has no '{image_column}' column (columns: {dataset.column_names})")
    extract, schema = region_extractor(
        detector, image_processor, tag_threshold=tag_threshold, tag_attributes=tag_attributes,
        attribute_threshold=attribute_threshold, max_attributes=max_attributes, tag_order=tag_order, dtype=dtype)
    base = {k: v for k, v in dataset.features.items() if not (drop_image and k == image_column)}
    features = Features({**base, **schema})

    def run(batch):
        return {**{key: batch[key] for key in base}, **extract(batch[image_column])}

    tee = getattr(detector, "tee", detector)
    settings = f"{tag_threshold}-{tag_attributes}-{attribute_threshold}-{max_attributes}-{tag_order}"
    fingerprint = hashlib.sha256(f"{dataset._fingerprint}-{id(tee)}-{settings}".encode()).hexdigest()[:16]
    with datasets_progress(progress):  # datasets' bar (with an ETA), on a terminal only
        return dataset.map(
            run, batched=True, batch_size=batch_size, features=features, remove_columns=dataset.column_names,
            keep_in_memory=True, load_from_cache_file=False, new_fingerprint=fingerprint, desc=desc,
        )


def oracle_features(dataset: datasets.Dataset, *, feature_size: int = 32, num_regions: int = 10,
                    noise: float = 0.0, seed: int = 0, tag_attributes: bool = False,
                    tag_order: str = "score") -> datasets.Dataset:
    """Ground-truth "features": per object a one-hot shape / colour / size code (``feature_size >= 19``), its exact
    box, score 1 and its class; tags = the true class names (with ``tag_attributes``: "colour size class" per
    object). For tests and as an upper-bound diagnostic."""
    if feature_size < len(SHAPES) + len(COLORS) + len(SIZES):
        raise ValueError(f"oracle features need feature_size >= {len(SHAPES) + len(COLORS) + len(SIZES)}")
    rng = np.random.default_rng(seed)
    columns = [c for c in dataset.column_names if c != "image"]
    features = Features({**{k: dataset.features[k] for k in columns},
                         **region_features_schema(num_regions, feature_size, "float32")})
    rows = {name: [] for name in features}
    for row in dataset.select_columns(columns):
        objects = row["objects"]
        width, height = float(row["width"]), float(row["height"])
        feats = np.zeros((num_regions, feature_size), dtype=np.float32)
        boxes = np.zeros((num_regions, 4), dtype=np.float32)
        mask = np.zeros(num_regions, dtype=bool)
        labels = np.zeros(num_regions, dtype=np.int32)
        attributes = np.zeros((num_regions, len(ATTRIBUTE_ID2LABEL)), dtype=np.float32)
        order = np.argsort(-np.asarray(objects["area"], dtype=np.float64), kind="stable")[:num_regions]
        for slot, k in enumerate(order):
            shape = int(objects["category_id"][k])
            color, size = (int(a) for a in objects["attribute_ids"][k][:2])
            feats[slot, shape] = 1.0
            feats[slot, len(SHAPES) + color] = 1.0
            feats[slot, len(SHAPES) + size] = 1.0  # size ids follow the colour ids (8..10)
            x, y, w, h = objects["bbox"][k]
            boxes[slot] = [x / width, y / height, min((x + w) / width, 1.0), min((y + h) / height, 1.0)]
            mask[slot] = True
            labels[slot] = shape
            attributes[slot, [color, size]] = 1.0
        if noise:
            feats += rng.normal(0, noise, feats.shape).astype(np.float32) * mask[:, None]
        for name in columns:
            rows[name].append(row[name])
        rows["region_features"].append(feats)
        rows["region_boxes"].append(boxes)
        rows["region_mask"].append(mask.tolist())
        rows["region_scores"].append(mask.astype(np.float32).tolist())
        rows["region_labels"].append(labels.tolist())
        rows["tags"].append(tags_from_detections(labels, mask.astype(np.float32), mask, OBJECT_ID2LABEL, 0.5,
                                                 attributes if tag_attributes else None, ATTRIBUTE_ID2LABEL,
                                                 order=tag_order, boxes=boxes))
    return datasets.Dataset.from_dict(rows, features=features)


class RegionStore:
    """The region columns of an image table, loaded once into memory and gathered by image index.

    Args:
        dataset: rows with the columns of :data:`REGION_COLUMNS` (e.g. the output of :func:`extract_features`).
    """

    def __init__(self, dataset: datasets.Dataset):
        missing = [c for c in REGION_COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(f"the dataset has no region columns {missing}: run extract_features first")
        table = dataset.with_format("numpy", columns=["region_features", "region_boxes", "region_mask"])[:]
        self.region_features = torch.from_numpy(np.ascontiguousarray(table["region_features"]))
        self.region_boxes = torch.from_numpy(np.ascontiguousarray(table["region_boxes"])).float()
        self.region_mask = torch.from_numpy(np.ascontiguousarray(table["region_mask"])).bool()
        self.tags = [list(t) for t in dataset["tags"]]

    def __len__(self) -> int:
        return self.region_features.shape[0]

    @property
    def feature_size(self) -> int:
        return int(self.region_features.shape[-1])

    def gather(self, indices: list[int]) -> tuple[dict, list[list]]:
        """Region tensors of the images ``indices`` and their tags, as ``(phrase, region index)`` pairs."""
        if indices and (min(indices) < 0 or max(indices) >= len(self)):
            raise IndexError(f"image_index out of range [0, {len(self)}): {indices}")
        index = torch.as_tensor(indices, dtype=torch.long)
        inputs = {
            "region_features": self.region_features[index].float(),
            "region_boxes": self.region_boxes[index],
            "region_mask": self.region_mask[index],
        }
        return inputs, [self.tags[i] for i in indices]


# ---------------------------------------------------------------------------------------------------------------------
# task tables
# ---------------------------------------------------------------------------------------------------------------------
def caption_examples(scenes: datasets.Dataset, per_caption: bool = True) -> datasets.Dataset:
    """One row per (image, caption) (``per_caption``) or per image (with all its ``captions``: evaluation)."""
    captions = scenes["captions"]
    image_ids = scenes["image_id"]
    if not per_caption:
        return datasets.Dataset.from_dict(
            {"image_index": list(range(len(captions))), "image_id": image_ids, "captions": captions,
             "caption": [c[0] for c in captions]}
        )
    rows = {"example_id": [], "image_index": [], "image_id": [], "caption": []}
    for i, caps in enumerate(captions):
        for k, caption in enumerate(caps):
            rows["example_id"].append(i * 100 + k)
            rows["image_index"].append(i)
            rows["image_id"].append(image_ids[i])
            rows["caption"].append(caption)
    return datasets.Dataset.from_dict(rows)


def vqa_examples(scenes: datasets.Dataset) -> datasets.Dataset:
    """One row per question: ``image_index``, ``question``, ``answers`` (10), ``question_type``, ``question_id``."""
    table = scenes.select_columns(["questions", "answers", "question_types", "question_ids"])[:]
    rows = {"image_index": [], "question": [], "answers": [], "question_type": [], "question_id": []}
    for i, (qs, ans, types, ids) in enumerate(
        zip(table["questions"], table["answers"], table["question_types"], table["question_ids"])
    ):
        for q, a, t, qid in zip(qs, ans, types, ids):
            rows["image_index"].append(i)
            rows["question"].append(q)
            rows["answers"].append(a)
            rows["question_type"].append(t)
            rows["question_id"].append(int(qid))
    return datasets.Dataset.from_dict(rows)


def pretraining_examples(scenes: datasets.Dataset) -> datasets.Dataset:
    """The pre-training corpus, as OSCAR+ / VinVL build theirs: one row per (image, caption) and one per (image,
    question + its most common answer), the question-answer text read like a caption (``"what color is the star?
    red"``). Rows: ``image_index``, ``caption``, ``source`` ("caption" / "qa")."""
    from collections import Counter

    captions = caption_examples(scenes, per_caption=True)
    qa = vqa_examples(scenes)
    texts = [f"{q} {Counter(a).most_common(1)[0][0]}" for q, a in zip(qa["question"], qa["answers"])]
    return datasets.Dataset.from_dict({
        "image_index": list(captions["image_index"]) + list(qa["image_index"]),
        "caption": list(captions["caption"]) + texts,
        "source": ["caption"] * len(captions) + ["qa"] * len(texts),
    })


def nlvr_images(nlvr: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split NLVR rows into an image table (each pair's two images once: left images, then right images) and the
    statement table (``left_index``, ``right_index``, ``sentence``, ``label``, ``pair_id``, ``statement_type``)."""
    pair_ids = nlvr["pair_id"]
    first: dict[str, int] = {}
    for i, pid in enumerate(pair_ids):
        first.setdefault(pid, i)
    order = list(first.values())
    # In memory: an index map (select) or its flattening (before add_column) would otherwise be written as
    # cache-*.arrow files into the scenes cache, racing with other processes reading it.
    pairs = nlvr.select(order, keep_in_memory=True).flatten_indices(keep_in_memory=True)
    sides = []
    for side in ("left", "right"):
        table = pairs.select_columns([f"{side}_image", f"{side}_objects"])
        table = table.rename_columns({f"{side}_image": "image", f"{side}_objects": "objects"})
        raw = table.cast_column("image", datasets.Image(decode=False))["image"]
        sizes = [_image_size(item) for item in raw]
        table = table.add_column("width", [w for w, _ in sizes]).add_column("height", [h for _, h in sizes])
        table = table.add_column("image_id", [f"{pid}_{side}" for pid in first])
        sides.append(table)
    images = datasets.concatenate_datasets(sides)
    position = {pid: k for k, pid in enumerate(first)}
    num_pairs = len(order)
    statements = nlvr.remove_columns(
        [c for c in ("left_image", "right_image", "left_objects", "right_objects") if c in nlvr.column_names]
    )
    statements = statements.add_column("left_index", [position[p] for p in pair_ids])
    statements = statements.add_column("right_index", [num_pairs + position[p] for p in pair_ids])
    statements = statements.add_column("example_id", list(range(len(pair_ids))))
    return images, statements


def _image_size(item: dict) -> tuple[int, int]:
    import io

    from PIL import Image

    if item.get("bytes") is not None:
        with Image.open(io.BytesIO(item["bytes"])) as image:
            return image.size
    with Image.open(item["path"]) as image:
        return image.size


def load_feature_table(path: str | Path) -> datasets.Dataset:
    """``load_from_disk`` of a saved feature table, with an error that names the folder when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature table {path} does not exist")
    try:
        table = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - a corrupt folder raises many kinds of errors
        raise ValueError(f"cannot load the feature table saved in {path}: {err}") from None
    missing = [c for c in REGION_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"feature table {path} lacks the region columns {missing}")
    return table


__all__ = [
    "REGION_COLUMNS",
    "RegionStore",
    "caption_examples",
    "extract_features",
    "load_feature_table",
    "nlvr_images",
    "oracle_features",
    "pretraining_examples",
    "region_extractor",
    "tags_from_detections",
    "vqa_examples",
]
