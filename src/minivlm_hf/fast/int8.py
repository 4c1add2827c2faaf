"""Dynamic int8 quantisation of the fusion transformer's (and heads') ``nn.Linear`` layers (``torch.ao``).

- :func:`quantize_fusion_int8`: int8 weights with one scale per output channel, activations quantised per call
  (one scale per tensor), int32 accumulation; oneDNN / fbgemm kernels, AMX/VNNI where the CPU has them. The TEE
  inside a fusion model is left alone. Each Linear quantises its input with a scale taken from that input, so an
  int8 captioner's cached decoding (one new token per step) and uncached decoding (the whole sequence per step)
  round differently and may pick different tokens; the fp32 / bf16 models give identical tokens either way.
- :class:`RowDispatchInt8Linear`: one Linear packed for two engines, picked per call by row count.
- :class:`FullRangeInt8Linear` / :func:`full_range_activations_are_safe`: activations quantised to 8 bits instead of
  torch's 7 where the CPU's int8 kernels cannot saturate (VNNI / AMX).
- :func:`linear_input_ranges` / :func:`ffn_input_ranges`: per-channel input ranges on calibration batches, from
  which the few outlier input channels of a Linear are picked and then either kept in float, LLM.int8()-style
  (:class:`OutlierSplitInt8Linear`), or scaled into the others' range (:class:`OutlierScaledInt8Linear`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from .fusion import _is_ffn_output, fusion_linear_names

__all__ = [
    "INT8_ENGINES",
    "ONEDNN_MIN_ROWS",
    "int8_engines",
    "RowDispatchInt8Linear",
    "FullRangeInt8Linear",
    "full_range_activations_are_safe",
    "OutlierSplitInt8Linear",
    "OutlierScaledInt8Linear",
    "ffn_input_ranges",
    "outlier_input_scale",
    "linear_input_ranges",
    "quantize_fusion_int8",
]


#: ``engine`` values of :func:`quantize_fusion_int8`: "auto" (see :func:`int8_engines`), "default" (torch's current
#: ``torch.backends.quantized.engine``) or one quantized engine by name.
INT8_ENGINES = ("auto", "default", "x86", "fbgemm", "onednn")

#: Calls with at least this many rows (tokens x batch) take oneDNN's kernel under ``engine="auto"``: oneDNN is the
#: faster one for sequences, x86 / fbgemm for the few rows of a decoding step, and they are about equal at 32 rows
#: (per-Linear timings in docs/results.md, int8 experiments).
ONEDNN_MIN_ROWS = 48


def _cpu_supports(check_name: str) -> bool:
    """One of torch's private CPU feature checks (``torch.cpu._is_vnni_supported`` ...); missing or failing: no."""
    check = getattr(torch.cpu, check_name, None)
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - a missing / changed private check means "no"
        return False


def _onednn_int8_is_fast() -> bool:
    """oneDNN's int8 GEMMs beat fbgemm's for sequences on AMX CPUs but not with AVX512-VNNI alone (measured:
    docs/results.md, int8 experiments)."""
    return _cpu_supports("_is_amx_tile_supported") and "onednn" in torch.backends.quantized.supported_engines


def full_range_activations_are_safe() -> bool:
    """Whether dynamic int8 Linears may quantise activations to the full 8 bits (``reduce_range=False``). torch's
    dynamic Linear always uses 7 bits because AVX2 kernels sum pairs of u8 x s8 products in saturating int16
    (255 x 127 x 2 overflows); VNNI / AMX kernels accumulate in int32, so on those CPUs the 8th bit is free and
    halves the activation rounding error."""
    return _cpu_supports("_is_vnni_supported")


