"""Inference fast paths of the fusion transformer (and the task heads on it), applied from outside the model.

- :func:`fusion_linear_names`: the Linears that int8 quantisation (:mod:`.int8`) replaces.
- :func:`fuse_qkv_projections`: each attention layer's query / key / value Linears become one Linear (exact up to
  float rounding; one larger GEMM, and for int8 one activation quantisation instead of three).
- :func:`fusion_to_bf16`: the fusion transformer and heads in bfloat16 (weights converted once; the model already
  casts region features to its embedding dtype). The TEE inside is left in float32 unless asked otherwise.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from .tee import is_tee

__all__ = [
    "is_fusion_model",
    "find_fusion_models",
    "fusion_linear_names",
    "fuse_qkv_projections",
    "fusion_to_bf16",
]


def is_fusion_model(module: nn.Module) -> bool:
    """True for a MiniVLM fusion encoder (``MiniVLMModel``, also as remote code: checked by its parts)."""
    return all(isinstance(getattr(module, n, None), nn.Module) for n in ("embeddings", "region_embeddings", "encoder"))


def find_fusion_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if is_fusion_model(m)]


def _tee_prefixes(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if is_tee(m)]


def _outside_tees(name: str, tee_prefixes: list[str]) -> bool:
    return not any(name == p or name.startswith(p + ".") or p == "" for p in tee_prefixes)


def _is_ffn_output(name: str, module: nn.Module) -> bool:
    """A transformer layer's FFN down-projection (BERT's ``layer.N.output.dense``, input = the GELU output)."""
    return name.endswith("output.dense") and not name.endswith("attention.output.dense") and \
        module.in_features > module.out_features


def fusion_linear_names(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers of ``model`` that are not inside a TEE, except the region
    embedding (``region_embeddings.*``): its weight mixes ~1024 feature columns with 6 geometry columns started
    ~13x larger (see ``MiniVLMPreTrainedModel._init_weights``), so one int8 scale per tensor would round the feature
    weights coarsely; it is one small matmul per region."""
    tees = _tee_prefixes(model)
    return [name for name, module in model.named_modules()
            if is_plain_linear(module) and _outside_tees(name, tees) and "region_embeddings." not in name]


def is_plain_linear(module: nn.Module) -> bool:
    """An `nn.Linear` whose math is `F.linear` (also with `enable_cpu_fast_paths`' few-row kernel), not a
    quantised or otherwise replaced layer (nor one whose weight is a torchao quantised tensor)."""
    from .cpu import FewRowsLinear, has_plain_parameters

    return type(module) in (nn.Linear, FewRowsLinear) and has_plain_parameters(module)


def _fused_project_qkv(attention: nn.Module, hidden_states: torch.Tensor):
    return attention.qkv(hidden_states).chunk(3, dim=-1)


def fuse_qkv_projections(model: nn.Module) -> int:
    """Replace the ``query`` / ``key`` / ``value`` Linears of every attention layer (a module with a
    ``project_qkv`` method) by one ``qkv`` Linear, in place. Returns the number of layers fused. Inference only: the
    model's state dict changes (no longer BERT's names)."""
    fused = 0
    for module in model.modules():
        if not callable(getattr(type(module), "project_qkv", None)):
            continue
        parts = [getattr(module, name, None) for name in ("query", "key", "value")]
        if not all(is_plain_linear(p) and p.bias is not None for p in parts):
            continue
        weight = parts[0].weight
        qkv = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), device=weight.device,
                        dtype=weight.dtype)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([p.weight for p in parts]))
            qkv.bias.copy_(torch.cat([p.bias for p in parts]))
        qkv.requires_grad_(weight.requires_grad)
        del module.query, module.key, module.value
        module.qkv = qkv
        module.project_qkv = types.MethodType(_fused_project_qkv, module)
        fused += 1
    return fused


def fusion_to_bf16(model: nn.Module, include_vision: bool = False) -> nn.Module:
    """The fusion transformer and heads (every parameter and floating buffer outside the TEE) in bfloat16, in
    place. ``include_vision`` converts the TEE too (whole TEE in bf16; see ``tee.bf16_dense_part`` for the
    variant that keeps proposals / NMS in float32)."""
    tees = [] if include_vision else _tee_prefixes(model)
    for name, module in model.named_modules():
        if not _outside_tees(name, tees):
            continue
        for pname, param in list(module.named_parameters(recurse=False)):
            if param.is_floating_point():
                param.data = param.data.to(torch.bfloat16)
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_floating_point():
                setattr(module, bname, buf.to(torch.bfloat16))
    model._minivlm_bf16 = True
    return model
