"""Collators of the downstream tasks: VQA, image-text retrieval (training and scoring) and NLVR."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...modeling.processing_minivlm import vqa_soft_scores
from .base import REGION_KEYS, FusionCollator, _tags_of, _take_rows

NLVR_SIDES = ("left", "right")


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
    """Image-text matching batches: each row (image, ``caption``) gives the matched pair (label 1) followed by one
    negative (label 0). With probability ``caption_swap`` (0.5) the negative's caption is another image's caption,
    otherwise its image (regions + tags) is another row's image. Donors come from the batch (a different image and a
    different caption). With probability ``hard_negatives`` the donor is a hard one: the row whose caption shares the
    most words with this row's (Jaccard over word sets, ties at random), e.g. "a red circle above a blue square"
    against "a red circle above a green square", so the model must read the details; otherwise any donor at random.

    The output has ``2 × batch`` rows, ``[positive, negative]`` per input row; ``self.last_swaps`` lists
    ``(row, kind, donor_row)`` per negative, in output order."""

    def __init__(self, tokenizer, *, caption_swap: float = 0.5, hard_negatives: float = 0.0, **kwargs):
        super().__init__(tokenizer, **kwargs)
        if not 0.0 <= hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must be a probability in [0, 1], got {hard_negatives}")
        self.caption_swap = caption_swap
        self.hard_negatives = hard_negatives
        self.last_swaps: list[tuple[int, str, int]] = []

    @staticmethod
    def _hardest(i: int, donors: list[int], words: list[set]) -> list[int]:
        """The donors whose captions overlap most with caption ``i`` (Jaccard of word sets)."""
        overlap = [len(words[i] & words[j]) / max(1, len(words[i] | words[j])) for j in donors]
        best = max(overlap)
        return [j for j, o in zip(donors, overlap) if o == best]

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
        draws = torch.rand(len(rows), generator=g)
        hard = torch.rand(len(rows), generator=g) < self.hard_negatives
        words = [set(c.split()) for c in captions] if self.hard_negatives else []
        for i in range(len(rows)):
            texts.append(captions[i])
            image_rows.append(i)
            labels.append(1)
            donors = [j for j in range(len(rows)) if image_keys[j] != image_keys[i] and captions[j] != captions[i]]
            if not donors:  # every row shows the same image: fall back to any other caption
                donors = [j for j in range(len(rows)) if captions[j] != captions[i]] or [(i + 1) % len(rows)]
            pool = self._hardest(i, donors, words) if hard[i] else donors
            j = pool[int(torch.randint(len(pool), (1,), generator=g))]
            if float(draws[i]) < self.caption_swap:
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
            sides = [(None, [_tags_of(r, "gt", f"{side}_") for r in rows] if self.tag_source == "gt" else None)
                     for side in NLVR_SIDES]
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
