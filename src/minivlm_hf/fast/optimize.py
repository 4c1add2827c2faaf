"""``optimize_for_inference``: one call that applies the CPU fast paths to a MiniVLM / TEE model."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .fusion import (
    compile_fusion_encoder,
    find_fusion_models,
    fuse_qkv_projections,
    fusion_to_bf16,
)
from .int8 import ffn_input_ranges, linear_input_ranges, quantize_fusion_int8
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
    compiled: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def optimize_for_inference(
    model: nn.Module,
    *,
    bf16: bool = False,
    int8: bool = False,
    fuse_qkv: bool = True,
    channels_last: bool = True,
    fuse_bn: bool = True,
    compile: bool = False,
    bf16_vision: bool = False,
    compile_vision: bool = True,
    compile_fusion: bool = False,
    include_lm_head: bool = True,
    int8_float_ffn_output: bool = False,
    int8_engine: str = "auto",
    int8_outlier_ffn_channels: int = 0,
    int8_outlier_other_channels: int = 0,
    int8_outlier_mode: str = "float",
    int8_reduce_range: bool | None = None,
    int8_calibration=None,
    inplace: bool = False,
    verify: bool = True,
) -> nn.Module:
    """Return ``model`` prepared for CPU inference (eval mode, no gradients).

    Works on a ``TEEModel`` / ``TEEForObjectDetection``, a ``MiniVLMModel`` or any MiniVLM task head (with or
    without a TEE inside), also when loaded as remote code. Each option touches its own part:

    TEE (every TEE found inside ``model``):
        fuse_bn: fold the 76 batch norms of a TEE-B0 into the preceding convolutions (eval-mode statistics).
        channels_last: NHWC convolution weights and backbone input.
        bf16_vision: EfficientNet + BiFPN in bfloat16; proposals, RoIAlign, box head and NMS stay float32.
        compile (with compile_vision): ``torch.compile`` of EfficientNet + BiFPN (static shapes).
    Fusion transformer + heads (everything outside the TEE):
        fuse_qkv: each attention layer's query / key / value Linears as one Linear (fp32: exact up to rounding).
        int8: dynamic int8 quantisation of every ``nn.Linear`` (``include_lm_head=False`` keeps the tied MLM
            decoder of a captioning model in float; ``int8_float_ffn_output=True`` keeps each layer's FFN
            down-projection in float: metric parity on captioning / retrieval, less speed-up; ``int8_engine``:
            which quantized engine's kernels run each Linear, see ``quantize_fusion_int8``;
            ``int8_outlier_ffn_channels=N`` with ``int8_calibration`` (model-input batches, e.g. collator outputs of a
            few validation rows): only the N input channels of each FFN down-projection with the largest
            calibration range stay in float; ``int8_outlier_other_channels=M``: the same for every other Linear;
            ``int8_outlier_mode="scale"``: scale those channels into range instead of keeping them in float;
            ``int8_reduce_range``: 7-bit activations (torch's default) or 8-bit, default 8 on VNNI / AMX CPUs).
        bf16: weights in bfloat16 (mutually exclusive with ``int8``).
        compile (with compile_fusion): ``torch.compile(dynamic=True)`` of the encoder stack.

    ``inplace=False`` (default) works on a deep copy. ``verify`` runs the TEE once on a small random image to
    confirm by data flow that each folded batch norm really follows its convolution, and checks that the BiFPN
    maps are unchanged (max relative deviation 1e-4) after folding. A summary is stored as
    ``model.minivlm_optimizations`` (:class:`OptimizationSummary`).
    """
    if bf16 and int8:
        raise ValueError("bf16 and int8 are alternatives for the fusion transformer: choose one")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(False)
    summary = OptimizationSummary()

    for name, tee in find_tees(model):
        summary.tees.append(name or "<root>")
        if fuse_bn:
            summary.folded_batch_norms += _fold_tee(tee, verify)
        if channels_last:
            to_channels_last(tee)
            summary.channels_last = True
        if bf16_vision:
            bf16_dense_part(tee)
            summary.bf16_vision = True
        if compile and compile_vision:
            compile_dense_part(tee)
            summary.compiled.append(f"{name + '.' if name else ''}backbone+bifpn")

    fusions = find_fusion_models(model)
    summary.fusion_models = [name or "<root>" for name, _ in fusions]
    if fusions:
        if fuse_qkv:
            summary.fused_qkv_layers = fuse_qkv_projections(model)
        if int8:
            before = sum(1 for m in model.modules() if type(m) is nn.Linear)
            ranges = None
            if int8_outlier_ffn_channels or int8_outlier_other_channels:
                if int8_calibration is None:
                    raise ValueError("int8_outlier_ffn_channels / int8_outlier_other_channels need int8_calibration: a "
                                     "few batches of model inputs")
                ranges = (linear_input_ranges(model, int8_calibration) if int8_outlier_other_channels
                          else ffn_input_ranges(model, int8_calibration))
            quantize_fusion_int8(model, include_lm_head=include_lm_head, float_ffn_output=int8_float_ffn_output,
                                 engine=int8_engine, outlier_ffn_channels=int8_outlier_ffn_channels,
                                 outlier_other_channels=int8_outlier_other_channels, outlier_mode=int8_outlier_mode,
                                 reduce_range=int8_reduce_range,
                                 input_ranges=ranges)
            summary.int8_linear_layers = before - sum(1 for m in model.modules() if type(m) is nn.Linear)
        if bf16:
            fusion_to_bf16(model, include_vision=False)
            summary.bf16_fusion = True
        if compile and compile_fusion:
            compile_fusion_encoder(model)
            summary.compiled += [f"{name + '.' if name else ''}encoder" for name, _ in fusions]
    model.minivlm_optimizations = summary
    return model


def _fold_tee(tee: nn.Module, verify: bool) -> int:
    if not verify:
        return fuse_conv_bn(tee)
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
