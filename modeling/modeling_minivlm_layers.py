"""Layers of the MiniVLM fusion transformer: BERT-layout embeddings, region embedding, attention, encoder, pooler.

Parameter names follow `BertModel` so BERT / MiniLM / OSCAR checkpoints map onto them directly. The models are in
``modeling_minivlm.py``.

Remote-code file: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_minivlm import MiniVLMConfig


class PackedTokens(NamedTuple):
    """Where the non-padding tokens of a (batch, length) sequence sit: `index` into its flattened positions."""

    batch: int
    length: int
    index: torch.LongTensor

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(batch, length, ...) → (num_tokens, ...)."""
        return padded.reshape(self.batch * self.length, *padded.shape[2:]).index_select(0, self.index)

    def pad(self, tokens: torch.Tensor) -> torch.Tensor:
        """(num_tokens, ...) → (batch, length, ...), zeros at the padding positions."""
        flat = tokens.new_zeros(self.batch * self.length, *tokens.shape[1:]).index_copy(0, self.index, tokens)
        return flat.view(self.batch, self.length, *tokens.shape[1:])


class MiniVLMEmbeddings(nn.Module):
    """Word + position + token-type embeddings, as BERT (same parameter names)."""

    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.LongTensor,
        token_type_ids: torch.LongTensor,
        position_ids: torch.LongTensor,
    ):
        embeddings = self.LayerNorm(
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )
        return self.dropout(embeddings)


def box_geometry(boxes: torch.FloatTensor, size: int) -> torch.FloatTensor:
    """Normalised xyxy boxes (..., 4) → the geometry the model embeds: xyxy (`size` 4) or xyxy + w, h (6)."""
    if size == 6:
        return torch.cat([boxes, boxes[..., 2:4] - boxes[..., 0:2]], dim=-1)
    return boxes


class MiniVLMRegionEmbeddings(nn.Module):
    """Region feature + box geometry → hidden; no position or token-type embedding.

    As OSCAR: LayerNorm(Linear(feature ⊕ geometry)), dropout; a fresh model's geometry columns are initialised at
    sqrt(feature size / 6) x the usual std (see `_init_weights`).
    """

    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.projection = nn.Linear(config.region_feature_size + config.box_feature_size, config.hidden_size)
        # read by MiniVLMPreTrainedModel._init_weights: the geometry columns start at the features' variance share
        self.projection.geometry_columns = config.box_feature_size
        self.LayerNorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.use_image_layer_norm else nn.Identity()
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.box_feature_size = config.box_feature_size

    def forward(self, region_features: torch.FloatTensor, region_boxes: torch.FloatTensor) -> torch.FloatTensor:
        """`region_features` (batch, regions, region_feature_size), `region_boxes` (batch, regions, 4) normalised
        xyxy → (batch, regions, hidden_size)."""
        geometry = box_geometry(region_boxes, self.box_feature_size).to(region_features.dtype)
        features = torch.cat([region_features, geometry], dim=-1)
        return self.dropout(self.LayerNorm(self.projection(features)))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    """Plain softmax attention; `attention_mask` is additive, broadcastable to (batch, heads, q, k)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class MiniVLMSelfAttention(nn.Module):
    def __init__(self, config: MiniVLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.scaling = self.attention_head_size**-0.5
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.is_causal = False  # masks are always explicit
        self.layer_idx = layer_idx

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value projections, each `(..., hidden_size)` (one place for inference rewrites such as
        `minivlm_hf.fast.fuse_qkv_projections`)."""
        return self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        cache_commit_length: int | None = None,
        output_attentions: bool = False,
        packed: PackedTokens | None = None,
    ):
        if packed is not None:
            return self._packed_forward(hidden_states, attention_mask, packed)
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        query, key, value = (t.view(shape).transpose(1, 2) for t in self.project_qkv(hidden_states))
        if cache is not None:
            # Only the first `cache_commit_length` tokens are remembered; the rest (the [MASK] query of captioning)
            # attends with them and is then cropped off: one concatenation per step instead of two.
            transient = 0 if cache_commit_length is None else key.shape[2] - cache_commit_length
            key, value = cache.update(key, value, self.layer_idx)
            if transient:
                cache.layers[self.layer_idx].crop(-transient)
        output, weights = self._attend(query, key, value, attention_mask, output_attentions)
        return output.reshape(*hidden_states.shape[:-1], -1).contiguous(), weights

    def _attend(self, query, key, value, attention_mask, output_attentions=False):
        interface: Callable = eager_attention_forward
        if not output_attentions:  # attention weights exist only in eager mode
            interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        return interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout.p if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )

    def _packed_forward(self, hidden_states, attention_mask, packed: PackedTokens):
        """`hidden_states` (num_tokens, hidden) holds only the non-padding tokens: the projections run on them, and
        their queries / keys / values are scattered into the padded (batch, length) layout for the attention alone
        (padding rows stay zero; the mask hides them as keys and their outputs are dropped)."""
        padded = packed.pad(torch.cat(self.project_qkv(hidden_states), dim=-1))
        shape = (packed.batch, packed.length, -1, self.attention_head_size)
        query, key, value = (t.reshape(shape).transpose(1, 2) for t in padded.chunk(3, dim=-1))
        output, weights = self._attend(query, key, value, attention_mask)
        return packed.pack(output.reshape(packed.batch, packed.length, -1)), weights


