"""``optimize_for_inference``: one call that applies the CPU fast paths to a MiniVLM / TEE model."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .cpu import enable_cpu_fast_paths
from .fusion import find_fusion_models, fuse_qkv_projections, fusion_to_bf16, is_plain_linear
from .int8 import linear_input_ranges, quantize_fusion_int8
from .tee import bf16_dense_part, compile_dense_part, find_tees, fuse_conv_bn, tee_example_input, to_channels_last

__all__ = ["OptimizationSummary", "optimize_for_inference"]


@dataclass
class OptimizationSummary:
    """What :func:`optimize_for_inference` did (also stored as ``model.minivlm_optimizations``)."""

    tees: list[str] = field(default_factory=list)
    fusion_models: list[str] = field(default_factory=list)
    folded_batch_norms: int = 0
    channels_last: bool = False
    bf16_fusion: bool = False
    bf16_vision: bool = False
    fused_qkv_layers: int = 0
    int8_linear_layers: int = 0
    int8_calibrated: bool = False
    compiled: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def optimize_for_inference(
    model: nn.Module,
    *,
    bf16: bool = False,
    int8: bool = False,
    int8_calibration=None,
    bf16_vision: bool = False,
    compile: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """Return ``model`` prepared for CPU inference (eval mode, no gradients).

    Works on a ``TEEModel`` / ``TEEForObjectDetection``, a ``MiniVLMModel`` or any MiniVLM task head (with or
    without a TEE inside), also when loaded as remote code. Always applied (exact up to float rounding): every TEE's
    batch norms are folded into the preceding convolutions (checked on a small random image) and its convolutions
    run channels_last; each attention layer's query / key / value Linears become one Linear. Options:

    - ``bf16``: the fusion transformer and heads in bfloat16 (fast on CPUs with AVX512-BF16 / AMX only).
    - ``int8``: dynamic int8 quantisation of the fusion transformer's and heads' Linears (``quantize_fusion_int8``).
      ``int8_calibration``: a few batches of model inputs (e.g. collator outputs of validation rows); the calibrated
      outlier input channels of each Linear are then scaled into range, which keeps every parity metric within a
      point of fp32. Plain int8 (no calibration) is the faster of the two by a few percent and loses more than a
      point on some metrics. ``bf16`` and ``int8`` are alternatives.
    - ``bf16_vision``: each TEE's EfficientNet + BiFPN in bfloat16; proposals, RoIAlign, box head and NMS stay float32.
    - ``compile``: ``torch.compile`` of each TEE's EfficientNet + BiFPN (static shapes; compiled on the first call).
    - ``inplace=False`` (default) works on a deep copy.

    A summary is stored as ``model.minivlm_optimizations`` (:class:`OptimizationSummary`). Measured speed and
    parity of every option: docs/results.md.
    """
    if bf16 and int8:
        raise ValueError("bf16 and int8 are alternatives for the fusion transformer: choose one")
    if int8_calibration is not None and not int8:
        raise ValueError("int8_calibration calibrates the int8 quantisation: pass int8=True too")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(False)
    summary = OptimizationSummary()

    for name, tee in find_tees(model):
        summary.tees.append(name or "<root>")
        summary.folded_batch_norms += _fold_tee(tee)
        to_channels_last(tee)
        summary.channels_last = True
        if bf16_vision:
            bf16_dense_part(tee)
            summary.bf16_vision = True
        if compile:
            compile_dense_part(tee)
            summary.compiled.append(f"{name + '.' if name else ''}backbone+bifpn")

    fusions = find_fusion_models(model)
    summary.fusion_models = [name or "<root>" for name, _ in fusions]
    if fusions:
        summary.fused_qkv_layers = fuse_qkv_projections(model)
        if int8:
            before = sum(1 for m in model.modules() if is_plain_linear(m))
            ranges = linear_input_ranges(model, int8_calibration) if int8_calibration is not None else None
            quantize_fusion_int8(model, ranges)
            summary.int8_linear_layers = before - sum(1 for m in model.modules() if is_plain_linear(m))
            summary.int8_calibrated = ranges is not None
        if bf16:
            fusion_to_bf16(model, include_vision=False)
            summary.bf16_fusion = True
    enable_cpu_fast_paths(model)  # the few-row Linears, NHWC input and per-image dense part (CPU only)
    model.minivlm_optimizations = summary
    return model


def _fold_tee(tee: nn.Module) -> int:
    """Fold the TEE's batch norms, confirming by data flow that each follows its convolution, and check that the
    BiFPN maps are unchanged (max relative deviation 1e-4)."""
    example = tee_example_input(tee)

    def dense(module):
        with torch.inference_mode():
            return [f.float().clone() for f in module.bifpn(module.backbone(example))]

    reference = dense(tee)
    folded = fuse_conv_bn(tee, run=lambda: tee.bifpn(tee.backbone(example)))
    for before, after in zip(reference, dense(tee)):
        scale = before.abs().max().clamp(min=1.0)
        if float((before - after).abs().max() / scale) > 1e-4:
            raise RuntimeError("folding the batch norms changed the TEE's BiFPN maps; this TEE is not supported")
    return folded
