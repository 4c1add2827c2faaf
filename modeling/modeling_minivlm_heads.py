"""Prediction heads shared by the MiniVLM models (parameter names as BERT / OSCAR's `cls.*`).

Remote-code file: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from .configuration_minivlm import MiniVLMConfig


class MiniVLMPredictionHeadTransform(nn.Module):
    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class MiniVLMLMPredictionHead(nn.Module):
    """BERT's masked-LM head (OSCAR's `cls.predictions`). As in BERT, the decoder's weight is tied to the word
    embeddings and its bias is the head's `bias` (one parameter under two names), so `resize_token_embeddings`
    resizes both."""

    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.transform = MiniVLMPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class MiniVLMOnlyMLMHead(nn.Module):
    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.predictions = MiniVLMLMPredictionHead(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden_states)


class MiniVLMPreTrainingHeads(nn.Module):
    """Masked-token head + contrastive (matched / polluted) head on the pooled [CLS] (OSCAR's `cls`)."""

    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.predictions = MiniVLMLMPredictionHead(config)
        # OSCAR's 3 contrastive classes: matched / tags polluted / caption polluted
        self.seq_relationship = nn.Linear(config.hidden_size, 3)

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


__all__ = ["MiniVLMPredictionHeadTransform", "MiniVLMLMPredictionHead", "MiniVLMOnlyMLMHead", "MiniVLMPreTrainingHeads"]
