"""MiniVLM task heads: pre-training, VQA, image-text retrieval and NLVR2-style visual reasoning.

Every head computes its loss inside (`labels` like transformers) as a per-batch mean, so `accepts_loss_kwargs` is
False (set on `MiniVLMPreTrainedModel`) and the Trainer does not rescale it.

Remote-code file: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .configuration_minivlm import MiniVLMConfig
from .modeling_minivlm import MiniVLMModel, MiniVLMPreTrainedModel
from .modeling_minivlm_heads import MiniVLMPreTrainingHeads

_REGION_INPUTS = (
    "pixel_values", "pixel_mask", "region_features", "region_boxes", "region_mask", "tag_ids", "tag_attention_mask",
)


@dataclass
class MiniVLMForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`): masked-token loss + contrastive loss.
    masked_lm_loss, contrastive_loss (`torch.FloatTensor` of shape `()`): the two parts.
    prediction_logits (`torch.FloatTensor` of shape `(batch_size, text_length + tag_length, vocab_size)`):
        masked-token logits over the text tokens then the tag tokens. `None` in training mode when `labels` or
        `tag_labels` are given: the decoder then runs on the masked positions only.
    contrastive_logits (`torch.FloatTensor` of shape `(batch_size, 3)`): matched / tags
        polluted / caption polluted (or matched / polluted).
    """

    loss: torch.FloatTensor | None = None
    masked_lm_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    prediction_logits: torch.FloatTensor | None = None
    contrastive_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MiniVLMClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`): the head's loss when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): classification scores before sigmoid/softmax.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): pooled [CLS] (NLVR: both images,
        `(batch_size, 2 * hidden_size)`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MiniVLMRanking(ModelOutput):
    r"""
    scores (`torch.FloatTensor` of shape `(num_candidates,)`): P(match) of every candidate, in input order.
    ranking (`torch.LongTensor` of shape `(num_candidates,)`): candidate indices, best first.
    """

    scores: torch.FloatTensor | None = None
    ranking: torch.LongTensor | None = None


def _dropout(config: MiniVLMConfig) -> nn.Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


class MiniVLMForPreTraining(MiniVLMPreTrainedModel):
    """Masked-token prediction over text and tags + contrastive (polluted pair) loss on the pooled [CLS]."""

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "minivlm.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: MiniVLMConfig):
        super().__init__(config)
        self.minivlm = MiniVLMModel(config)
        self.cls = MiniVLMPreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        tag_ids: torch.LongTensor | None = None,
        tag_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        region_features: torch.FloatTensor | None = None,
        region_boxes: torch.FloatTensor | None = None,
        region_mask: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
        tag_labels: torch.LongTensor | None = None,
        contrastive_labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MiniVLMForPreTrainingOutput | tuple:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size, text_length)`): original ids of masked text tokens,
                -100 elsewhere.
            tag_labels (`torch.LongTensor` of shape `(batch_size, tag_length)`): the same for the tag tokens.
            contrastive_labels (`torch.LongTensor` of shape `(batch_size,)`): 0 = matched, 1 = polluted (tags
                polluted with 3 classes), 2 = caption polluted.
            Other arguments: as [`MiniVLMModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.minivlm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            tag_ids=tag_ids,
            tag_attention_mask=tag_attention_mask,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            region_features=region_features,
            region_boxes=region_boxes,
            region_mask=region_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        sequence = outputs.last_hidden_state
        token_states = sequence[:, : outputs.tag_slice.stop]  # text then tags
        contrastive_logits = self.cls.seq_relationship(outputs.pooler_output)
        prediction_logits = masked_lm_loss = contrastive_loss = loss = None
        selected = all_labels = None
        if labels is not None or tag_labels is not None:
            parts = []
            for part, name, width in (
                (labels, "labels", input_ids.shape[1]),
                (tag_labels, "tag_labels", outputs.tag_slice.stop - outputs.tag_slice.start),
            ):
                if part is None:
                    part = torch.full((sequence.shape[0], width), -100, dtype=torch.long, device=sequence.device)
                elif part.shape != (sequence.shape[0], width):
                    raise ValueError(f"{name} must have shape {(sequence.shape[0], width)}, got {tuple(part.shape)}")
                parts.append(part)
            all_labels = torch.cat(parts, dim=1)
            selected = all_labels != -100
        if self.training and selected is not None and bool(selected.any()):
            # Training: run the vocabulary-sized decoder on the masked positions only (about half of the step's
            # compute otherwise); `prediction_logits` stays None.
            masked_logits = self.cls.predictions(token_states[selected])
        else:
            prediction_logits = self.cls.predictions(token_states)
            masked_logits = prediction_logits[selected] if selected is not None else None
        if selected is not None:
            if selected.any():
                masked_lm_loss = nn.functional.cross_entropy(masked_logits.float(), all_labels[selected])
            else:
                masked_lm_loss = masked_logits.sum() * 0.0
            loss = masked_lm_loss
        if contrastive_labels is not None:
            contrastive_loss = nn.functional.cross_entropy(contrastive_logits.float(), contrastive_labels.view(-1))
            loss = contrastive_loss if loss is None else loss + contrastive_loss

        output = MiniVLMForPreTrainingOutput(
            loss=loss,
            masked_lm_loss=masked_lm_loss,
            contrastive_loss=contrastive_loss,
            prediction_logits=prediction_logits,
            contrastive_logits=contrastive_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class _PooledClassifierMixin:
    """Shared forward plumbing of the heads that classify the pooled [CLS]."""

    def _pooled(self, return_outputs=False, **inputs):
        outputs = self.minivlm(return_dict=True, **inputs)
        return outputs.pooler_output, outputs


def vqa_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """VQA loss on soft scores `labels` (batch, num_answers): `"bce"` = BCE × num_answers (OSCAR); `"softmax"` =
    cross-entropy against the scores normalised per question (questions without any scored answer are skipped)."""
    logits, labels = logits.float(), labels.float()
    if kind == "bce":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels) * labels.shape[1]
    total = labels.sum(-1, keepdim=True)
    scored = total.squeeze(-1) > 0
    if not bool(scored.any()):
        return logits.sum() * 0.0
    targets = labels[scored] / total[scored]
    return -(targets * logits[scored].log_softmax(-1)).sum(-1).mean()


class MiniVLMForQuestionAnswering(_PooledClassifierMixin, MiniVLMPreTrainedModel):
    """
    VQA as classification over an answer vocabulary (`config.id2label`), trained on soft scores (VQA v2:
    min(#annotators / 3, 1)) with binary cross-entropy scaled by the number of answers as OSCAR does, or with a
    softmax cross-entropy (`config.vqa_loss`; see [`vqa_loss`]).
    Loads with `AutoModelForVisualQuestionAnswering`.
    """

    def __init__(self, config: MiniVLMConfig):
        super().__init__(config)
        self.minivlm = MiniVLMModel(config)
        hidden = config.hidden_size
        self.dropout = _dropout(config)
        self.classifier = nn.Sequential(  # OSCAR's VQA head: h → 2h → answers
            nn.Linear(hidden, hidden * 2),
            nn.GELU(),
            nn.LayerNorm(hidden * 2, eps=config.layer_norm_eps),
            nn.Linear(hidden * 2, config.num_labels),
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        tag_ids: torch.LongTensor | None = None,
        tag_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        region_features: torch.FloatTensor | None = None,
        region_boxes: torch.FloatTensor | None = None,
        region_mask: torch.BoolTensor | None = None,
        labels: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MiniVLMClassifierOutput | tuple:
        r"""
        Args:
            labels (`torch.FloatTensor` of shape `(batch_size, num_labels)`): soft answer scores in [0, 1]
                (or `torch.LongTensor` of shape `(batch_size,)`: one answer id each).
            Other arguments: as [`MiniVLMModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pooled, outputs = self._pooled(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, tag_ids=tag_ids,
            tag_attention_mask=tag_attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask,
            region_features=region_features, region_boxes=region_boxes, region_mask=region_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if labels.dim() == 1:
                labels = nn.functional.one_hot(labels.long(), self.config.num_labels)
            if labels.shape != logits.shape:
                raise ValueError(f"labels must have shape {tuple(logits.shape)} (soft scores), got {tuple(labels.shape)}")
            loss = vqa_loss(logits, labels, self.config.vqa_loss)
        output = MiniVLMClassifierOutput(
            loss=loss, logits=logits, pooler_output=pooled, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class MiniVLMForImageTextRetrieval(_PooledClassifierMixin, MiniVLMPreTrainedModel):
    """Image-text matching: pooled [CLS] → 2 classes (0 = no match, 1 = match); score = P(match)."""

    def __init__(self, config: MiniVLMConfig):
        super().__init__(config)
        self.minivlm = MiniVLMModel(config)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        tag_ids: torch.LongTensor | None = None,
        tag_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        region_features: torch.FloatTensor | None = None,
        region_boxes: torch.FloatTensor | None = None,
        region_mask: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MiniVLMClassifierOutput | tuple:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size,)`): 1 = the text describes the image, 0 = it does not.
            Other arguments: as [`MiniVLMModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pooled, outputs = self._pooled(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, tag_ids=tag_ids,
            tag_attention_mask=tag_attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask,
            region_features=region_features, region_boxes=region_boxes, region_mask=region_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.view(-1).long())
        output = MiniVLMClassifierOutput(
            loss=loss, logits=logits, pooler_output=pooled, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()



    # ---------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _image_inputs(self, image_inputs: dict) -> dict:
        """Run the TEE once (if pixels were given) and return precomputed region inputs + tags."""
        inputs = {k: v for k, v in image_inputs.items() if k in _REGION_INPUTS and v is not None}
        if "pixel_values" in inputs:
            image = self.minivlm.get_image_features(
                inputs.pop("pixel_values"), inputs.pop("pixel_mask", None), with_tags="tag_ids" not in inputs
            )
            inputs.update(image.region_inputs())
        return inputs

    @torch.no_grad()
    def _score(self, text: dict, images: dict, num: int, batch_size: int) -> torch.Tensor:
        scores = []
        for start in range(0, num, batch_size):
            stop = min(start + batch_size, num)
            chunk = {}
            for source in (text, images):
                for key, value in source.items():
                    if value.shape[0] == 1:
                        value = value.expand(stop - start, *value.shape[1:])
                    else:
                        value = value[start:stop]
                    chunk[key] = value
            logits = self(**chunk).logits
            scores.append(logits.float().softmax(-1)[:, 1])
        return torch.cat(scores)

    def rank_texts(self, text_inputs: dict, image_inputs: dict, batch_size: int = 32) -> MiniVLMRanking:
        """
        Score one image against N texts.

        Args:
            text_inputs: `input_ids` / `attention_mask` (/ `token_type_ids`) of shape `(N, length)`.
            image_inputs: ONE image: `pixel_values` `(1, 3, H, W)` (+ `pixel_mask`), or `region_features`
                `(1, R, F)` + `region_boxes` (+ `region_mask`, `tag_ids`, `tag_attention_mask`). The TEE runs once.
        """
        self.eval()
        num = text_inputs["input_ids"].shape[0]
        images = self._image_inputs(image_inputs)
        if any(v.shape[0] != 1 for v in images.values()):
            raise ValueError("rank_texts scores ONE image: image inputs must have batch size 1")
        scores = self._score(dict(text_inputs), images, num, batch_size)
        return MiniVLMRanking(scores=scores, ranking=torch.argsort(scores, descending=True))

    def rank_images(self, text_inputs: dict, image_inputs: dict, batch_size: int = 32) -> MiniVLMRanking:
        """
        Score one text against N images.

        Args:
            text_inputs: ONE text: `input_ids` of shape `(1, length)` (+ `attention_mask`).
            image_inputs: N images as `pixel_values` `(N, 3, H, W)` or `region_features` `(N, R, F)` + boxes.
        """
        self.eval()
        if text_inputs["input_ids"].shape[0] != 1:
            raise ValueError("rank_images scores ONE text: input_ids must have batch size 1")
        images = self._image_inputs(image_inputs)
        num = next(iter(images.values())).shape[0]
        scores = self._score(dict(text_inputs), images, num, batch_size)
        return MiniVLMRanking(scores=scores, ranking=torch.argsort(scores, descending=True))


class MiniVLMForVisualReasoning(_PooledClassifierMixin, MiniVLMPreTrainedModel):
    """
    NLVR2-style: (statement, image 1) and (statement, image 2) are encoded separately, the two pooled vectors are
    concatenated and an MLP (2h → 3h → LayerNorm → 2) says whether the statement is true of the pair.
    """

    def __init__(self, config: MiniVLMConfig):
        super().__init__(config)
        self.minivlm = MiniVLMModel(config)
        hidden = config.hidden_size
        self.dropout = _dropout(config)
        self.classifier = nn.Sequential(
            nn.Linear(hidden * 2, hidden * 3),
            nn.GELU(),
            nn.LayerNorm(hidden * 3, eps=config.layer_norm_eps),
            nn.Linear(hidden * 3, 2),
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        tag_ids: torch.LongTensor | None = None,
        tag_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        region_features: torch.FloatTensor | None = None,
        region_boxes: torch.FloatTensor | None = None,
        region_mask: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MiniVLMClassifierOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, length)`): the statement (shared by both images).
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 2, 3, height, width)`), pixel_mask
                `(batch_size, 2, height, width)`; or region_features `(batch_size, 2, regions, features)`,
                region_boxes `(batch_size, 2, regions, 4)`, region_mask `(batch_size, 2, regions)`;
                tag_ids / tag_attention_mask `(batch_size, 2, tag_length)`: the image pair.
            labels (`torch.LongTensor` of shape `(batch_size,)`): 1 = the statement is true.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if input_ids is None:
            raise ValueError("input_ids (the statement) are required")
        batch = input_ids.shape[0]
        paired = {}
        for name, value in (
            ("pixel_values", pixel_values), ("pixel_mask", pixel_mask), ("region_features", region_features),
            ("region_boxes", region_boxes), ("region_mask", region_mask), ("tag_ids", tag_ids),
            ("tag_attention_mask", tag_attention_mask),
        ):
            if value is None:
                continue
            if value.dim() < 2 or value.shape[0] != batch or value.shape[1] != 2:
                raise ValueError(
                    f"{name} must hold an image PAIR per statement: shape (batch={batch}, 2, ...), "
                    f"got {tuple(value.shape)}"
                )
            paired[name] = value.flatten(0, 1)
        text = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        text = {k: v.repeat_interleave(2, dim=0) for k, v in text.items() if v is not None}
        pooled, outputs = self._pooled(
            **text, **paired, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        pooled = pooled.view(batch, -1)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.view(-1).long())
        output = MiniVLMClassifierOutput(
            loss=loss, logits=logits, pooler_output=pooled, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "MiniVLMForPreTraining",
    "MiniVLMForPreTrainingOutput",
    "MiniVLMForQuestionAnswering",
    "MiniVLMForImageTextRetrieval",
    "MiniVLMForVisualReasoning",
    "MiniVLMClassifierOutput",
    "MiniVLMRanking",
]
