"""The fusion stages' training rows read from a stream of feature shards (``minivlm-hf data features``).

:func:`stream_task_examples` opens the ``train`` split of a feature folder or Hub dataset repo as a
``datasets.IterableDataset`` and turns each image row into the rows of a stage, the same rows the in-memory tables of
:mod:`~minivlm_hf.training.features` hold, except that every row carries its image's regions itself (the collators
read ``region_features`` / ``tags`` from the row when there is no ``RegionStore``):

- ``caption`` / ``retrieval``: one row per caption; ``vqa``: one row per question; ``pretrain``: one row per caption
  and one per question with its most common answer (``source`` "caption" / "qa");
- ``nlvr``: the statement rows as they are (``left_*`` / ``right_*`` region columns).

The stream is not split here: the ``Trainer``'s accelerator gives each rank its own shards (``dispatch_batches`` off,
see ``recipes.training_arguments``). For training it repeats without end (``IterableDataset.repeat``): the
``Trainer`` cannot know how many batches a pass of a stream holds, so it counts a resumed run's steps from the start of
its first "epoch"; one endless epoch makes that count right however many passes a run makes, and ranks whose shards
hold different numbers of rows never wait for each other at a pass boundary. Resuming from a checkpoint replays the
stream up to the checkpoint's step (the shuffle buffer is seeded, so the replay is the same stream).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets

from ..data.streaming import stream_dataset
from .feature_shards import is_feature_dataset

CARRIED = ("region_features", "region_boxes", "region_mask", "tags", "objects", "image_id")


def _carried(batch: dict, i: int) -> dict:
    return {key: batch[key][i] for key in CARRIED if key in batch}


def caption_rows(batch: dict) -> dict:
    rows = []
    for i, captions in enumerate(batch["captions"]):
        image = _carried(batch, i)
        rows += [{**image, "caption": caption, "example_id": f"{image['image_id']}/{k}"}
                 for k, caption in enumerate(captions)]
    return _columns(rows)


def vqa_rows(batch: dict) -> dict:
    rows = []
    for i, questions in enumerate(batch["questions"]):
        image = _carried(batch, i)
        rows += [{**image, "question": q, "answers": a, "question_type": t, "question_id": int(qid)}
                 for q, a, t, qid in zip(questions, batch["answers"][i], batch["question_types"][i],
                                         batch["question_ids"][i])]
    return _columns(rows)


def pretraining_rows(batch: dict) -> dict:
    """OSCAR+ / VinVL's corpus (as :func:`~minivlm_hf.training.features.pretraining_examples`): every caption, and
    every question followed by its most common answer."""
    rows = []
    for i, captions in enumerate(batch["captions"]):
        image = _carried(batch, i)
        rows += [{**image, "caption": caption, "source": "caption"} for caption in captions]
        rows += [{**image, "caption": f"{q} {Counter(a).most_common(1)[0][0]}", "source": "qa"}
                 for q, a in zip(batch["questions"][i], batch["answers"][i])]
    return _columns(rows)


def _columns(rows: list[dict]) -> dict:
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


EXPAND = {"caption": caption_rows, "retrieval": caption_rows, "vqa": vqa_rows, "pretrain": pretraining_rows}


def stream_task_examples(
    stage: str,
    source: str | Path,
    *,
    region_shape: tuple[int, int] | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    repeat: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> datasets.IterableDataset:
    """The ``train`` rows of fusion ``stage`` streamed from the feature folder / Hub dataset repo ``source`` (with
    ``repeat``: again and again, without end).

    ``region_shape``: the model's ``(max_regions, region_feature_size)``; features of another shape raise an error
    naming both. ``shuffle_buffer`` > 0 shuffles the rows through a buffer of that many (seeded with ``seed``; the
    shard order is shuffled too), so the rows of one image do not fill a batch."""
    if stage not in (*EXPAND, "nlvr"):
        raise ValueError(f"stage {stage!r} does not train on region features")
    if shuffle_buffer < 0:
        raise ValueError(f"data.stream_shuffle_buffer must be 0 (no shuffling) or more, got {shuffle_buffer}")
    stream = stream_dataset(source, "train", rank=0, world_size=1, revision=revision, token=token)
    features = stream.features
    if features is None or not is_feature_dataset(features):
        raise ValueError(
            f"data.stream {source} holds no region features, which the {stage} stage trains on: extract them with "
            f"`minivlm-hf data features --detector DIR --scenes {source} --out FEATURES` and set data.stream to "
            "FEATURES"
        )
    prefix = "left_" if stage == "nlvr" else ""
    if f"{prefix}region_features" not in features:
        kind = "NLVR pairs" if stage == "nlvr" else "scenes"
        raise ValueError(f"the {stage} stage trains on the features of {kind}; data.stream {source} holds the other "
                         f"kind (columns: {sorted(features)})")
    shape = tuple(features[f"{prefix}region_features"].shape)
    if region_shape is not None and shape != tuple(region_shape):
        raise ValueError(f"data.stream {source} holds {shape[0]} regions of {shape[1]} features per image, the model "
                         f"takes {region_shape[0]} of {region_shape[1]}: extract them with the model's detector")
    if stage in EXPAND:
        stream = stream.map(EXPAND[stage], batched=True, batch_size=16, remove_columns=list(features))
    if repeat:  # before the shuffle: its buffer keeps mixing across passes, so each pass comes in another order
        stream = stream.repeat(None)
    if shuffle_buffer:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return stream


# manifest key of `data features` -> (recipe key, its default)
TAG_SETTINGS = {"tag_threshold": ("tag_threshold", 0.3), "tag_attributes": ("tag_attributes", False),
                "tag_attribute_threshold": ("tag_attribute_threshold", 0.5), "tag_order": ("tag_order", "score")}


def check_tag_settings(data_config: dict) -> None:
    """A local feature folder records the tag settings it was extracted with; the model trained on it tags images
    at inference with the recipe's, so they must agree."""
    import json

    from .feature_shards import MANIFEST

    manifest = Path(data_config["stream"]) / MANIFEST
    if not manifest.is_file():
        return  # a Hub repo, or a folder written by other tools
    recorded = json.loads(manifest.read_text())
    for key, (recipe_key, default) in TAG_SETTINGS.items():
        if key in recorded and recorded[key] != data_config.get(recipe_key, default):
            raise ValueError(
                f"data.stream {data_config['stream']} was extracted with {key}={recorded[key]!r} but the recipe has "
                f"data.{recipe_key}={data_config.get(recipe_key, default)!r}: set data.{recipe_key} to "
                f"{recorded[key]!r} (the model tags images as its features were tagged) or extract them again"
            )


def stage_stream(stage: str, config: dict, model=None) -> datasets.IterableDataset:
    """The training rows of ``stage`` streamed from the recipe's ``data.stream``, repeated without end: scenes for
    the detector, the stage's rows of a feature folder for a fusion stage (``model``: checks the regions' shape
    against its config)."""
    d = config["data"]
    if stage == "detector":
        stream = stream_dataset(d["stream"], "train", rank=0, world_size=1)
        if stream.features is not None and "image" not in stream.features:
            raise ValueError(f"the detector stage trains on scenes with images; data.stream {d['stream']} has none "
                             f"(columns: {sorted(stream.features)}): stream `minivlm-hf data scenes --format parquet`")
        return stream.repeat(None)
    check_tag_settings(d)
    shape = (model.config.max_regions, model.config.region_feature_size) if model is not None else None
    return stream_task_examples(stage, d["stream"], region_shape=shape, seed=config.get("seed", 0),
                                shuffle_buffer=int(d.get("stream_shuffle_buffer", 0) or 0), repeat=True)


__all__ = ["stage_stream", "stream_task_examples"]