class MiniVLMSelfOutput(nn.Module):
    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class MiniVLMAttention(nn.Module):
    def __init__(self, config: MiniVLMConfig, layer_idx: int):
        super().__init__()
        self.self = MiniVLMSelfAttention(config, layer_idx)
        self.output = MiniVLMSelfOutput(config)

    def forward(self, hidden_states, attention_mask=None, cache=None, cache_commit_length=None, output_attentions=False,
                packed=None):
        attention, weights = self.self(
            hidden_states, attention_mask, cache, cache_commit_length, output_attentions, packed
        )
        return self.output(attention, hidden_states), weights


class MiniVLMIntermediate(nn.Module):
    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class MiniVLMOutput(nn.Module):
    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class MiniVLMLayer(GradientCheckpointingLayer):
    def __init__(self, config: MiniVLMConfig, layer_idx: int):
        super().__init__()
        self.attention = MiniVLMAttention(config, layer_idx)
        self.intermediate = MiniVLMIntermediate(config)
        self.output = MiniVLMOutput(config)

    def forward(self, hidden_states, attention_mask=None, cache=None, cache_commit_length=None, output_attentions=False,
                packed=None):
        attention_output, weights = self.attention(
            hidden_states, attention_mask, cache, cache_commit_length, output_attentions, packed
        )
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return layer_output, weights


class MiniVLMEncoder(nn.Module):
    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.layer = nn.ModuleList([MiniVLMLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        cache=None,
        cache_commit_length=None,
        output_attentions=False,
        output_hidden_states=False,
        token_index=None,
    ):
        """`token_index` (`torch.LongTensor` of shape `(num_tokens,)`, optional): the non-padding positions of the
        flattened (batch × length) sequence. The layers then run their projections, feed-forward and LayerNorms on
        those tokens only (the attention sees the padded layout); the padding positions of the output are zeros.
        Not combined with a cache or with returned hidden states / attentions."""
        packed = None
        if token_index is not None:
            if cache is not None or output_attentions or output_hidden_states:
                raise ValueError("token_index (unpadded tokens) cannot be combined with a cache or returned "
                                 "hidden states / attentions")
            packed = PackedTokens(*hidden_states.shape[:2], token_index)
            hidden_states = packed.pack(hidden_states)
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            hidden_states, weights = layer(
                hidden_states,
                attention_mask,
                cache=cache,
                cache_commit_length=cache_commit_length,
                output_attentions=output_attentions,
                packed=packed,
            )
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
            if output_attentions:
                all_attentions = all_attentions + (weights,)
        if packed is not None:
            hidden_states = packed.pad(hidden_states)
        return hidden_states, all_hidden, all_attentions


class MiniVLMPooler(nn.Module):
    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))
