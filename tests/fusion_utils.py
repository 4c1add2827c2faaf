"""Tiny fusion-model configs and inputs shared by the fusion tests."""

import copy

import torch

from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig


def tiny_fusion_config(vision_config=None, **overrides) -> MiniVLMConfig:
    kwargs = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        region_feature_size=16,
        max_text_length=12,
        max_tag_length=8,
        max_regions=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        cls_token_id=1,
        sep_token_id=2,
        mask_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
        id2label={0: "yes", 1: "no", 2: "red"},
    )
    if vision_config is not None:
        kwargs["vision_config"] = vision_config
        kwargs["region_feature_size"] = vision_config.box_head_dim
    kwargs.update(overrides)
    return MiniVLMConfig(**kwargs)


def copy_config(config):
    return copy.deepcopy(config)


def region_inputs(batch=2, regions=5, features=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, regions, 2, generator=g) * 0.5
    wh = torch.rand(batch, regions, 2, generator=g) * 0.4 + 0.05
    boxes = torch.cat([xy, xy + wh], dim=-1)
    mask = torch.ones(batch, regions, dtype=torch.bool)
    mask[-1, -2:] = False
    return {
        "region_features": torch.randn(batch, regions, features, generator=g),
        "region_boxes": boxes,
        "region_mask": mask,
    }


def text_inputs(batch=2, length=7, vocab=120, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    ids[:, 0] = 1
    ids[:, -1] = 2
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[-1, -2:] = 0
        ids[-1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def tag_inputs(batch=2):
    ids = torch.tensor([[5, 6, 2], [7, 2, 0]])[:batch]
    return {"tag_ids": ids, "tag_attention_mask": (ids != 0).long()}
