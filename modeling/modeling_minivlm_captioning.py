"""MiniVLM image captioning: masked caption-token training and cached step-by-step generation.

Training (OSCAR): 15% of the caption tokens are replaced by [MASK] (by the collator) and predicted under the caption
attention mask, with label smoothing, by an MLM head whose decoder is tied to the word embeddings.

Scoring (`caption_log_likelihood`): the caption stays intact and one [MASK] query per position (see `MiniVLMModel`'s
`next_token_queries`) predicts every next token in one pass, each exactly as a generation step would.

Generation: the model appends a [MASK] after the caption so far and predicts it. With `use_cache=True` (default) the
first call encodes the image prefix (tags + regions) and the prompt once and stores their keys/values; each later
step feeds only the newest token plus the transient [MASK] query, so the prefix is never re-encoded. With
`use_cache=False` every step re-encodes everything (same tokens, much slower): the reference the tests compare with.

Remote-code file: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput, logging

from .configuration_minivlm import MiniVLMConfig
from .modeling_minivlm import MiniVLMModel, MiniVLMPreTrainedModel
from .modeling_minivlm_heads import MiniVLMOnlyMLMHead

logger = logging.get_logger(__name__)


@dataclass
class MiniVLMCaptioningOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`): label-smoothed cross-entropy over the labelled caption tokens.
    logits (`torch.FloatTensor` of shape `(batch_size, caption_length, vocab_size)`): per caption token; with
        `predict_next=True`, shape `(batch_size, 1, vocab_size)`: the prediction for the appended [MASK]. `None` in
        training mode when `labels` select some tokens: the decoder then
        runs on those positions only.
    cache (`Cache`): keys/values of the image prefix and the caption so far.
    prefix_attention_mask (`torch.LongTensor` of shape `(batch_size, prefix_length)`): validity of the cached prefix.
    region_boxes, region_labels, region_scores, region_mask, tag_ids: the TEE's regions when it ran.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    prefix_attention_mask: torch.LongTensor | None = None
    region_boxes: torch.FloatTensor | None = None
    region_labels: torch.LongTensor | None = None
    region_scores: torch.FloatTensor | None = None
    region_mask: torch.BoolTensor | None = None
    tag_ids: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class MiniVLMForImageCaptioning(MiniVLMPreTrainedModel, GenerationMixin):
    """MiniVLM with a tied masked-LM head for captioning. Loads with `AutoModelForImageTextToText`."""

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "minivlm.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }
    main_input_name = "input_ids"

    def __init__(self, config: MiniVLMConfig):
        super().__init__(config)
        self.minivlm = MiniVLMModel(config, add_pooling_layer=False)
        self.cls = MiniVLMOnlyMLMHead(config)
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
        position_ids: torch.LongTensor | None = None,
        tag_ids: torch.LongTensor | None = None,
        tag_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        region_features: torch.FloatTensor | None = None,
        region_boxes: torch.FloatTensor | None = None,
        region_mask: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        prefix_attention_mask: torch.LongTensor | None = None,
        predict_next: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MiniVLMCaptioningOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, caption_length)`): `[CLS] caption [SEP]` with some
                tokens replaced by [MASK] for training; the caption so far for generation.
            labels (`torch.LongTensor` of shape `(batch_size, caption_length)`): the original ids at masked
                positions, -100 elsewhere.
            predict_next (`bool`): append a [MASK] and return only its logits (used by `generate`).
            Other arguments: as [`MiniVLMModel.forward`]. `token_type_ids` are accepted (tokenizers emit them) and
            ignored: caption tokens are segment 0.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (
            pixel_values is None
            and region_features is None
            and tag_ids is None
            and not (cache is not None and cache.get_seq_length() > 0)
        ):
            raise ValueError(
                "a captioning model needs an image: pass pixel_values, or region_features + region_boxes, "
                "(or at least tag_ids)"
            )
        if input_ids is None:
            batch = next(t.shape[0] for t in (pixel_values, region_features, tag_ids) if t is not None)
            input_ids = torch.full((batch, 1), self.config.cls_token_id, dtype=torch.long, device=self.device)
        past = 0 if attention_mask is None else attention_mask.shape[1] - input_ids.shape[1]
        last_position = past + input_ids.shape[1] - 1 + (1 if predict_next else 0)
        if last_position >= self.config.max_text_length:
            raise ValueError(
                f"captions are limited to config.max_text_length={self.config.max_text_length} tokens "
                f"([CLS] and the [MASK] query included); lower max_length / max_new_tokens"
            )
        if labels is not None:
            if predict_next:
                raise ValueError("labels cannot be combined with predict_next")
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
                )
        outputs = self.minivlm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            tag_ids=tag_ids,
            tag_attention_mask=tag_attention_mask,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            region_features=region_features,
            region_boxes=region_boxes,
            region_mask=region_mask,
            attention_mode="caption",
            cache=cache,
            use_cache=use_cache,
            prefix_attention_mask=prefix_attention_mask,
            append_mask_token=predict_next,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        sequence = outputs.last_hidden_state
        predicting = sequence[:, outputs.text_slice]
        selected = labels != -100 if labels is not None else None
        if predict_next:
            logits = self.cls(sequence[:, -1:])
            masked_logits = None
        elif self.training and selected is not None and bool(selected.any()):
            # Training: the vocabulary-sized decoder runs on the selected positions only; `logits` stays None.
            logits = None
            masked_logits = self.cls(predicting[selected])
        else:
            logits = self.cls(predicting)
            masked_logits = logits[selected] if selected is not None else None

        loss = None
        if selected is not None:
            if selected.any():
                loss = nn.functional.cross_entropy(
                    masked_logits.float(), labels[selected], label_smoothing=self.config.caption_label_smoothing
                )
            else:  # keeps the graph (and DDP) happy on a batch with nothing masked
                loss = masked_logits.sum() * 0.0

        output = MiniVLMCaptioningOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            prefix_attention_mask=outputs.prefix_attention_mask,
            region_boxes=outputs.region_boxes,
            region_labels=outputs.region_labels,
            region_scores=outputs.region_scores,
            region_mask=outputs.region_mask,
            tag_ids=outputs.tag_ids,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()

    def caption_log_likelihood(
        self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor | None = None, **image_inputs
    ) -> torch.FloatTensor:
        """log p(caption | image) per row, shape `(batch_size,)`: the sum over the caption's tokens after [CLS]
        ([SEP] included, padding excluded) of the log-probability a generation step gives each. One teacher-forced
        pass: `MiniVLMModel`'s `next_token_queries` compute all those steps at once (a test compares them with
        step-by-step decoding). `image_inputs`: the image as in `forward` (`tag_ids`, `region_features`, … or
        `pixel_values`)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = int(attention_mask.any(0).nonzero().max()) + 1  # padding past the longest caption only costs compute
        input_ids, attention_mask = input_ids[:, :keep], attention_mask[:, :keep]
        image_inputs.pop("token_type_ids", None)  # caption tokens are all segment 0
        outputs = self.minivlm(
            input_ids=input_ids, attention_mask=attention_mask, attention_mode="caption", use_cache=False,
            next_token_queries=True, return_dict=True, **image_inputs,
        )
        # Query k predicts caption token k + 1.
        logits = self.cls(outputs.last_hidden_state[:, outputs.query_slice]).float()
        token_log_probs = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        return (token_log_probs * attention_mask[:, 1:]).sum(1)

    # ------------------------------------------------------------------------------------------------------------
    # generate() integration
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, attention_mask=None, **kwargs):
        """
        `GenerationMixin.generate`. Without `input_ids`, generation starts from [CLS] (the `bos_token_id`).

        Prompts are taken as the tokenizer gives them, padded on either side: each row's real tokens are re-padded on
        the left and a closing [SEP] (e.g. `processor(images, text="a red")`) is dropped, so the caption continues
        the prompt and a batch of prompts of different lengths decodes as each prompt alone would. The caption
        length is bounded by `config.max_text_length` (the model's text positions): a longer request is clamped
        with a warning.
        """
        if input_ids is not None:
            input_ids, attention_mask = self._left_padded_prompts(input_ids, attention_mask)
        self._clamp_caption_length(1 if input_ids is None else input_ids.shape[1], kwargs)
        kwargs.pop("token_type_ids", None)
        pixel_values, pixel_mask = kwargs.pop("pixel_values", None), kwargs.pop("pixel_mask", None)
        if pixel_values is not None:
            if kwargs.get("region_features") is not None:
                raise ValueError("pass either pixel_values or region_features, not both")
            # The TEE runs once, before beams are expanded; its regions and tags are then ordinary model kwargs.
            image = self.minivlm.get_image_features(pixel_values, pixel_mask, with_tags=kwargs.get("tag_ids") is None)
            kwargs.update(image.region_inputs())
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _left_padded_prompts(self, input_ids, attention_mask):
        """Each row's real tokens (any padding side), without a closing [SEP], re-padded on the left."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        rows = [ids[keep.bool()] for ids, keep in zip(input_ids, mask)]
        rows = [row[:-1] if len(row) > 1 and int(row[-1]) == self.config.sep_token_id else row for row in rows]
        if any(len(row) == 0 for row in rows):
            raise ValueError("a prompt has no tokens: give at least [CLS] (or no input_ids)")
        length = max(len(row) for row in rows)
        padded = input_ids.new_full((len(rows), length), self.config.pad_token_id or 0)
        padded_mask = torch.zeros((len(rows), length), dtype=torch.long, device=input_ids.device)
        for index, row in enumerate(rows):
            padded[index, length - len(row):] = row
            padded_mask[index, length - len(row):] = 1
        return padded, padded_mask

    def _clamp_caption_length(self, prompt_length: int, kwargs: dict) -> None:
        """Keep `max_length` / `max_new_tokens` within the `config.max_text_length` text positions."""
        limit = self.config.max_text_length
        if prompt_length >= limit:
            raise ValueError(
                f"the prompt has {prompt_length} tokens; captions are limited to config.max_text_length={limit} "
                "tokens ([CLS] included)"
            )
        generation_config = kwargs.get("generation_config") or self.generation_config
        new_tokens, max_length = kwargs.get("max_new_tokens"), kwargs.get("max_length")
        if new_tokens is None and max_length is None:
            new_tokens, max_length = generation_config.max_new_tokens, generation_config.max_length
        if new_tokens is None and max_length is None:
            new_tokens = 20  # what `generate` defaults to
        total = prompt_length + new_tokens if new_tokens is not None else max_length
        if total > limit:
            logger.warning(
                f"captions are limited to config.max_text_length={limit} tokens ([CLS] included): generating at most "
                f"{limit - prompt_length} new tokens instead of {total - prompt_length}"
            )
            kwargs["max_new_tokens"] = limit - prompt_length
            kwargs.pop("max_length", None)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict[str, Any]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        use_cache = kwargs.get("use_cache", True)
        # Prompts are left-padded (see `generate`): positions count real tokens only.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        inputs = {"attention_mask": attention_mask, "predict_next": True, "use_cache": use_cache}
        if cache is not None and cache.get_seq_length() > 0:
            # The image prefix and earlier caption tokens are cached: only the newest token is new.
            inputs.update(
                input_ids=input_ids[:, -1:],
                position_ids=position_ids[:, -1:],
                cache=cache,
                prefix_attention_mask=kwargs.get("prefix_attention_mask"),
            )
            return inputs
        inputs.update(input_ids=input_ids, position_ids=position_ids, cache=cache if use_cache else None)
        for name in (
            "pixel_values", "pixel_mask", "region_features", "region_boxes", "region_mask", "tag_ids",
            "tag_attention_mask",
        ):
            if kwargs.get(name) is not None:
                inputs[name] = kwargs[name]
        return inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        model_kwargs.pop("token_type_ids", None)  # caption tokens are all segment 0
        if getattr(outputs, "prefix_attention_mask", None) is not None:
            model_kwargs["prefix_attention_mask"] = outputs.prefix_attention_mask
        return model_kwargs


__all__ = ["MiniVLMForImageCaptioning", "MiniVLMCaptioningOutput"]