def int8_engines(engine: str = "auto") -> tuple[str, ...]:
    """The quantized engine(s) whose kernels will run the dynamic int8 Linears: one engine, or for ``"auto"`` on a
    CPU with AMX ``("onednn", default)``: oneDNN for calls of at least :data:`ONEDNN_MIN_ROWS` rows (encoding a
    sequence), torch's default engine (x86 / fbgemm) for fewer (decoding steps), where oneDNN's fixed cost
    dominates. It is the packing, not the global setting at call time, that picks the kernel."""
    if engine not in INT8_ENGINES:
        raise ValueError(f"engine must be one of {INT8_ENGINES}, got {engine!r}")
    default = torch.backends.quantized.engine
    if engine == "default":
        return (default,)
    if engine == "auto":
        return ("onednn", default) if _onednn_int8_is_fast() and default != "onednn" else (default,)
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {engine!r} is not available in this torch build "
                         f"(supported: {torch.backends.quantized.supported_engines})")
    return (engine,)


@contextmanager
def _quantized_engine(name: str):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _dynamic_int8_linear(pack: nn.Module, x: torch.Tensor, reduce_range: bool = True) -> torch.Tensor:
    """What a ``torch.ao`` dynamic quantized Linear's forward does (there always with ``reduce_range=True``),
    without the module call, whose overhead is a visible share of a small int8 GEMM."""
    if pack._packed_params.dtype != torch.qint8 or getattr(pack, "version", None) is None or pack.version < 4:
        return pack(x)
    return torch.ops.quantized.linear_dynamic(x, pack._packed_params._packed_params,
                                              reduce_range=reduce_range).to(x.dtype)


class FullRangeInt8Linear(nn.Module):
    """A ``torch.ao`` dynamic int8 Linear (``pack``) run with activations quantised to the full 8 bits
    (``reduce_range=False``; see :func:`full_range_activations_are_safe`)."""

    def __init__(self, pack: nn.Module):
        super().__init__()
        self.pack = pack
        self.in_features, self.out_features = pack.in_features, pack.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dynamic_int8_linear(self.pack, x, reduce_range=False)

    def weight(self):
        return self.pack.weight()

    def bias(self):
        return self.pack.bias()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 8-bit activations"


class RowDispatchInt8Linear(nn.Module):
    """One dynamic int8 Linear packed for two quantized engines: ``many`` (oneDNN) runs calls with at least
    ``min_rows`` rows, ``few`` (x86 / fbgemm) the others. With 7-bit activations (``reduce_range=True``) both
    quantise alike and the outputs agree to float rounding (2e-8); with 8-bit activations they pick the activation
    quantisation parameters slightly differently (equally accurate against float, but the outputs differ).
    Deep copies repack each with its own engine."""

    def __init__(self, many: nn.Module, few: nn.Module, engines: tuple[str, str], min_rows: int = ONEDNN_MIN_ROWS,
                 reduce_range: bool = True):
        super().__init__()
        self.many, self.few = many, few
        self.engines = tuple(engines)
        self.min_rows = int(min_rows)
        self.reduce_range = bool(reduce_range)
        self.in_features, self.out_features = few.in_features, few.out_features

    def pack_for(self, x: torch.Tensor) -> nn.Module:
        """The packed Linear that runs ``x``."""
        return self.many if x.numel() >= self.min_rows * self.in_features else self.few

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dynamic_int8_linear(self.pack_for(x), x, self.reduce_range)

    def weight(self):
        return self.few.weight()

    def bias(self):
        return self.few.bias()

    def __deepcopy__(self, memo):
        import copy

        with _quantized_engine(self.engines[0]):
            many = copy.deepcopy(self.many, memo)
        with _quantized_engine(self.engines[1]):
            few = copy.deepcopy(self.few, memo)
        clone = type(self)(many, few, self.engines, self.min_rows, self.reduce_range)
        clone.train(self.training)
        return clone

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.engines[0]} for >= "
                f"{self.min_rows} rows, else {self.engines[1]}, {7 if self.reduce_range else 8}-bit activations")


def _quantized_copy(linear: nn.Linear, weight: torch.Tensor, quantize) -> nn.Module:
    """``quantize`` of a copy of ``linear`` with ``weight`` in place of its weight (same bias)."""
    inner = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        inner.weight.copy_(weight)
        if linear.bias is not None:
            inner.bias.copy_(linear.bias.detach())
    return quantize(inner.eval())


