"""MiniVLM fusion transformer: a BERT/MiniLM-layout single-stream encoder over text, object tags and regions.

Sequence layout (OSCAR): ``[CLS] text [SEP]`` (token type 0) · ``tags [SEP]`` (token type 1) · regions (no position
or token-type embedding). Text positions start at 0; tag positions always start at ``config.max_text_length`` so a
sample's encoding does not depend on how much the batch was padded.

In captioning mode (``attention_mode="caption"``) the sequence is laid out as ``tags · regions · caption`` instead:
caption tokens attend causally to earlier caption tokens and fully to tags and regions, while tags and regions never
see caption tokens. Their states therefore never change while a caption grows, which is what lets generation encode
the image prefix once and cache it (see ``modeling_minivlm_captioning.py``).

Module and parameter names follow ``BertModel`` (``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``
…) so that BERT / MiniLM / OSCAR checkpoints map onto it directly.

Remote-code file: imports only torch, transformers and sibling files (flat relative imports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput, is_tracing, logging

from .configuration_minivlm import MiniVLMConfig
from .modeling_minivlm_heads import MiniVLMLMPredictionHead
from .modeling_minivlm_inputs import region_geometry_check, select_tag_phrases
from .modeling_minivlm_layers import (
    MiniVLMEmbeddings,
    MiniVLMEncoder,
    MiniVLMPooler,
    MiniVLMRegionEmbeddings,
)
from .modeling_minivlm_tee import TEEModel
from .remote_code_minivlm import (
    MiniVLMRemoteCodeMixin,  # minivlm-hf hub: complete auto_map on save
)

if TYPE_CHECKING:
    # Never imported at run time: transformers copies (downloads) every file named by a flat relative import, so this
    # ships the processor and the VQA pipeline, which the saved `auto_map` / `custom_pipelines` name, with every
    # fusion checkpoint (the image processors come with the TEE's file).
    from .pipeline_minivlm_vqa import MiniVLMVQAPipeline  # noqa: F401
    from .processing_minivlm import MiniVLMProcessor  # noqa: F401

logger = logging.get_logger(__name__)

@dataclass
class MiniVLMModelOutput(ModelOutput):
    r"""
    Output of [`MiniVLMModel`].

    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Hidden states of the last layer. Bidirectional mode: ``[text, tags, regions]``; caption mode:
        ``[tags, regions, caption]`` (see `text_slice`).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        tanh(dense([CLS])) in bidirectional mode.
    attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
        Which positions of `last_hidden_state` are real tokens / regions.
    text_span, tag_span, region_span (`tuple[int, int]`): `(start, stop)` of the `input_ids` tokens, the tag tokens
        and the region tokens in `last_hidden_state`; `text_slice`, `tag_slice`, `region_slice` give them as slices.
        Plain integers (not slices) so that the output stays a pytree `torch.export` can return.
    query_span (`tuple[int, int]`): caption mode: where the appended [MASK] queries sit (`append_mask_token` /
        `next_token_queries`); `query_slice`.
    prefix_attention_mask (`torch.LongTensor` of shape `(batch_size, num_tags + num_regions)`):
        Validity of the cached image prefix in caption mode (used by generation).
    cache (`Cache`): key/value cache (caption mode with `use_cache=True`).
    region_boxes, region_scores, region_labels, region_mask, tag_ids:
        The TEE's regions and the tag ids derived from them, when the model ran the TEE on `pixel_values`.
    hidden_states, attentions: per-layer outputs when requested (attentions need `attn_implementation="eager"`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    text_span: tuple[int, int] | None = None
    tag_span: tuple[int, int] | None = None
    region_span: tuple[int, int] | None = None
    query_span: tuple[int, int] | None = None
    prefix_attention_mask: torch.LongTensor | None = None
    cache: Cache | None = None
    region_boxes: torch.FloatTensor | None = None
    region_scores: torch.FloatTensor | None = None
    region_labels: torch.LongTensor | None = None
    region_mask: torch.BoolTensor | None = None
    tag_ids: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    @property
    def text_slice(self) -> slice | None:
        return None if self.text_span is None else slice(*self.text_span)

    @property
    def tag_slice(self) -> slice | None:
        return None if self.tag_span is None else slice(*self.tag_span)

    @property
    def region_slice(self) -> slice | None:
        return None if self.region_span is None else slice(*self.region_span)

    @property
    def query_slice(self) -> slice | None:
        return None if self.query_span is None else slice(*self.query_span)


@dataclass
class MiniVLMImageFeatures(ModelOutput):
    r"""
    What the fusion model reads of an image: the TEE's regions (at most `config.max_regions`) and the tag tokens made
    from their classes. Returned by [`MiniVLMModel.get_image_features`].

    region_features (`torch.FloatTensor` of shape `(batch_size, num_regions, region_feature_size)`)
    region_boxes (`torch.FloatTensor` of shape `(batch_size, num_regions, 4)`): normalised xyxy.
    region_mask (`torch.BoolTensor` of shape `(batch_size, num_regions)`): real regions.
    region_scores (`torch.FloatTensor` of shape `(batch_size, num_regions)`), region_labels (`torch.LongTensor`):
        each region's best class probability and id.
    region_attribute_scores (`torch.FloatTensor` of shape `(batch_size, num_regions, num_attributes)`)
    tag_ids, tag_attention_mask (`torch.LongTensor` of shape `(batch_size, tag_length)`): `tag … [SEP]` word pieces
        (see [`MiniVLMModel.tags_from_regions`]); `None` when not asked for.
    """

    region_features: torch.FloatTensor | None = None
    region_boxes: torch.FloatTensor | None = None
    region_mask: torch.BoolTensor | None = None
    region_scores: torch.FloatTensor | None = None
    region_labels: torch.LongTensor | None = None
    region_attribute_scores: torch.FloatTensor | None = None
    tag_ids: torch.LongTensor | None = None
    tag_attention_mask: torch.LongTensor | None = None

    def region_inputs(self) -> dict:
        """The keyword arguments a MiniVLM model takes for these regions and tags."""
        names = ("region_features", "region_boxes", "region_mask", "tag_ids", "tag_attention_mask")
        return {name: self[name] for name in names if self.get(name) is not None}


class MiniVLMPreTrainedModel(MiniVLMRemoteCodeMixin, PreTrainedModel):  # mixin: see remote_code_minivlm.py
    config: MiniVLMConfig
    config_class = MiniVLMConfig
    base_model_prefix = "minivlm"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = False
    _no_split_modules = ["MiniVLMLayer", "MiniVLMEmbeddings", "MiniVLMRegionEmbeddings"]
    # Every head's loss is a per-batch mean: the Trainer must not rescale it by `num_items_in_batch` (which it does
    # when `forward` accepts loss kwargs).
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MiniVLMLMPredictionHead):
            init.zeros_(module.bias)
        geometry = getattr(module, "geometry_columns", 0)
        if isinstance(module, nn.Linear) and geometry:
            # "concat" region projection: the 6 box values share one Linear with ~1024 feature values of the same
            # order, so at the BERT init they carry ~6/1030 of the output variance and a short fine-tuning hardly
            # learns to use them (left/right VQA questions stayed at chance). Scale their columns so that both blocks
            # start with equal variance. `init.copy_` leaves loaded weights alone.
            weight = module.weight.detach().clone()
            weight[:, -geometry:] *= math.sqrt((module.in_features - geometry) / geometry)
            init.copy_(module.weight, weight)

    def _freeze_vision_model(self):
        """`config.freeze_vision_model`: the TEE inside is a fixed feature extractor, as OSCAR uses its detector. It
        stays in eval mode (inference regions) and its parameters need no gradient, so optimizers, DDP and
        `num_parameters(only_trainable=True)` do not see them. Loading replaces parameters, so `from_pretrained` (which
        ends with `eval()`) and `train()` apply this again."""
        vision = getattr(self.base_model, "vision_model", None)
        if vision is not None and self.config.freeze_vision_model:
            vision.eval()
            vision.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_vision_model()
        return self


