"""FLOP, parameter and parity bookkeeping of the benchmark: FLOPs per module (``torch.utils.flop_counter``),
parameters per module group, output differences between a fast path and its reference, and the FLOP lower bounds
of a fast-path row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .report import lower_bound_seconds


def flops_by_module(fn: Callable[[], Any], groups: dict[str, str]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn()`` and the FLOPs of each ``label: module FQN`` group (FQNs as FlopCounterMode names
    them: the root module's class name, then attribute names), plus ``(other)`` for the rest."""
    counter = FlopCounterMode(display=False, depth=None)
    with torch.inference_mode(), counter:
        fn()
    counts = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    total = int(counter.get_total_flops())
    out = {label: counts.get(fqn, 0) for label, fqn in groups.items()}
    rest = total - sum(out.values())
    if rest:
        out["(other)"] = rest
    return total, out


def total_flops(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False, depth=None)
    with torch.inference_mode(), counter:
        fn()
    return int(counter.get_total_flops())


def param_groups(model: nn.Module, groups: dict[str, str]) -> dict[str, int]:
    """Parameters per ``label: attribute-path prefix`` (longest prefix wins; shared tensors counted once)."""
    out = {label: 0 for label in groups}
    other = 0
    seen = set()
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        for label, prefix in ordered:
            if name == prefix or name.startswith(prefix + "."):
                out[label] += param.numel()
                break
        else:
            other += param.numel()
    if other:
        out["(other)"] = other
    out["total"] = sum(out.values())
    return out


MINIVLM_PARAM_GROUPS = {
    "TEE backbone (EfficientNet)": "minivlm.vision_model.backbone",
    "TEE BiFPN": "minivlm.vision_model.bifpn",
    "TEE proposal head": "minivlm.vision_model.proposal_head",
    "TEE box head (2 FC)": "minivlm.vision_model.box_head",
    "TEE predictors": "minivlm.vision_model.predictor",
    "fusion word/position/type embeddings": "minivlm.embeddings",
    "fusion region embedding": "minivlm.region_embeddings",
    "fusion encoder": "minivlm.encoder",
    "fusion pooler": "minivlm.pooler",
    "VQA classifier": "classifier",
}
BASELINE_DETECTOR_GROUPS = {
    "detector backbone (ResNet)": "detector.backbone.body",
    "detector FPN": "detector.backbone.fpn",
    "detector RPN": "detector.rpn",
    "detector box head (2 FC, 2048)": "detector.roi_heads.box_head",
    "detector box predictor": "detector.roi_heads.box_predictor",
}
BASELINE_FUSION_GROUPS = {
    "fusion word/position/type embeddings": "minivlm.embeddings",
    "fusion region embedding": "minivlm.region_embeddings",
    "fusion encoder": "minivlm.encoder",
    "fusion pooler": "minivlm.pooler",
    "VQA classifier": "classifier",
}


def flop_groups_minivlm(root: str = "MiniVLMForQuestionAnswering") -> dict[str, str]:
    return {label: f"{root}.{prefix}" for label, prefix in MINIVLM_PARAM_GROUPS.items()}


def flop_groups_baseline(fusion_root: str = "MiniVLMForQuestionAnswering") -> dict[str, str]:
    groups = {label: f"BaselineRegionExtractor.{prefix}" for label, prefix in BASELINE_DETECTOR_GROUPS.items()}
    groups.update({label: f"{fusion_root}.{prefix}" for label, prefix in BASELINE_FUSION_GROUPS.items()})
    return groups


def max_diff(a, b) -> dict[str, float] | None:
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape:
        return None
    a, b = a.detach().float(), b.detach().float()
    if a.numel() == 0:
        return {"max_abs": 0.0, "max_ref": 0.0}
    return {"max_abs": float((a - b).abs().max()), "max_ref": float(b.abs().max())}


def argmax_agreement(a, b) -> float | None:
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape:
        return None
    return float((a.float().argmax(-1) == b.float().argmax(-1)).float().mean())



def set_lower_bounds(entry: dict[str, Any], rates: dict[str, float]) -> None:
    """Lower bounds of a fast-path entry: all FLOPs at the fp32 rate, all at the bf16 rate, and its own (the FLOPs
    it runs in bf16 at the bf16 rate, the rest, int8 included, at the fp32 rate)."""
    flops, in_bf16 = entry.get("flops"), entry.get("flops_bf16") or 0
    entry["lower_bound_fp32_s"] = lower_bound_seconds(flops, rates.get("float32"))
    entry["lower_bound_bf16_s"] = lower_bound_seconds(flops, rates.get("bfloat16"))
    own = None
    if flops and rates.get("float32") and (not in_bf16 or rates.get("bfloat16")):
        own = (flops - in_bf16) / (rates["float32"] * 1e9) + (in_bf16 / (rates["bfloat16"] * 1e9) if in_bf16 else 0)
    entry["lower_bound_own_s"] = own
    entry["measured_over_lower_bound"] = entry["timing"]["median_s"] / own if own else None


def tee_flop_split(fn: Callable[[], Any]) -> tuple[int, int]:
    """(FLOPs of the TEE's dense part = EfficientNet + BiFPN, FLOPs of the whole TEE) of a call of a bare TEE."""
    total, per = flops_by_module(fn, {"backbone": "TEEModel.backbone", "bifpn": "TEEModel.bifpn"})
    return per.get("backbone", 0) + per.get("bifpn", 0), total
