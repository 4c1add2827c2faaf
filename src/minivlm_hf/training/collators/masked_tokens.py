"""Collators of the masked-token stages: OSCAR+ pre-training and captioning."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import FusionCollator, _apply_80_10_10, mask_tokens


# ---------------------------------------------------------------------------------------------------------------------
# pre-training
# ---------------------------------------------------------------------------------------------------------------------
class PreTrainingCollator(FusionCollator):
    """OSCAR+ pre-training batches: masked text and tag tokens + polluted pairs for the contrastive loss.

    Each row is (image, caption): ``caption`` (or one of ``captions``, drawn at random) with the image's regions and
    tags; a caption is only swapped for one of the same ``source`` (e.g. question-answer text for question-answer).
    15% of the text and of the tag tokens are selected (80% [MASK] / 10% random / 10% unchanged) →
    ``labels`` / ``tag_labels``. Pollution (OSCAR+'s 3-way contrastive task): with probability ``caption_pollution``
    (0.25) the caption is replaced by another image's caption (``contrastive_labels`` 2); with probability
    ``pollution - caption_pollution`` (0.25) the tags are replaced by another image's tags (label 1); otherwise the
    pair stays matched (0). Donors are other rows of the batch whose image differs and whose replaced content differs; without one the pair stays matched.
    ``self.last_swaps`` lists ``(row, kind, donor_row)`` of the last batch. With ``mask_polluted=False`` the
    polluted rows carry no masked-token labels (all -100): their text or tags describe another image, and predicting
    masked words from a mismatched image teaches the model to ignore the image.
    """

    def __init__(self, tokenizer, *, mask_probability: float = 0.15, pollution: float = 0.5,
                 caption_pollution: float = 0.25, mask_polluted: bool = True, **kwargs):
        super().__init__(tokenizer, **kwargs)
        if not 0 <= caption_pollution <= pollution <= 1:
            raise ValueError(f"need 0 <= caption_pollution <= pollution <= 1, got {caption_pollution}, {pollution}")
        self.mask_probability = mask_probability
        self.pollution = pollution
        self.caption_pollution = caption_pollution
        self.mask_polluted = mask_polluted
        self.last_swaps: list[tuple[int, str, int]] = []

    def __call__(self, rows: Sequence[dict]) -> dict:
        if not rows:
            raise ValueError("empty batch")
        g = self._generator(rows)
        captions = self.pick_captions(rows, g, "pre-training")
        image_inputs, tags = self.image_inputs(rows)
        if tags is None:
            raise ValueError("pre-training needs tags: use precomputed features or tag_source='gt'")
        image_keys = [row.get("image_index", row.get("image_id", i)) for i, row in enumerate(rows)]
        texts, tag_lists = list(captions), [list(t) for t in tags]
        contrastive = torch.zeros(len(rows), dtype=torch.long)
        self.last_swaps = []
        draws = torch.rand(len(rows), generator=g)
        for i in range(len(rows)):
            u = float(draws[i])
            if u < self.caption_pollution:
                kind = "caption"
                # same kind of text (caption / question-answer): a swap must not be told by its form alone
                donors = [j for j in range(len(rows)) if image_keys[j] != image_keys[i] and captions[j] != captions[i]
                          and rows[j].get("source") == rows[i].get("source")]
            elif u < self.pollution:
                kind = "tags"
                donors = [j for j in range(len(rows)) if image_keys[j] != image_keys[i] and tags[j] != tags[i]]
            else:
                continue
            if not donors:
                continue
            j = donors[int(torch.randint(len(donors), (1,), generator=g))]
            if kind == "caption":
                texts[i] = captions[j]
                contrastive[i] = 2
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
    and replaced 80/10/10 → ``labels`` at those positions, -100 elsewhere; tags as ``tag_ids``.

    Rows: ``caption`` (or ``captions``, one drawn at random) + image inputs. With ``for_generation=True`` the batch
    has no caption at all (image inputs and tags); ``return_image_index=True`` adds the rows' ``image_index`` (for
    :class:`~minivlm_hf.training.trainers.CaptioningTrainer`, which pops it before the model sees the batch)."""

    def __init__(self, tokenizer, *, mask_probability: float = 0.15, max_masked_tokens: int | None = 3,
                 for_generation: bool = False, return_image_index: bool = False, **kwargs):
        super().__init__(tokenizer, **kwargs)
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
        captions = self.pick_captions(rows, g, "captioning")
        input_ids, attention_mask = self.encode_text(captions)
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
