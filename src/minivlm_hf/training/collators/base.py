"""Shared plumbing of the collators: BERT masking, per-batch seeding, tags, and the fusion-stage base class."""

from __future__ import annotations

import abc
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from ...data.vocab import OBJECT_ID2LABEL
from ...modeling.processing_minivlm import encode_tag_phrases

REGION_KEYS = ("region_features", "region_boxes", "region_mask")


# ---------------------------------------------------------------------------------------------------------------------
# masking helpers
# ---------------------------------------------------------------------------------------------------------------------
def mask_tokens(
    ids: torch.Tensor,
    eligible: torch.Tensor,
    generator: torch.Generator,
    *,
    mask_token_id: int,
    probability: float = 0.15,
    random_token_range: tuple[int, int] = (999, 30522),
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each ``eligible`` token is selected with ``probability``; a selected token becomes ``[MASK]``
    (80%), a random word piece from ``random_token_range`` (10%) or stays unchanged (10%).

    Returns ``(masked_ids, labels)`` with ``labels`` = original id at selected positions, -100 elsewhere."""
    selected = (torch.rand(ids.shape, generator=generator) < probability) & eligible
    return _apply_80_10_10(ids, selected, generator, mask_token_id, random_token_range)


def _apply_80_10_10(ids, selected, generator, mask_token_id, random_token_range):
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    choice = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(random_token_range[0], random_token_range[1], ids.shape, generator=generator)
    masked = ids.clone()
    masked = torch.where(selected & (choice < 0.8), torch.full_like(ids, mask_token_id), masked)
    masked = torch.where(selected & (choice >= 0.8) & (choice < 0.9), random_ids, masked)
    return masked, labels


def _stable_hash(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def _row_key(row: dict) -> Any:
    for name in ("example_id", "question_id"):
        if name in row and row[name] is not None:
            return (name, row[name])
    ident = row.get("image_index", row.get("image_id", row.get("pair_id")))
    text = row.get("caption", row.get("question", row.get("sentence")))
    return (ident, text)


def _tags_of(row: dict, tag_source: str, prefix: str = "") -> list[str]:
    """The tags of one image of ``row``; ``prefix`` names the image of a pair (``"left_"`` / ``"right_"``)."""
    if tag_source == "gt":
        column = f"{prefix}objects"
        if column not in row:
            raise ValueError(f"tag_source='gt' needs rows with the scenes' {column!r} column")
        names, seen = [], set()
        for category in row[column]["category_id"]:
            name = OBJECT_ID2LABEL[int(category)]
            if name not in seen:
                seen.add(name)
                names.append(name)
        return names
    if tag_source == "none":
        return []
    return list(row.get("tags") or [])


def _to_tensor(value, dtype=None) -> torch.Tensor:
    tensor = value if torch.is_tensor(value) else torch.as_tensor(value)
    return tensor.to(dtype) if dtype is not None else tensor


class CollatorEpochCallback(TrainerCallback):
    """Keeps ``collator.epoch`` equal to the Trainer's current epoch, so masks change from epoch to epoch and a
    resumed run sees the same masks as an uninterrupted one."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


# ---------------------------------------------------------------------------------------------------------------------
# fusion stages: shared plumbing
# ---------------------------------------------------------------------------------------------------------------------
class FusionCollator(abc.ABC):
    """Base of the fusion-stage collators (text / tags / regions encoding, seeding). See the module docstring.

    Args:
        tokenizer: BERT uncased tokenizer.
        regions: a ``RegionStore`` indexed by the rows' ``image_index`` (optional).
        image_processor: for rows that carry pixels (``image``) instead of features (optional).
        max_text_length / max_tag_length: as in ``MiniVLMConfig``.
        max_regions: keep at most this many regions (default: all).
        tag_source: ``"detected"`` (the rows' / store's ``tags``), ``"gt"`` (the scenes' objects) or ``"none"``.
        seed, generator: randomness (see the module docstring).
    """

    def __init__(
        self,
        tokenizer,
        regions=None,
        image_processor=None,
        max_text_length: int = 40,
        max_tag_length: int = 30,
        max_regions: int | None = None,
        tag_source: str = "detected",
        seed: int = 0,
        generator: torch.Generator | None = None,
    ):
        if tag_source not in ("detected", "gt", "none"):
            raise ValueError(f"tag_source must be 'detected', 'gt' or 'none', got {tag_source!r}")
        self.tokenizer = tokenizer
        self.regions = regions
        self.image_processor = image_processor
        self.max_text_length = max_text_length
        self.max_tag_length = max_tag_length
        self.max_regions = max_regions
        self.tag_source = tag_source
        self.seed = seed
        self.epoch = 0
        self.generator = generator
        self.pad_id = tokenizer.pad_token_id
        self.cls_id, self.sep_id, self.mask_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
        self.random_token_range = (999 if len(tokenizer) > 2000 else 4, len(tokenizer))
        self._tag_cache: dict[tuple, list[int]] = {}

    # -- randomness -----------------------------------------------------------------------------------------------
    def _generator(self, rows: Sequence[dict]) -> torch.Generator:
        if self.generator is not None:
            return self.generator
        return torch.Generator().manual_seed(_stable_hash(type(self).__name__, self.seed, self.epoch,
                                                          [_row_key(r) for r in rows]))

    # -- text -----------------------------------------------------------------------------------------------------
    @staticmethod
    def pick_captions(rows: Sequence[dict], generator: torch.Generator, task: str) -> list[str]:
        """Each row's ``caption``, or one of its ``captions`` drawn with ``generator``; a clear error naming ``task``
        for a row with neither."""
        captions = []
        for row in rows:
            if row.get("caption") is not None:
                captions.append(row["caption"])
            elif row.get("captions"):
                captions.append(row["captions"][int(torch.randint(len(row["captions"]), (1,), generator=generator))])
            else:
                raise ValueError(f"{task} rows need 'caption' or 'captions', got {sorted(row)}")
        return captions

    def _word_pieces(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def encode_text(self, texts: list[str], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] text [SEP]`` (truncated to ``max_text_length``), padded to the longest or to ``pad_to``."""
        rows = [[self.cls_id] + ids[: self.max_text_length - 2] + [self.sep_id] for ids in self._word_pieces(texts)]
        return self._pad(rows, pad_to)

    def encode_tags(self, tag_lists: list[list[str]]) -> dict[str, torch.Tensor]:
        """``tag … [SEP]`` word pieces (truncated to ``max_tag_length``) → ``tag_ids``, ``tag_attention_mask``."""
        rows = []
        for tags in tag_lists:
            key = tuple(tags)
            if key not in self._tag_cache:
                self._tag_cache[key] = encode_tag_phrases(self.tokenizer, list(tags), self.max_tag_length)
            rows.append(self._tag_cache[key])
        ids, mask = self._pad(rows)
        return {"tag_ids": ids, "tag_attention_mask": mask}

    def _pad(self, rows: list[list[int]], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(pad_to or 0, max(len(r) for r in rows))
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    def _special(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids == self.cls_id) | (ids == self.sep_id) | (ids == self.pad_id)

    # -- images ---------------------------------------------------------------------------------------------------
    def image_inputs(self, rows: Sequence[dict], side: str | None = None) -> tuple[dict, list[list] | None]:
        """Region tensors (or pixels) for ``rows`` and the tag phrases of each image. ``side`` = ``"left"`` / ``"right"`` reads NLVR columns (``left_index``,
        ``left_region_features``, ``left_image`` …)."""
        prefix = f"{side}_" if side else ""
        index_key = f"{side}_index" if side else "image_index"
        first = rows[0]
        if f"{prefix}region_features" in first:
            feats = [_to_tensor(r[f"{prefix}region_features"], torch.float32) for r in rows]
            boxes = [_to_tensor(r[f"{prefix}region_boxes"], torch.float32) for r in rows]
            masks = [
                _to_tensor(r[f"{prefix}region_mask"], torch.bool) if r.get(f"{prefix}region_mask") is not None
                else torch.ones(f.shape[0], dtype=torch.bool) for r, f in zip(rows, feats)
            ]
            inputs = _stack_regions(feats, boxes, masks)
            tags = [list(r.get(f"{prefix}tags") or []) for r in rows]
            if self.tag_source == "gt":
                tags = [_tags_of(r, "gt", prefix) for r in rows]
        elif index_key in first and self.regions is not None:
            inputs, tags = self.regions.gather([int(r[index_key]) for r in rows])
            if self.tag_source == "gt":
                tags = [_tags_of(r, "gt", prefix) for r in rows]
        elif f"{prefix}image" in first and self.image_processor is not None:
            encoded = self.image_processor(images=[r[f"{prefix}image"] for r in rows], return_tensors="pt")
            inputs = {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"]}
            tags = [_tags_of(r, "gt", prefix) for r in rows] if self.tag_source == "gt" else None
            return inputs, tags
        else:
            raise ValueError(
                f"rows carry no image input: expected '{prefix}region_features' (precomputed features), "
                f"'{index_key}' with a RegionStore (regions=...), or '{prefix}image' with an image_processor; "
                f"got columns {sorted(first)}"
            )
        if self.tag_source == "none":
            tags = [[] for _ in rows]
        if self.max_regions is not None:
            inputs = {k: v[:, : self.max_regions] for k, v in inputs.items()}
        return inputs, tags

    @abc.abstractmethod
    def __call__(self, rows: Sequence[dict]) -> dict:
        """Rows of a stage's table → the model's keyword arguments (each stage's subclass)."""


def _stack_regions(feats: list[torch.Tensor], boxes: list[torch.Tensor], masks: list[torch.Tensor]) -> dict:
    count = max(f.shape[0] for f in feats)
    dim = feats[0].shape[1]
    out_f = torch.zeros((len(feats), count, dim))
    out_b = torch.zeros((len(feats), count, 4))
    out_m = torch.zeros((len(feats), count), dtype=torch.bool)
    for i, (f, b, m) in enumerate(zip(feats, boxes, masks)):
        out_f[i, : f.shape[0]] = f
        out_b[i, : b.shape[0]] = b
        out_m[i, : m.shape[0]] = m
    return {"region_features": out_f, "region_boxes": out_b, "region_mask": out_m}


def _take_rows(inputs: dict, index: torch.Tensor) -> dict:
    return {k: v[index] for k, v in inputs.items()}
