"""Dynamic int8 quantisation of the fusion transformer's (and heads') ``nn.Linear`` layers (``torch.ao``), for an
inference-only copy; :mod:`.torchao_int8` gives an int8 model that saves, reloads and pushes.

- :func:`quantize_fusion_int8`: int8 weights with one scale per output channel, activations quantised per call
  (one scale per tensor), int32 accumulation, on torch's default quantized engine (x86 / fbgemm). The TEE inside a
  fusion model is left alone. Each Linear quantises its input with a scale taken from that input, so an int8
  captioner's cached decoding (one new token per step) and uncached decoding (the whole sequence per step) round
  differently and may pick different tokens; the fp32 / bf16 models give identical tokens either way.
- :class:`FullRangeInt8Linear` / :func:`full_range_activations_are_safe`: activations quantised to 8 bits instead of
  torch's 7 where the CPU's int8 kernels cannot saturate (VNNI / AMX); half the activation rounding error.
- :func:`linear_input_ranges` and :class:`OutlierScaledInt8Linear`: a few input channels of the FFN down-projections
  (the GELU output) are far larger than the rest and coarsen the per-tensor activation scale. Given calibration
  ranges, the :data:`OUTLIER_FFN_CHANNELS` / :data:`OUTLIER_OTHER_CHANNELS` largest input channels of each Linear
  are scaled into the others' range; this keeps every parity metric within a point of fp32 (docs/results.md).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from .fusion import _is_ffn_output, fusion_linear_names

__all__ = [
    "OUTLIER_FFN_CHANNELS",
    "OUTLIER_OTHER_CHANNELS",
    "FullRangeInt8Linear",
    "OutlierScaledInt8Linear",
    "full_range_activations_are_safe",
    "linear_input_ranges",
    "outlier_input_scale",
    "quantize_fusion_int8",
]

#: Calibrated outlier input channels scaled into range per FFN down-projection (of 1536 in MiniLM-L12-H384) and
#: per other Linear (of 384): the counts the parity runs measured (docs/results.md, fast-path quality).
OUTLIER_FFN_CHANNELS = 16
OUTLIER_OTHER_CHANNELS = 8


def _cpu_supports(check_name: str) -> bool:
    """One of torch's private CPU feature checks (``torch.cpu._is_vnni_supported`` ...); missing or failing: no."""
    check = getattr(torch.cpu, check_name, None)
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - a missing / changed private check means "no"
        return False


def full_range_activations_are_safe() -> bool:
    """Whether dynamic int8 Linears may quantise activations to the full 8 bits (``reduce_range=False``). torch's
    dynamic Linear always uses 7 bits because AVX2 kernels sum pairs of u8 x s8 products in saturating int16
    (255 x 127 x 2 overflows); VNNI / AMX kernels accumulate in int32, so on those CPUs the 8th bit is free and
    halves the activation rounding error."""
    return _cpu_supports("_is_vnni_supported")


class FullRangeInt8Linear(nn.Module):
    """A ``torch.ao`` dynamic int8 Linear (``pack``) run with activations quantised to the full 8 bits
    (``reduce_range=False``; see :func:`full_range_activations_are_safe`). Calls the quantized op directly: the
    module call's overhead is a visible share of a small int8 GEMM."""

    def __init__(self, pack: nn.Module):
        super().__init__()
        self.pack = pack
        self.in_features, self.out_features = pack.in_features, pack.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.pack._packed_params._packed_params,
                                                  reduce_range=False).to(x.dtype)

    def weight(self):
        return self.pack.weight()

    def bias(self):
        return self.pack.bias()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 8-bit activations"


def outlier_input_scale(ranges: torch.Tensor, outliers: torch.Tensor) -> torch.Tensor:
    """Per input channel, the factor ``s`` that brings each ``outliers`` channel's calibration range down to the
    largest range among the other channels (``s >= 1``; 1 for every other channel)."""
    ranges = ranges.detach().float().clamp(min=1e-12)
    ordinary = ranges.sort(descending=True).values[min(outliers.numel(), ranges.numel() - 1)]
    scale = torch.ones(ranges.numel())
    scale[outliers] = (ranges[outliers] / ordinary).clamp(min=1.0)
    return scale


class OutlierScaledInt8Linear(nn.Module):
    """A Linear whose few ``outliers`` input channels are scaled into the range of the others before int8
    (SmoothQuant's migration, restricted to the calibrated outlier channels): the input is multiplied by
    ``1 / s`` and the matching weight columns by ``s``, with ``s`` from :func:`outlier_input_scale`, so the product
    is unchanged in exact arithmetic. Costs one elementwise multiply (no float GEMM), at the price of coarser weight
    scales for the output channels whose largest weight sits in a scaled column."""

    def __init__(self, linear: nn.Linear, outliers: torch.Tensor, quantize, ranges: torch.Tensor):
        super().__init__()
        outliers = torch.as_tensor(outliers, dtype=torch.long).unique()
        scale = outlier_input_scale(ranges, outliers)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("outlier_index", outliers, persistent=False)
        self.register_buffer("inverse_scale", (1.0 / scale).to(linear.weight.dtype), persistent=False)
        inner = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            inner.weight.copy_(linear.weight.detach() * scale.to(linear.weight.dtype))
            if linear.bias is not None:
                inner.bias.copy_(linear.bias.detach())
        self.rest = quantize(inner.eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest.forward(x * self.inverse_scale.to(x.dtype))  # .forward: no second module call

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.outlier_index.numel()} input channels scaled into range")