class MiniVLMModel(MiniVLMPreTrainedModel):
    """
    The MiniVLM fusion encoder, optionally with the TEE region extractor (`config.vision_config`).

    Give it either `pixel_values` (+ `pixel_mask`): the TEE runs inside, its regions are embedded and its detected
    classes become the tag tokens; or precomputed `region_features` + `region_boxes` (+ `region_mask`), OSCAR-style.
    """

    def __init__(self, config: MiniVLMConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MiniVLMEmbeddings(config)
        self.region_embeddings = MiniVLMRegionEmbeddings(config)
        self.encoder = MiniVLMEncoder(config)
        self.pooler = MiniVLMPooler(config) if add_pooling_layer else None
        self.vision_model = TEEModel(config.vision_config) if config.vision_config is not None else None
        self.post_init()
        self._freeze_vision_model()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    # ----------------------------------------------------------------------------------------------------------
    # Inputs → embeddings
    # ----------------------------------------------------------------------------------------------------------
    def get_image_features(
        self, pixel_values: torch.FloatTensor, pixel_mask: torch.LongTensor | None = None, with_tags: bool = True,
    ) -> MiniVLMImageFeatures:
        """Pixels → regions → tags: the TEE's regions (at most `config.max_regions`) and, with `with_tags`, the tag
        tokens made from their classes. The one path from an image to what the encoder reads, used by `forward`,
        `generate` and the ranking helpers.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`), pixel_mask: from
                [`MiniVLMImageProcessor`].
        """
        if self.vision_model is None:
            raise ValueError(
                "pixel_values were given but this model has no vision_config (it was built for precomputed "
                "region features): pass region_features and region_boxes instead"
            )
        grad = torch.is_grad_enabled() and not self.config.freeze_vision_model
        with torch.set_grad_enabled(grad):
            out = self.vision_model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        limit = self.config.max_regions
        image = MiniVLMImageFeatures(
            region_features=out.region_features[:, :limit],
            region_boxes=out.region_boxes[:, :limit],
            region_mask=out.region_mask[:, :limit].bool(),
            region_scores=out.region_scores[:, :limit],
            region_labels=out.region_labels[:, :limit],
            region_attribute_scores=out.attribute_logits[:, :limit].float().sigmoid(),
        )
        if with_tags:
            image.tag_ids, image.tag_attention_mask = self.tags_from_regions(
                image.region_labels, image.region_scores, image.region_mask, image.region_attribute_scores,
                region_boxes=image.region_boxes,
            )
        return image

    def tags_from_regions(
        self, region_labels, region_scores, region_mask, region_attribute_scores=None, region_boxes=None,
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Detected regions → tag word pieces `[tag … SEP]` (token type 1), in `config.tag_order`: `(tag_ids,
        tag_attention_mask)`.

        With `config.tag_attributes` each kept region gives "attribute … class" (see [`select_tag_phrases`]);
        otherwise each detected class name appears once. `config.tag_order="area"` needs `region_boxes`."""
        config = self.config
        if not config.tag_token_ids:
            raise ValueError(
                "the model cannot turn detected classes into tag tokens: config.tag_token_ids is empty. Build it with "
                "MiniVLMProcessor.prepare_config(model.config) (it needs the tokenizer), or pass tag_ids explicitly"
            )
        if config.tag_attributes and (not config.tag_attribute_token_ids or region_attribute_scores is None):
            raise ValueError(
                "config.tag_attributes is set but "
                + ("config.tag_attribute_token_ids is empty (MiniVLMProcessor.prepare_config fills it)"
                   if not config.tag_attribute_token_ids else "the TEE returned no attribute scores")
            )
        batch = region_labels.shape[0]
        rows = []
        for b in range(batch):
            phrases = select_tag_phrases(
                region_labels[b], region_scores[b], region_mask[b], config.tag_score_threshold,
                region_attribute_scores[b] if config.tag_attributes else None,
                config.tag_attribute_threshold, config.max_tag_attributes,
                order=config.tag_order, boxes=None if region_boxes is None else region_boxes[b],
            )
            pieces = []
            for label, attributes in phrases:
                for attribute in attributes:
                    pieces.extend(config.tag_attribute_token_ids.get(attribute, []))
                pieces.extend(config.tag_token_ids.get(label, []))
            rows.append(pieces[: config.max_tag_length - 1] + [config.sep_token_id])
        length = max(len(r) for r in rows)
        device = region_labels.device
        tag_ids = torch.full((batch, length), config.pad_token_id or 0, dtype=torch.long, device=device)
        tag_mask = torch.zeros((batch, length), dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            tag_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
            tag_mask[b, : len(row)] = 1
        return tag_ids, tag_mask

    def _embed_tokens(self, ids, token_type, position_start, position_ids=None):
        if position_ids is None:
            position_ids = torch.arange(ids.shape[1], device=ids.device) + position_start
            position_ids = position_ids.unsqueeze(0).expand(ids.shape[0], -1)
        if (not is_tracing(position_ids) and position_ids.numel()
                and int(position_ids.max()) >= self.config.max_position_embeddings):
            raise ValueError(
                f"sequence too long: position {int(position_ids.max())} >= "
                f"max_position_embeddings={self.config.max_position_embeddings}"
            )
        token_type_ids = token_type if torch.is_tensor(token_type) else torch.full_like(ids, token_type)
        return self.embeddings(ids, token_type_ids, position_ids)

    @staticmethod
    def _additive(allowed: torch.BoolTensor, dtype: torch.dtype) -> torch.Tensor:
        """Boolean (batch, q, k) → additive (batch, 1, q, k) mask."""
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
        return mask.unsqueeze(1)

    #: Padding share at or above which the encoder runs on the non-padding tokens alone (`config.unpad_tokens`).
    #: Not tuned: a margin for the gather / scatter around each attention (training batches often carry far more).
    UNPAD_MIN_PADDING = 0.1

    def _unpadded_index(self, token_valid: torch.BoolTensor) -> torch.LongTensor | None:
        """Flattened positions of the real tokens, when the encoder may skip the padding (else None)."""
        if not self.config.unpad_tokens or getattr(self.encoder, "_compiled_call_impl", None) is not None:
            return None
        if is_tracing(token_valid) or torch.onnx.is_in_onnx_export():
            return None  # data-dependent shapes
        flat = token_valid.reshape(-1)
        if float((~flat).sum()) < self.UNPAD_MIN_PADDING * flat.numel():
            return None
        return flat.nonzero().squeeze(1)

    # ----------------------------------------------------------------------------------------------------------
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
        attention_mode: str = "bidirectional",
        cache: Cache | None = None,
        use_cache: bool | None = None,
        prefix_attention_mask: torch.LongTensor | None = None,
        append_mask_token: bool = False,
        next_token_queries: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MiniVLMModelOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
                `[CLS] text [SEP]` word pieces (tags may also be folded in with `token_type_ids` 1). In caption mode:
                the caption tokens.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`): 1 for real tokens. With a
                cache, it covers the cached caption tokens too (generate's convention).
            token_type_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): 0 = text, 1 = tags.
            position_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): default `0 … text_length-1`.
            tag_ids (`torch.LongTensor` of shape `(batch_size, tag_length)`): `tag … [SEP]` word pieces (segment 1).
                When `pixel_values` are given and neither `tag_ids` nor segment-1 tokens are, the TEE's detections
                become the tags.
            tag_attention_mask (`torch.LongTensor` of shape `(batch_size, tag_length)`).
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`), pixel_mask: images for the
                TEE (from `MiniVLMImageProcessor`).
            region_features (`torch.FloatTensor` of shape `(batch_size, num_regions, region_feature_size)`),
            region_boxes (`torch.FloatTensor` of shape `(batch_size, num_regions, 4)`, normalised xyxy in [0, 1]),
            region_mask (`torch.BoolTensor` of shape `(batch_size, num_regions)`): precomputed regions.
            attention_mode (`str`): `"bidirectional"` or `"caption"` (see the module docstring).
            cache (`Cache`), use_cache (`bool`): key/value cache for caption-mode decoding.
            prefix_attention_mask (`torch.LongTensor` of shape `(batch_size, prefix_length)`): validity of the
                cached tags + regions when decoding with a cache (returned by the prefill call).
            append_mask_token (`bool`): caption mode: append a `[MASK]` query after the caption whose state
                predicts the next word; it attends to everything and is never cached.
            next_token_queries (`bool`): caption mode, teacher-forced scoring of whole captions (no cache): append
                `text_length - 1` `[MASK]` queries; query `k` sits at position `k + 1` and sees the prefix, the caption
                tokens `0 … k` and itself (not the other queries), so it computes what `append_mask_token` computes
                after `k + 1` tokens (see `MiniVLMForImageCaptioning.caption_log_likelihood`).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if attention_mode not in ("bidirectional", "caption"):
            raise ValueError(f"attention_mode must be 'bidirectional' or 'caption', got {attention_mode!r}")
        if input_ids is None:
            raise ValueError("input_ids are required (at least [CLS] … [SEP])")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        batch, text_length = input_ids.shape
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        cached = cache is not None and cache.get_seq_length() > 0
        if cached and attention_mode != "caption":
            raise ValueError("a non-empty cache is only supported in attention_mode='caption'")

        vision = MiniVLMImageFeatures()
        if not cached:
            for name, tensor in (("pixel_values", pixel_values), ("region_features", region_features)):
                if tensor is not None and tensor.shape[0] != batch:
                    raise ValueError(f"batch size mismatch: {name} has {tensor.shape[0]} rows, input_ids {batch}")
            if pixel_values is not None and region_features is not None:
                raise ValueError("pass either pixel_values or region_features, not both")
            if pixel_values is not None:
                folded_tags = token_type_ids is not None and bool((token_type_ids == 1).any())
                vision = self.get_image_features(pixel_values, pixel_mask, with_tags=tag_ids is None and not folded_tags)
                region_features, region_boxes, region_mask = (
                    vision.region_features, vision.region_boxes, vision.region_mask
                )
                if vision.tag_ids is not None:
                    tag_ids, tag_attention_mask = vision.tag_ids, vision.tag_attention_mask
            elif region_features is not None:
                region_features, region_boxes, region_mask = region_geometry_check(
                    region_features, region_boxes, region_mask, self.config
                )
            if tag_ids is not None:
                if tag_ids.shape[0] != batch:
                    raise ValueError(f"batch size mismatch: tag_ids has {tag_ids.shape[0]} rows, input_ids {batch}")
                if tag_attention_mask is None:
                    tag_attention_mask = torch.ones_like(tag_ids)

        # --- prefix (tags + regions): encoded unless already cached --------------------------------------------------
        pieces, masks = [], []
        if not cached:
            if tag_ids is not None:
                pieces.append(self._embed_tokens(tag_ids, 1, self.config.max_text_length))
                masks.append(tag_attention_mask.long())
            if region_features is not None:
                region_features = region_features.to(self.embeddings.word_embeddings.weight.dtype)
                pieces.append(self.region_embeddings(region_features, region_boxes))
                masks.append(region_mask.long())
        num_tags = tag_ids.shape[1] if (tag_ids is not None and not cached) else 0
        num_regions = region_features.shape[1] if (region_features is not None and not cached) else 0

        # --- text / caption tokens ----------------------------------------------------------------------------------
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None and cached:
            past_caption = attention_mask.shape[1] - text_length
            position_ids = (torch.arange(text_length, device=device) + past_caption).unsqueeze(0).expand(batch, -1)
        text_embeddings = self._embed_tokens(input_ids, token_type_ids, 0, position_ids)
        mask_embeddings, mask_positions = None, None
        if append_mask_token or next_token_queries:
            if attention_mode != "caption":
                raise ValueError("append_mask_token / next_token_queries are only used in attention_mode='caption'")
            if append_mask_token and next_token_queries:
                raise ValueError("pass append_mask_token (generation) or next_token_queries (scoring), not both")
            if next_token_queries and cached:
                raise ValueError("next_token_queries cannot be combined with a filled cache")
            if append_mask_token:  # one query after the caption so far (cached tokens included)
                start, count = attention_mask.shape[1], 1
                query_position_ids = (position_ids[:, -1:] + 1) if position_ids is not None else None
            else:  # one query per next token: caption indices 1 … text_length-1
                start, count = 1, text_length - 1
                query_position_ids = position_ids[:, 1:] if position_ids is not None else None
            mask_positions = torch.arange(start, start + count, device=device)
            mask_ids = torch.full((batch, count), self.config.mask_token_id, dtype=torch.long, device=device)
            mask_embeddings = self._embed_tokens(mask_ids, 0, start, query_position_ids)

        dtype = text_embeddings.dtype
        query_slice = None
        if attention_mode == "bidirectional":
            hidden = torch.cat([text_embeddings] + pieces, dim=1)
            valid = torch.cat([attention_mask.long()] + masks, dim=1).bool()
            allowed = valid[:, None, :].expand(-1, valid.shape[1], -1)
            text_slice = slice(0, text_length)
            tag_slice = slice(text_length, text_length + num_tags)
            region_slice = slice(text_length + num_tags, text_length + num_tags + num_regions)
            commit, prefix_valid = None, None
            token_valid = valid
        else:
            hidden, allowed, prefix_valid = self._caption_layout(
                text_embeddings, mask_embeddings, mask_positions, pieces, masks, attention_mask, prefix_attention_mask,
                cached,
            )
            prefix_length = 0 if cached else num_tags + num_regions
            tag_slice = slice(0, num_tags)
            region_slice = slice(num_tags, prefix_length)
            text_slice = slice(prefix_length, prefix_length + text_length)
            if mask_embeddings is not None:
                query_slice = slice(text_slice.stop, text_slice.stop + mask_embeddings.shape[1])
            commit = prefix_length + text_length if cache is not None else None
            valid = None
            num_queries = 0 if mask_embeddings is None else mask_embeddings.shape[1]
            token_valid = None if cached else torch.cat(  # prefix, caption, [MASK] queries (always real)
                [prefix_valid, attention_mask[:, -text_length:].bool(),
                 torch.ones((batch, num_queries), dtype=torch.bool, device=device)], dim=1
            )

        if cache is None and use_cache and attention_mode == "caption":
            from transformers.cache_utils import DynamicCache

            cache = DynamicCache(config=self.config)
            commit = hidden.shape[1] - (mask_embeddings.shape[1] if mask_embeddings is not None else 0)

        additive = self._additive(allowed, dtype)
        token_index = None
        if cache is None and not (output_attentions or output_hidden_states):
            token_index = self._unpadded_index(token_valid)
        sequence_output, all_hidden, all_attentions = self.encoder(
            hidden,
            additive,
            cache=cache,
            cache_commit_length=commit,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            token_index=token_index,
        )
        pooled = self.pooler(sequence_output) if (self.pooler is not None and attention_mode == "bidirectional") else None
        if valid is None:  # caption mode: report validity of the visible sequence
            key_valid = allowed.any(dim=1)
            valid = key_valid[:, -hidden.shape[1] :]
        output = MiniVLMModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled,
            attention_mask=valid.long(),
            text_span=(text_slice.start, text_slice.stop),
            tag_span=(tag_slice.start, tag_slice.stop),
            region_span=(region_slice.start, region_slice.stop),
            query_span=None if query_slice is None else (query_slice.start, query_slice.stop),
            prefix_attention_mask=prefix_valid,
            cache=cache if (use_cache or cached) else None,
            region_boxes=vision.get("region_boxes"),
            region_scores=vision.get("region_scores"),
            region_labels=vision.get("region_labels"),
            region_mask=vision.get("region_mask"),
            tag_ids=vision.get("tag_ids"),
            hidden_states=all_hidden,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()

    def _caption_layout(
        self, text_embeddings, mask_embeddings, mask_positions, pieces, masks, attention_mask, prefix_mask, cached
    ):
        """Caption-mode sequence `[tags, regions, caption, [MASK] queries]` and its (batch, q, k) boolean visibility.

        Caption token `i` sees the prefix and caption tokens `≤ i`; the `[MASK]` query at caption index `p` sees the
        prefix, caption tokens `< p` and itself. The prefix sees only itself."""
        batch, text_length = text_embeddings.shape[:2]
        device = text_embeddings.device
        if cached:
            if prefix_mask is None:
                raise ValueError("decoding with a cache needs the prefix_attention_mask returned by the first call")
            prefix_valid = prefix_mask.bool()
        else:
            prefix_valid = (
                torch.cat(masks, dim=1).bool() if masks else torch.zeros((batch, 0), dtype=torch.bool, device=device)
            )
        prefix_length = prefix_valid.shape[1]
        # attention_mask covers all caption tokens so far (cached ones + these).
        caption_valid = attention_mask.bool()
        past = caption_valid.shape[1] - text_length
        if past < 0:
            raise ValueError("attention_mask is shorter than input_ids")
        num_masks = 0 if mask_embeddings is None else mask_embeddings.shape[1]
        query_hidden = text_embeddings if mask_embeddings is None else torch.cat([text_embeddings, mask_embeddings], 1)
        # Keys: prefix, all caption tokens (past + current), then the transient [MASK] queries.
        key_valid = torch.cat(
            [prefix_valid, caption_valid, torch.ones((batch, num_masks), dtype=torch.bool, device=device)], dim=1
        )
        n_key = key_valid.shape[1]
        caption_index = torch.arange(caption_valid.shape[1], device=device)
        prefix_keys = torch.ones((1, prefix_length), dtype=torch.bool, device=device)
        # Caption query i (absolute caption index past + i): prefix, caption keys ≤ its index, no [MASK] query.
        token_rows = torch.cat(
            [
                prefix_keys.expand(text_length, -1),
                caption_index[None, :] <= (torch.arange(text_length, device=device) + past)[:, None],
                torch.zeros((text_length, num_masks), dtype=torch.bool, device=device),
            ],
            dim=1,
        )
        rows = [token_rows]
        if num_masks:
            rows.append(
                torch.cat(
                    [
                        prefix_keys.expand(num_masks, -1),
                        caption_index[None, :] < mask_positions[:, None],
                        torch.eye(num_masks, dtype=torch.bool, device=device),
                    ],
                    dim=1,
                )
            )
        query_allowed = torch.cat(rows, dim=0)[None] & key_valid[:, None, :]
        if cached:
            return query_hidden, query_allowed, prefix_valid
        # Prefix queries see only the prefix.
        is_prefix_key = torch.arange(n_key, device=device) < prefix_length
        prefix_allowed = (is_prefix_key[None, None, :] & key_valid[:, None, :]).expand(-1, prefix_length, -1)
        prefix_allowed = prefix_allowed | (
            ~prefix_valid[:, :, None] & torch.eye(prefix_length, n_key, dtype=torch.bool, device=device)[None]
        )  # padded prefix rows attend to themselves only (keeps softmax finite; their output is never used)
        hidden = torch.cat(pieces + [query_hidden], dim=1)
        allowed = torch.cat([prefix_allowed, query_allowed], dim=1)
        return hidden, allowed, prefix_valid


__all__ = [
    "MiniVLMPreTrainedModel",
    "MiniVLMModel",
    "MiniVLMModelOutput",
    "MiniVLMImageFeatures",
]