class OutlierSplitInt8Linear(nn.Module):
    """A Linear whose input has a few outlier channels (an FFN down-projection: a handful of GELU-output channels
    several times larger than the rest): those ``outliers`` input channels are multiplied in float, the others by
    the int8 module ``quantize(rest)``, LLM.int8()-style. With the outliers out of the int8 input, its per-tensor
    activation scale follows the ordinary channels. The int8 part keeps the full input width with the outlier
    channels zeroed (input and weight columns): gathering the other channels instead cost more than the GEMM."""

    def __init__(self, linear: nn.Linear, outliers: torch.Tensor, quantize):
        super().__init__()
        outliers = torch.as_tensor(outliers, dtype=torch.long).unique()
        keep = torch.ones(linear.in_features, dtype=linear.weight.dtype)
        keep[outliers] = 0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("outlier_index", outliers, persistent=False)
        self.register_buffer("rest_mask", keep, persistent=False)
        weight = linear.weight.detach()
        self.outlier_weight = nn.Parameter(weight[:, outliers].clone(), requires_grad=False)
        # zeroed columns: the weight scales ignore the float channels too
        self.rest = _quantized_copy(linear, weight * keep, quantize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rest(x * self.rest_mask.to(x.dtype))
        return out + nn.functional.linear(x.index_select(-1, self.outlier_index), self.outlier_weight.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.outlier_index.numel()} input channels in float")


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
    is unchanged in exact arithmetic. Costs one elementwise multiply: unlike :class:`OutlierSplitInt8Linear` no
    float GEMM, at the price of coarser weight scales for the output channels whose largest weight sits in a scaled
    column."""

    def __init__(self, linear: nn.Linear, outliers: torch.Tensor, quantize, ranges: torch.Tensor):
        super().__init__()
        outliers = torch.as_tensor(outliers, dtype=torch.long).unique()
        scale = outlier_input_scale(ranges, outliers)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("outlier_index", outliers, persistent=False)
        self.register_buffer("inverse_scale", (1.0 / scale).to(linear.weight.dtype), persistent=False)
        self.rest = _quantized_copy(linear, linear.weight.detach() * scale.to(linear.weight.dtype), quantize)

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
    outputs of training or validation rows; entries ``model.forward`` does not take, such as labels, are dropped).
    Keys: the Linears' qualified names. Used to pick the channels that :func:`quantize_fusion_int8` keeps in float."""
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


def ffn_input_ranges(model: nn.Module, batches: Iterable[dict] | dict) -> dict[str, torch.Tensor]:
    """:func:`linear_input_ranges` of the FFN down-projections (``layer.N.output.dense``) only."""
    names = [n for n in fusion_linear_names(model) if _is_ffn_output(n, model.get_submodule(n))]
    if not names:
        raise ValueError("ffn_input_ranges: the model has no FFN down-projection (layer.N.output.dense)")
    return linear_input_ranges(model, batches, names)


def quantize_fusion_int8(model: nn.Module, include_lm_head: bool = True, per_channel: bool = True,
                         float_ffn_output: bool = False, engine: str = "auto", outlier_ffn_channels: int = 0,
                         outlier_other_channels: int = 0, outlier_mode: str = "float",
                         input_ranges: dict[str, torch.Tensor] | None = None,
                         reduce_range: bool | None = None) -> nn.Module:
    """Dynamic int8 quantisation of the fusion transformer's (and heads') ``nn.Linear`` layers, in place.

    ``per_channel`` (default): one weight scale per output channel (``per_channel_dynamic_qconfig``); ``False``: one
    per tensor (``default_dynamic_qconfig``), which loses accuracy at the same speed.
    ``float_ffn_output``: keep each layer's FFN down-projection (``layer.N.output.dense``) in float. Its input, the
    GELU output, has a few channels far above the rest, so one dynamic activation scale per tensor rounds everything
    else coarsely; keeping it in float costs a third of the Linear FLOPs in fp32 (less speed-up).
    ``outlier_ffn_channels`` (with ``input_ranges`` from :func:`ffn_input_ranges` / :func:`linear_input_ranges`):
    instead keep only that many input channels of each FFN down-projection in float, those with the largest
    calibration range (:class:`OutlierSplitInt8Linear`); everything else int8. ``outlier_other_channels``: the same
    for every other quantised Linear (attention projections, FFN up-projections, heads). ``outlier_mode``:
    ``"float"`` multiplies those channels in float (:class:`OutlierSplitInt8Linear`), ``"scale"`` scales them into
    the int8 range of the others (:class:`OutlierScaledInt8Linear`, no float GEMM, so nearly plain int8's speed).
    Each variant's parity and speed: docs/results.md.
    ``engine``: whose kernels run the int8 GEMMs (:data:`INT8_ENGINES`, :func:`int8_engines`); ``"auto"`` packs each
    Linear for oneDNN and for torch's default engine on an AMX CPU and picks per call by row count
    (:class:`RowDispatchInt8Linear`).
    ``reduce_range``: quantise activations to 7 bits (torch's dynamic Linear always does) or, ``False``, to the
    full 8 (:class:`FullRangeInt8Linear` / :class:`RowDispatchInt8Linear`); ``None`` (default): 8 bits where
    :func:`full_range_activations_are_safe` (VNNI / AMX CPUs), else 7.
    Returns ``model``. Needs a model in eval mode on the CPU; the result runs on the CPU only and cannot be trained.
    """
    if model.training:
        raise ValueError("quantize_fusion_int8 needs a model in eval mode (model.eval())")
    if outlier_ffn_channels and float_ffn_output:
        raise ValueError("float_ffn_output keeps the whole FFN down-projection in float; outlier_ffn_channels only some "
                         "of its channels: choose one")
    if outlier_mode not in ("float", "scale"):
        raise ValueError(f"outlier_mode must be 'float' or 'scale', got {outlier_mode!r}")
    if outlier_ffn_channels < 0 or outlier_other_channels < 0:
        raise ValueError(f"outlier_ffn_channels / outlier_other_channels must be >= 0, got {outlier_ffn_channels} / "
                         f"{outlier_other_channels}")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    engines = int8_engines(engine)
    names = fusion_linear_names(model, include_lm_head=include_lm_head, include_ffn_output=not float_ffn_output)
    if not names:
        return model
    split = {}
    for n in names:
        k = outlier_ffn_channels if _is_ffn_output(n, model.get_submodule(n)) else outlier_other_channels
        if k:
            split[n] = k
    missing = [n for n in split if n not in (input_ranges or {})]
    if missing:
        raise ValueError(f"outlier_ffn_channels / outlier_other_channels need calibration ranges (linear_input_ranges) "
                         f"for {missing[:3]}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig

    def packed(linear: nn.Module, name: str) -> nn.Module:
        with _quantized_engine(name):
            return quantize_dynamic(nn.Sequential(linear), qconfig_spec={nn.Linear: qconfig}, dtype=torch.qint8)[0]

    if reduce_range is None:
        reduce_range = not full_range_activations_are_safe()

    def quantize(linear: nn.Module) -> nn.Module:
        packs = [packed(linear, e) for e in engines]
        if len(packs) == 2:
            return RowDispatchInt8Linear(*packs, engines, reduce_range=reduce_range)
        return packs[0] if reduce_range else FullRangeInt8Linear(packs[0])

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (not installed here); the eager dynamic path
        # still works in this torch release.
        warnings.simplefilter("ignore")
        outliers = {n: input_ranges[n].topk(min(int(k), model.get_submodule(n).in_features - 1)).indices
                    for n, k in split.items()}
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            linear = getattr(parent, child)
            if name not in split:
                setattr(parent, child, quantize(linear))
            elif outlier_mode == "float":
                setattr(parent, child, OutlierSplitInt8Linear(linear, outliers[name], quantize))
            else:
                setattr(parent, child, OutlierScaledInt8Linear(linear, outliers[name], quantize, input_ranges[name]))
    model._minivlm_int8 = True
    model._minivlm_int8_engines = engines
    return model