def _model_inputs(model: nn.Module, batch: dict) -> dict:
    """The entries of ``batch`` that ``model.forward`` takes (collators add labels, image indices, ...)."""
    accepted = set(inspect.signature(model.forward).parameters) - {"labels"}
    return {k: v for k, v in batch.items() if k in accepted}


def linear_input_ranges(model: nn.Module, batches: Iterable[dict] | dict,
                        names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Per input channel, the largest ``|x|`` that reaches each Linear ``names`` (default: every Linear that
    :func:`quantize_fusion_int8` quantises) of ``model`` over ``batches`` (dicts of model inputs, e.g. collator
    outputs of a few validation rows; entries ``model.forward`` does not take, such as labels, are dropped).
    Keys: the Linears' qualified names. :func:`quantize_fusion_int8` picks the outlier channels from these."""
    if isinstance(batches, dict):
        batches = [batches]
    names = fusion_linear_names(model) if names is None else list(names)
    if not names:
        raise ValueError("linear_input_ranges: no Linear to calibrate")
    ranges: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            peak = args[0].detach().abs().flatten(0, -2).amax(0).float()
            ranges[name] = peak if name not in ranges else torch.maximum(ranges[name], peak)
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**_model_inputs(model, batch))
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("linear_input_ranges: no calibration batch given")
    return ranges


def quantize_fusion_int8(model: nn.Module, input_ranges: dict[str, torch.Tensor] | None = None, *,
                         outlier_ffn_channels: int = OUTLIER_FFN_CHANNELS,
                         outlier_other_channels: int = OUTLIER_OTHER_CHANNELS) -> nn.Module:
    """Dynamic int8 quantisation of the fusion transformer's (and heads') ``nn.Linear`` layers, in place.

    Weights: one int8 scale per output channel (one per tensor lost 2-4 points of VQA / NLVR). Activations: 8 bits
    where :func:`full_range_activations_are_safe` (:class:`FullRangeInt8Linear`), torch's 7 elsewhere.
    ``input_ranges`` (from :func:`linear_input_ranges` on calibration batches): the ``outlier_ffn_channels`` input
    channels of each FFN down-projection and the ``outlier_other_channels`` of every other Linear with the largest
    calibration range are scaled into the others' range (:class:`OutlierScaledInt8Linear`). Without it: plain int8,
    which loses more than a point on some metrics (parity and speed of both: docs/results.md).
    Returns ``model``. Needs a model in eval mode on the CPU; the result runs on the CPU only and cannot be trained.
    """
    if model.training:
        raise ValueError("quantize_fusion_int8 needs a model in eval mode (model.eval())")
    if outlier_ffn_channels < 0 or outlier_other_channels < 0:
        raise ValueError(f"outlier_ffn_channels / outlier_other_channels must be >= 0, got {outlier_ffn_channels} / "
                         f"{outlier_other_channels}")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = fusion_linear_names(model)
    if not names:
        return model
    outliers = {}
    if input_ranges is not None:
        missing = [n for n in names if n not in input_ranges]
        if missing:
            raise ValueError(f"input_ranges has no calibration range for {missing[:3]}"
                             + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                             + ": compute them with linear_input_ranges(model, batches)")
        for n in names:
            linear = model.get_submodule(n)
            k = outlier_ffn_channels if _is_ffn_output(n, linear) else outlier_other_channels
            if k:
                outliers[n] = input_ranges[n].topk(min(int(k), linear.in_features - 1)).indices
    full_range = full_range_activations_are_safe()

    def quantize(linear: nn.Module) -> nn.Module:
        linear.__class__ = nn.Linear  # a `FewRowsLinear` is a plain Linear for torch's type-keyed quantisation
        pack = quantize_dynamic(nn.Sequential(linear), qconfig_spec={nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)[0]
        return FullRangeInt8Linear(pack) if full_range else pack

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (not installed here); the eager dynamic path
        # still works in this torch release.
        warnings.simplefilter("ignore")
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            linear = getattr(parent, child)
            if name in outliers:
                setattr(parent, child, OutlierScaledInt8Linear(linear, outliers[name], quantize, input_ranges[name]))
            else:
                setattr(parent, child, quantize(linear))
    model._minivlm_int8 = True
    return model
