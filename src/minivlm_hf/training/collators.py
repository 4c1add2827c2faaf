"""Data collators of every training stage: plain callables ``rows -> batch dict`` usable as ``Trainer(data_collator=)``.

Region inputs of the fusion stages come from one of three places, tried in this order for each batch:

1. the rows themselves (``region_features`` ``[K, F]``, ``region_boxes`` ``[K, 4]`` normalised xyxy, ``region_mask``
   ``[K]``, ``tags`` (detected class names) and ``tag_regions`` (the region each tag names)), e.g. rows of a
   precomputed-feature dataset
   (:func:`minivlm_hf.training.features.extract_features`);
2. a :class:`~minivlm_hf.training.features.RegionStore` passed as ``regions=``, indexed by the row's ``image_index``
   (task rows then stay small: an image's features are stored once, not once per caption / question);
3. pixels: rows of the scenes dataset (``image`` column) and an ``image_processor=``; the model then runs its TEE.

Randomness (token masking, polluted pairs, negatives) is drawn from a ``torch.Generator`` seeded from the collator's
``seed``, its ``epoch`` and the identities of the rows in the batch, never from global state. A collator therefore
returns the same batch for the same rows, which is what makes ``resume_from_checkpoint`` reproduce an uninterrupted
run exactly (the Trainer skips the already-seen batches without calling the collator). Set ``epoch`` (e.g. with
:class:`CollatorEpochCallback`) to draw new masks every epoch. ``generator=`` overrides this with an explicit
generator (then successive calls differ).
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from ..data.scenes import detection_annotations
from ..data.vocab import OBJECT_ID2LABEL
from ..modeling.processing_minivlm import encode_tag_phrases, vqa_soft_scores
from .features import tag_pairs

REGION_KEYS = ("region_features", "region_boxes", "region_mask")
_COUNT_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
NLVR_SIDES = ("left", "right")


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


def _tags_of(row: dict, tag_source: str) -> list[str]:
    if tag_source == "gt":
        if "objects" not in row:
            raise ValueError("tag_source='gt' needs rows with the scenes' 'objects' column")
        names, seen = [], set()
        for category in row["objects"]["category_id"]:
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
# detector
# ---------------------------------------------------------------------------------------------------------------------
class DetectionCollator:
    """Scene rows (``image`` + ``objects``) -> ``pixel_values``, ``pixel_mask`` and ``labels`` (one dict per image:
    ``class_labels``, ``boxes`` normalised cxcywh, ``attribute_labels`` padded with -1, ``orig_size``, ``size``) for
    [`TEEForObjectDetection`]. ``hflip_probability`` > 0 mirrors images (and boxes) at random (a detector-only
    augmentation: shapes, colours and sizes do not change under a mirror)."""

    def __init__(self, image_processor, image_column: str = "image", hflip_probability: float = 0.0, seed: int = 0,
                 generator: torch.Generator | None = None):
        self.image_processor = image_processor
        self.image_column = image_column
        self.hflip_probability = hflip_probability
        self.seed = seed
        self.epoch = 0
        self.generator = generator

    def __call__(self, rows: Sequence[dict]) -> dict:
        if not rows:
            raise ValueError("empty batch")
        images, annotations = [], []
        generator = self.generator or torch.Generator().manual_seed(
            _stable_hash(self.seed, self.epoch, [_row_key(r) for r in rows])
        )
        for row in rows:
            if self.image_column not in row or "objects" not in row:
                raise ValueError(f"detector rows need '{self.image_column}' and 'objects' columns, got {sorted(row)}")
            image, target = row[self.image_column], detection_annotations(row)
            if self.hflip_probability and float(torch.rand((), generator=generator)) < self.hflip_probability:
                from PIL import ImageOps

                image = ImageOps.mirror(image.convert("RGB"))
                width = image.size[0]
                for ann in target["annotations"]:
                    x, y, w, h = ann["bbox"]
                    ann["bbox"] = [width - x - w, y, w, h]
            images.append(image)
            annotations.append(target)
        encoded = self.image_processor(images=images, annotations=annotations, return_tensors="pt")
        labels = []
        for label in encoded["labels"]:
            labels.append({k: _to_tensor(v) for k, v in label.items()})
        return {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"], "labels": labels}


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
        tag_geometry: also return ``tag_region_index`` (the region each tag piece names) for a model with
            ``MiniVLMConfig.tag_geometry``; off by default, since other models do not take it.
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
        tag_geometry: bool = False,
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
        self.tag_geometry = tag_geometry
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
    def _word_pieces(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def encode_text(self, texts: list[str], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] text [SEP]`` (truncated to ``max_text_length``), padded to the longest or to ``pad_to``."""
        rows = [[self.cls_id] + ids[: self.max_text_length - 2] + [self.sep_id] for ids in self._word_pieces(texts)]
        return self._pad(rows, pad_to)

    def encode_tags(self, tag_lists: list[list]) -> dict[str, torch.Tensor]:
        """``tag … [SEP]`` word pieces (truncated to ``max_tag_length``) → ``tag_ids``, ``tag_attention_mask`` and
        with ``tag_geometry`` ``tag_region_index`` (the region each piece names, -1 for [SEP], padding and tags without
        a region). A tag is a phrase or a ``(phrase, region index)`` pair (see :meth:`image_inputs`)."""
        rows, regions = [], []
        for tags in tag_lists:
            key = tuple(tags)
            if key not in self._tag_cache:
                phrases = [t[0] if isinstance(t, tuple) else t for t in tags]
                index = [t[1] if isinstance(t, tuple) else -1 for t in tags]
                self._tag_cache[key] = encode_tag_phrases(self.tokenizer, phrases, self.max_tag_length, index)
            rows.append(self._tag_cache[key][0])
            regions.append(self._tag_cache[key][1])
        ids, mask = self._pad(rows)
        if not self.tag_geometry:
            return {"tag_ids": ids, "tag_attention_mask": mask}
        region_index = torch.full_like(ids, -1)
        for i, row in enumerate(regions):
            region_index[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return {"tag_ids": ids, "tag_attention_mask": mask, "tag_region_index": region_index}

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
        """Region tensors (or pixels) for ``rows`` and the tags of each image: ``(phrase, region index)`` pairs when
        the features say which region each tag names (``tag_regions``), else phrases (ground-truth tags name no
        detected region). ``side`` = ``"left"`` / ``"right"`` reads NLVR columns (``left_index``,
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
            tags = [tag_pairs(r.get(f"{prefix}tags"), r.get(f"{prefix}tag_regions")) for r in rows]
            if self.tag_source == "gt":
                tags = [_tags_of(r, "gt") for r in rows]
        elif index_key in first and self.regions is not None:
            inputs, tags = self.regions.gather([int(r[index_key]) for r in rows])
            if self.tag_source == "gt":
                tags = [_tags_of(r, "gt") for r in rows]
        elif f"{prefix}image" in first and self.image_processor is not None:
            encoded = self.image_processor(images=[r[f"{prefix}image"] for r in rows], return_tensors="pt")
            inputs = {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"]}
            tags = [_tags_of(r, "gt") for r in rows] if self.tag_source == "gt" else None
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


# ---------------------------------------------------------------------------------------------------------------------
# pre-training
# ---------------------------------------------------------------------------------------------------------------------
class PreTrainingCollator(FusionCollator):
    """OSCAR+ pre-training batches: masked text and tag tokens + polluted pairs for the contrastive loss.

    Each row is (image, caption): ``caption`` (or one of ``captions``, drawn at random) with the image's regions and
    tags. 15% of the text and of the tag tokens are selected (80% [MASK] / 10% random / 10% unchanged) →
    ``labels`` / ``tag_labels``. Pollution (DESIGN §4, 3-way): with probability ``caption_pollution`` (0.25) the
    caption is replaced by another image's caption (``contrastive_labels`` 2); with probability
    ``pollution - caption_pollution`` (0.25) the tags are replaced by another image's tags (label 1); otherwise the
    pair stays matched (0). With ``num_contrastive_labels=2`` both kinds are label 1. Donors are other rows of the
    batch whose image differs and whose replaced content differs; without one the pair stays matched.
    ``self.last_swaps`` lists ``(row, kind, donor_row)`` of the last batch. With ``mask_polluted=False`` the
    polluted rows carry no masked-token labels (all -100): their text or tags describe another image, and predicting
    masked words from a mismatched image teaches the model to ignore the image.
    """

    def __init__(self, tokenizer, *, mask_probability: float = 0.15, pollution: float = 0.5,
                 caption_pollution: float = 0.25, num_contrastive_labels: int = 3, mask_polluted: bool = True,
                 **kwargs):
        super().__init__(tokenizer, **kwargs)
        if not 0 <= caption_pollution <= pollution <= 1:
            raise ValueError(f"need 0 <= caption_pollution <= pollution <= 1, got {caption_pollution}, {pollution}")
        if num_contrastive_labels not in (2, 3):
            raise ValueError(f"num_contrastive_labels must be 2 or 3, got {num_contrastive_labels}")
        self.mask_probability = mask_probability
        self.pollution = pollution
        self.caption_pollution = caption_pollution
        self.num_contrastive_labels = num_contrastive_labels
        self.mask_polluted = mask_polluted
        self.last_swaps: list[tuple[int, str, int]] = []

    def __call__(self, rows: Sequence[dict]) -> dict:
        if not rows:
            raise ValueError("empty batch")
        g = self._generator(rows)
        captions = []
        for row in rows:
            if row.get("caption") is not None:
                captions.append(row["caption"])
            elif row.get("captions"):
                captions.append(row["captions"][int(torch.randint(len(row["captions"]), (1,), generator=g))])
            else:
                raise ValueError(f"pre-training rows need 'caption' or 'captions', got {sorted(row)}")
        image_inputs, tags = self.image_inputs(rows)
        if tags is None:
            raise ValueError("pre-training needs tags: use precomputed features or tag_source='gt'")
        image_keys = [row.get("image_index", row.get("image_id", i)) for i, row in enumerate(rows)]
        texts, tag_lists = list(captions), [list(t) for t in tags]
        phrases = [[t[0] if isinstance(t, tuple) else t for t in ts] for ts in tags]
        contrastive = torch.zeros(len(rows), dtype=torch.long)
        self.last_swaps = []
        draws = torch.rand(len(rows), generator=g)
        for i in range(len(rows)):
            u = float(draws[i])
            if u < self.caption_pollution:
                kind = "caption"
                donors = [j for j in range(len(rows)) if image_keys[j] != image_keys[i] and captions[j] != captions[i]]
            elif u < self.pollution:
                kind = "tags"
                donors = [j for j in range(len(rows)) if image_keys[j] != image_keys[i] and phrases[j] != phrases[i]]
            else:
                continue
            if not donors:
                continue
            j = donors[int(torch.randint(len(donors), (1,), generator=g))]
            if kind == "caption":
                texts[i] = captions[j]
                contrastive[i] = 2 if self.num_contrastive_labels == 3 else 1
            else:
                tag_lists[i] = list(tags[j])
                contrastive[i] = 1
            self.last_swaps.append((i, kind, j))

        input_ids, attention_mask = self.encode_text(texts)
        tags_encoded = self.encode_tags(tag_lists)
        tag_ids = tags_encoded["tag_ids"]
        common = dict(mask_token_id=self.mask_id, probability=self.mask_probability,
                      random_token_range=self.random_token_range)
        masked_ids, labels = mask_tokens(input_ids, ~self._special(input_ids), g, **common)
        masked_tags, tag_labels = mask_tokens(tag_ids, ~self._special(tag_ids), g, **common)
        if not self.mask_polluted:
            polluted = contrastive != 0
            labels[polluted] = -100
            tag_labels[polluted] = -100
        return {
            "input_ids": masked_ids,
            "attention_mask": attention_mask,
            **tags_encoded,
            "tag_ids": masked_tags,
            **image_inputs,
            "labels": labels,
            "tag_labels": tag_labels,
            "contrastive_labels": contrastive,
        }


# ---------------------------------------------------------------------------------------------------------------------
# captioning
# ---------------------------------------------------------------------------------------------------------------------
class CaptioningCollator(FusionCollator):
    """OSCAR captioning batches: ``[CLS] caption [SEP]`` padded to the batch's longest caption; ``round(15%)`` (at least one,
    at most ``max_masked_tokens``) of the caption tokens ([SEP] included, so the model learns to stop) are selected
    and replaced 80/10/10 → ``labels`` at those positions, -100 elsewhere; tags as ``tag_ids``. With
    ``objective="next_token"`` (for ``config.caption_objective="next_token"``) nothing is masked: ``labels`` are the
    ``input_ids`` with -100 at padding.

    Rows: ``caption`` (or ``captions``, one drawn at random) + image inputs. With ``for_generation=True`` the batch
    has no caption at all (image inputs and tags); ``return_image_index=True`` adds the rows' ``image_index`` (for
    :class:`~minivlm_hf.training.trainers.CaptioningTrainer`, which pops it before the model sees the batch)."""

    def __init__(self, tokenizer, *, mask_probability: float = 0.15, max_masked_tokens: int | None = 3,
                 objective: str = "masked_tokens", for_generation: bool = False, return_image_index: bool = False,
                 **kwargs):
        super().__init__(tokenizer, **kwargs)
        if objective not in ("masked_tokens", "next_token"):
            raise ValueError(f"objective must be 'masked_tokens' or 'next_token', got {objective!r}")
        self.objective = objective
        self.mask_probability = mask_probability
        self.max_masked_tokens = max_masked_tokens
        self.for_generation = for_generation
        self.return_image_index = return_image_index

    def __call__(self, rows: Sequence[dict]) -> dict:
        if not rows:
            raise ValueError("empty batch")
        g = self._generator(rows)
        image_inputs, tags = self.image_inputs(rows)
        batch = dict(image_inputs)
        if tags is not None:
            batch.update(self.encode_tags(tags))
        if self.return_image_index:
            batch["image_index"] = torch.tensor([int(r.get("image_index", i)) for i, r in enumerate(rows)])
        if self.for_generation:
            return batch
        captions = []
        for row in rows:
            if row.get("caption") is not None:
                captions.append(row["caption"])
            elif row.get("captions"):
                captions.append(row["captions"][int(torch.randint(len(row["captions"]), (1,), generator=g))])
            else:
                raise ValueError(f"captioning rows need 'caption' or 'captions', got {sorted(row)}")
        input_ids, attention_mask = self.encode_text(captions)
        if self.objective == "next_token":
            batch.update(input_ids=input_ids, attention_mask=attention_mask,
                         labels=input_ids.masked_fill(attention_mask == 0, -100))
            return batch
        selected = torch.zeros_like(input_ids, dtype=torch.bool)
        for i in range(len(rows)):
            length = int(attention_mask[i].sum())
            candidates = torch.arange(1, length)  # caption words and the closing [SEP]
            count = max(1, round(self.mask_probability * candidates.numel()))
            if self.max_masked_tokens:
                count = min(count, self.max_masked_tokens)
            chosen = candidates[torch.randperm(candidates.numel(), generator=g)[:count]]
            selected[i, chosen] = True
        masked, labels = _apply_80_10_10(input_ids, selected, g, self.mask_id, self.random_token_range)
        batch.update(input_ids=masked, attention_mask=attention_mask, labels=labels)
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------------------------------------
class VQACollator(FusionCollator):
    """VQA batches: ``[CLS] question [SEP]`` + image inputs; ``labels`` = VQA v2 soft scores over ``answer2id``
    (min(#annotators giving the answer / 3, 1)) from the rows' ``answers`` (the annotator answers)."""

    def __init__(self, tokenizer, *, answer2id: dict[str, int], **kwargs):
        super().__init__(tokenizer, **kwargs)
        if not answer2id:
            raise ValueError("answer2id (the answer vocabulary) is empty")
        self.answer2id = dict(answer2id)

    def __call__(self, rows: Sequence[dict]) -> dict:
        if not rows:
            raise ValueError("empty batch")
        for row in rows:
            if "question" not in row:
                raise ValueError(f"VQA rows need 'question' (and 'answers' for labels), got {sorted(row)}")
        image_inputs, tags = self.image_inputs(rows)
        input_ids, attention_mask = self.encode_text([r["question"] for r in rows])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **image_inputs}
        if tags is not None:
            batch.update(self.encode_tags(tags))
        if all(r.get("answers") is not None for r in rows):
            answers = [[a] if isinstance(a, str) else list(a) for a in (r["answers"] for r in rows)]
            batch["labels"] = vqa_soft_scores(answers, self.answer2id)
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# image-text retrieval
# ---------------------------------------------------------------------------------------------------------------------
class RetrievalCollator(FusionCollator):
    """Image-text matching batches: each row (image, ``caption``) gives the matched pair (label 1) followed by
    ``negatives_per_positive`` negatives (label 0). For each negative, with probability ``caption_swap`` (0.5), the
    caption is another image's caption, otherwise the image (regions + tags) is another row's image. Donors come from
    the batch (a different image and a different caption; distinct donors within a row's group while the batch has
    enough). With probability ``hard_negatives`` the donor is a hard one: the row whose caption shares the most words
    with this row's (Jaccard over word sets, ties at random), e.g. "a red circle above a blue square" against "a red
    circle above a green square", so the model must read the details; otherwise any donor at random. With
    probability ``perturbed_negatives`` the negative is instead the row's own caption with one word of
    ``perturb_words`` replaced (a count: "three objects including a red star" → "six objects including …"; a
    spatial word: "left" ↔ "right", "above" ↔ "below"), the same image: a caption that differs from the truth only in
    the count or the relation, which the model must then check; captions without such a word get a donor instead.

    The output has ``(1 + negatives_per_positive) × batch`` rows in groups ``[positive, negatives…]`` (the layout
    ``config.retrieval_loss="listwise"`` expects); ``self.last_swaps`` lists ``(row, kind, donor_row)`` per negative,
    in output order."""

    #: Counts are swapped among themselves ("one" is left alone: it also means "a"), spatial words with their opposite.
    PERTURB_WORDS: dict[str, tuple[str, ...]] = {
        **{w: tuple(v for v in _COUNT_WORDS if v != w) for w in _COUNT_WORDS},
        "left": ("right",), "right": ("left",), "above": ("below",), "below": ("above",),
    }

    def __init__(self, tokenizer, *, caption_swap: float = 0.5, hard_negatives: float = 0.0,
                 perturbed_negatives: float = 0.0, perturb_words: dict[str, Sequence[str]] | None = None,
                 negatives_per_positive: int = 1, **kwargs):
        super().__init__(tokenizer, **kwargs)
        for name, value in (("hard_negatives", hard_negatives), ("perturbed_negatives", perturbed_negatives)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if int(negatives_per_positive) < 1:
            raise ValueError(f"negatives_per_positive must be >= 1, got {negatives_per_positive}")
        self.caption_swap = caption_swap
        self.hard_negatives = hard_negatives
        self.perturbed_negatives = perturbed_negatives
        self.perturb_words = {k: tuple(v) for k, v in (perturb_words or self.PERTURB_WORDS).items()}
        self.negatives_per_positive = int(negatives_per_positive)
        self.last_swaps: list[tuple[int, str, int]] = []

    @staticmethod
    def _hardest(i: int, donors: list[int], words: list[set]) -> list[int]:
        """The donors whose captions overlap most with caption ``i`` (Jaccard of word sets)."""
        overlap = [len(words[i] & words[j]) / max(1, len(words[i] | words[j])) for j in donors]
        best = max(overlap)
        return [j for j, o in zip(donors, overlap) if o == best]

    def perturb(self, caption: str, generator: torch.Generator) -> str | None:
        """``caption`` with one of its ``perturb_words`` replaced by one of its alternatives (None if it has none)."""
        words = caption.split()
        spots = [k for k, w in enumerate(words) if self.perturb_words.get(w)]
        if not spots:
            return None
        k = spots[int(torch.randint(len(spots), (1,), generator=generator))]
        options = self.perturb_words[words[k]]
        words[k] = options[int(torch.randint(len(options), (1,), generator=generator))]
        return " ".join(words)

    def __call__(self, rows: Sequence[dict]) -> dict:
        if len(rows) < 2:
            raise ValueError("retrieval batches need at least 2 rows (negatives are drawn from the batch)")
        g = self._generator(rows)
        captions = [r["caption"] if r.get("caption") is not None else None for r in rows]
        if any(c is None for c in captions):
            raise ValueError("retrieval rows need a 'caption'")
        image_inputs, tags = self.image_inputs(rows)
        image_keys = [row.get("image_index", row.get("image_id", i)) for i, row in enumerate(rows)]
        texts, image_rows, labels = [], [], []
        self.last_swaps = []
        per_row = self.negatives_per_positive
        draws = torch.rand(len(rows), per_row, generator=g)
        hard = torch.rand(len(rows), per_row, generator=g) < self.hard_negatives
        words = [set(c.split()) for c in captions] if self.hard_negatives else []
        # drawn only when enabled, so that the other settings keep their random stream
        perturbed = torch.rand(len(rows), per_row, generator=g) < self.perturbed_negatives if self.perturbed_negatives \
            else None
        for i in range(len(rows)):
            texts.append(captions[i])
            image_rows.append(i)
            labels.append(1)
            donors = [j for j in range(len(rows)) if image_keys[j] != image_keys[i] and captions[j] != captions[i]]
            if not donors:  # every row shows the same image: fall back to any other caption
                donors = [j for j in range(len(rows)) if captions[j] != captions[i]] or [(i + 1) % len(rows)]
            used: set[int] = set()
            for n in range(per_row):
                text = self.perturb(captions[i], g) if perturbed is not None and perturbed[i, n] else None
                if text is not None:
                    texts.append(text)
                    image_rows.append(i)
                    labels.append(0)
                    self.last_swaps.append((i, "perturbed", i))
                    continue
                pool = [j for j in donors if j not in used] or donors
                if hard[i, n]:
                    pool = self._hardest(i, pool, words)
                j = pool[int(torch.randint(len(pool), (1,), generator=g))]
                used.add(j)
                if float(draws[i, n]) < self.caption_swap:
                    texts.append(captions[j])
                    image_rows.append(i)
                    self.last_swaps.append((i, "caption", j))
                else:
                    texts.append(captions[i])
                    image_rows.append(j)
                    self.last_swaps.append((i, "image", j))
                labels.append(0)
        index = torch.tensor(image_rows)
        input_ids, attention_mask = self.encode_text(texts)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **_take_rows(image_inputs, index)}
        if tags is not None:
            batch.update(self.encode_tags([tags[k] for k in image_rows]))
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch


class RetrievalScoringCollator(FusionCollator):
    """Rows ``(image_index, caption)`` → scoring inputs without negatives (used to rank candidates)."""

    def __call__(self, rows: Sequence[dict]) -> dict:
        image_inputs, tags = self.image_inputs(rows)
        input_ids, attention_mask = self.encode_text([r["caption"] for r in rows])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **image_inputs}
        if tags is not None:
            batch.update(self.encode_tags(tags))
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# NLVR
# ---------------------------------------------------------------------------------------------------------------------
class NLVRCollator(FusionCollator):
    """NLVR2-style batches: the statement (``sentence``) as ``input_ids`` ``[B, L]`` and both images' inputs stacked
    as ``[B, 2, ...]`` (``region_features`` ``[B, 2, K, F]``, ``region_boxes`` ``[B, 2, K, 4]``, ``region_mask``
    ``[B, 2, K]``, ``tag_ids`` / ``tag_attention_mask`` ``[B, 2, T]``, or ``pixel_values`` ``[B, 2, 3, H, W]``);
    ``labels`` ``[B]`` (1 = true). Image columns are prefixed ``left_`` / ``right_`` (``left_index`` …)."""

    def __call__(self, rows: Sequence[dict]) -> dict:
        if not rows:
            raise ValueError("empty batch")
        batch_size = len(rows)
        input_ids, attention_mask = self.encode_text([r["sentence"] for r in rows])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        pixel_mode = (
            "left_region_features" not in rows[0]
            and not ("left_index" in rows[0] and self.regions is not None)
            and "left_image" in rows[0]
            and self.image_processor is not None
        )
        if pixel_mode:  # both images of all pairs in one call, so they share one padded size
            pixels = self.image_processor(
                images=[r[f"{s}_image"] for r in rows for s in NLVR_SIDES], return_tensors="pt"
            )
            shape = pixels["pixel_values"].shape
            batch["pixel_values"] = pixels["pixel_values"].view(batch_size, 2, *shape[1:])
            batch["pixel_mask"] = pixels["pixel_mask"].view(batch_size, 2, *shape[2:])
            sides = [(None, None), (None, None)]
        else:
            sides = [self.image_inputs(rows, side=side) for side in NLVR_SIDES]
            for key in REGION_KEYS:
                left, right = sides[0][0][key], sides[1][0][key]
                count = max(left.shape[1], right.shape[1])
                batch[key] = torch.stack([_pad_dim1(left, count), _pad_dim1(right, count)], dim=1)
        if sides[0][1] is not None:
            encoded = self.encode_tags([t for pair in zip(sides[0][1], sides[1][1]) for t in pair])
            batch.update({key: value.view(batch_size, 2, -1) for key, value in encoded.items()})
        if all(r.get("label") is not None for r in rows):
            batch["labels"] = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
        return batch


def _pad_dim1(tensor: torch.Tensor, count: int) -> torch.Tensor:
    if tensor.shape[1] == count:
        return tensor
    pad = torch.zeros((tensor.shape[0], count - tensor.shape[1], *tensor.shape[2:]), dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=1)


__all__ = [
    "CaptioningCollator",
    "CollatorEpochCallback",
    "DetectionCollator",
    "FusionCollator",
    "NLVRCollator",
    "PreTrainingCollator",
    "RetrievalCollator",
    "RetrievalScoringCollator",
    "VQACollator",
    "mask_tokens",
]
