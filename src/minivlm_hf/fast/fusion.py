"""Inference fast paths of the fusion transformer (and the task heads on it), applied from outside the model.

- :func:`quantize_fusion_int8`: ``torch.ao.quantization.quantize_dynamic`` of the ``nn.Linear`` layers of the
  fusion transformer and its heads (int8 weights with one scale per output channel, activations quantised per call,
  int32 accumulation; oneDNN / fbgemm kernels, AMX/VNNI where the CPU has them). The TEE inside a fusion model is
  left alone. Each Linear
  quantises its input with a scale taken from that input, so an int8 captioner's cached decoding (one new token per
  step) and uncached decoding (the whole sequence per step) round differently and may pick different tokens; the
  fp32 / bf16 models give identical tokens either way.
- :func:`fuse_qkv_projections`: each attention layer's query / key / value Linears become one Linear (exact up to
  float rounding; one larger GEMM, and for int8 one activation quantisation instead of three).
- :func:`fusion_to_bf16`: the fusion transformer and heads in bfloat16 (weights converted once; the model already
  casts region features to its embedding dtype). The TEE inside is left in float32 unless asked otherwise.
- :func:`compile_fusion_encoder`: ``torch.compile`` of the encoder stack.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .tee import is_tee

__all__ = [
    "is_fusion_model",
    "find_fusion_models",
    "fusion_linear_names",
    "quantize_fusion_int8",
    "int8_engines",
    "INT8_ENGINES",
    "RowDispatchInt8Linear",
    "fuse_qkv_projections",
    "fusion_to_bf16",
    "compile_fusion_encoder",
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


def fusion_linear_names(model: nn.Module, include_lm_head: bool = True,
                        include_region_embedding: bool = False, include_ffn_output: bool = True) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers of ``model`` that are not inside a TEE.

    ``include_lm_head=False`` skips a masked-LM decoder (``cls.predictions.decoder``, tied to the word
    embeddings): quantising it unties it (an int8 copy is made) and shifts every vocabulary logit a little.
    The region embedding (``region_embeddings.*``) is skipped unless ``include_region_embedding``: its weight mixes
    ~1024 feature columns with 6 geometry columns started ~13x larger (see ``MiniVLMPreTrainedModel._init_weights``),
    so one int8 scale per tensor would round the feature weights coarsely; it is one small matmul per region.
    ``include_ffn_output=False`` skips each layer's FFN down-projection (see ``quantize_fusion_int8``).
    """
    tees = _tee_prefixes(model)
    names = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear and _outside_tees(name, tees):
            if not include_lm_head and name.endswith("predictions.decoder"):
                continue
            if not include_region_embedding and "region_embeddings." in name:
                continue
            if not include_ffn_output and _is_ffn_output(name, module):
                continue
            names.append(name)
    return names


#: ``engine`` values of :func:`quantize_fusion_int8`: "auto" (see :func:`int8_engines`), "default" (torch's current
#: ``torch.backends.quantized.engine``) or one quantized engine by name.
INT8_ENGINES = ("auto", "default", "x86", "fbgemm", "onednn")

#: Calls with at least this many rows (tokens x batch) take oneDNN's kernel under ``engine="auto"``. Measured per
#: dynamic int8 Linear, 2 threads, per-channel weights (µs, x86 vs oneDNN): 96 rows 384→1152 214 vs 160, 384→1536
#: 272 vs 188, 1536→384 287 vs 252; 32 rows 115 vs 118; 1 row (a decoding step) 53 vs 91, 1536→384 77 vs 232.
ONEDNN_MIN_ROWS = 48


def _onednn_int8_is_fast() -> bool:
    """oneDNN's int8 GEMMs need VNNI (AVX512-VNNI / AMX) to beat fbgemm; torch exposes the check privately."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    try:
        return bool(check()) and "onednn" in torch.backends.quantized.supported_engines
    except Exception:  # noqa: BLE001 - a missing / changed private check means "no"
        return False


def int8_engines(engine: str = "auto") -> tuple[str, ...]:
    """The quantized engine(s) whose kernels will run the dynamic int8 Linears: one engine, or for ``"auto"`` on a
    CPU with VNNI ``("onednn", default)``: oneDNN for calls of at least :data:`ONEDNN_MIN_ROWS` rows (encoding a
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


class RowDispatchInt8Linear(nn.Module):
    """One dynamic int8 Linear packed for two quantized engines: ``many`` (oneDNN) runs calls with at least
    ``min_rows`` rows, ``few`` (x86 / fbgemm) the others. Both quantise weights and activations the same way, so the
    outputs agree to float rounding; only the kernels differ. Deep copies repack each with its own engine."""

    def __init__(self, many: nn.Module, few: nn.Module, engines: tuple[str, str], min_rows: int = ONEDNN_MIN_ROWS):
        super().__init__()
        self.many, self.few = many, few
        self.engines = tuple(engines)
        self.min_rows = int(min_rows)
        self.in_features, self.out_features = few.in_features, few.out_features

    def pack_for(self, x: torch.Tensor) -> nn.Module:
        """The packed Linear that runs ``x``."""
        return self.many if x.numel() >= self.min_rows * self.in_features else self.few

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pack = self.pack_for(x)
        if pack._packed_params.dtype != torch.qint8 or getattr(pack, "version", None) is None or pack.version < 4:
            return pack(x)
        # what the packed module's forward does, without a second module call per Linear (~10 µs each here)
        return torch.ops.quantized.linear_dynamic(x, pack._packed_params._packed_params,
                                                  reduce_range=True).to(x.dtype)

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
        clone = type(self)(many, few, self.engines, self.min_rows)
        clone.train(self.training)
        return clone

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.engines[0]} for >= "
                f"{self.min_rows} rows, else {self.engines[1]}")


def quantize_fusion_int8(model: nn.Module, include_lm_head: bool = True, per_channel: bool = True,
                         float_ffn_output: bool = False, engine: str = "auto") -> nn.Module:
    """Dynamic int8 quantisation of the fusion transformer's (and heads') ``nn.Linear`` layers, in place.

    ``per_channel`` (default): one weight scale per output channel (``per_channel_dynamic_qconfig``); ``False``: one
    per tensor (``default_dynamic_qconfig``), which on the demo's models lost 2.5 VQA points and 4 NLVR points where
    per-channel scales lost none (+0.3 / +0.5), at the same speed.
    ``float_ffn_output``: keep each layer's FFN down-projection (``layer.N.output.dense``) in float. Its input, the
    GELU output, has a few channels 80-160x the mean magnitude (measured on the demo's models, layers 0-3), so one
    dynamic activation scale per tensor rounds everything else coarsely; on the demo's models int8 lost 1.2 CIDEr-D
    points and 4 image→text R@1 points with it quantised, and none with it in float (CIDEr-D +1.4, R@1 +5), but VQA
    relation questions moved by -3.85 and NLVR by -1.5 in the same parity run, and the fusion's speed-up over fp32
    fell from 1.55x to 1.29x (a third of the Linear FLOPs stay fp32).
    ``engine``: whose kernels run the int8 GEMMs (:data:`INT8_ENGINES`, :func:`int8_engines`); ``"auto"`` packs each
    Linear for oneDNN and for torch's default engine on a VNNI CPU and picks per call by row count
    (:class:`RowDispatchInt8Linear`).
    Returns ``model``. Needs a model in eval mode on the CPU; the result runs on the CPU only and cannot be trained.
    """
    if model.training:
        raise ValueError("quantize_fusion_int8 needs a model in eval mode (model.eval())")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    engines = int8_engines(engine)
    names = fusion_linear_names(model, include_lm_head=include_lm_head, include_ffn_output=not float_ffn_output)
    if not names:
        return model
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig

    def quantized(linear: nn.Module, name: str) -> nn.Module:
        with _quantized_engine(name):
            return quantize_dynamic(nn.Sequential(linear), qconfig_spec={nn.Linear: qconfig}, dtype=torch.qint8)[0]

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (not installed here); the eager dynamic path
        # still works in this torch release.
        warnings.simplefilter("ignore")
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            linear = getattr(parent, child)
            packs = [quantized(linear, e) for e in engines]
            setattr(parent, child, packs[0] if len(packs) == 1 else RowDispatchInt8Linear(*packs, engines))
    model._minivlm_int8 = True
    model._minivlm_int8_engines = engines
    return model


def fuse_qkv_projections(model: nn.Module) -> int:
    """Replace the ``query`` / ``key`` / ``value`` Linears of every attention layer that supports it
    (``supports_fused_qkv``; remote code saved before this existed does not) by one ``qkv`` Linear, in place.
    Returns the number of layers fused. Inference only: the model's state dict changes (no longer BERT's names)."""
    fused = 0
    for module in model.modules():
        if not getattr(type(module), "supports_fused_qkv", False):
            continue
        parts = [getattr(module, name, None) for name in ("query", "key", "value")]
        if not all(type(p) is nn.Linear and p.bias is not None for p in parts):
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


def compile_fusion_encoder(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` (``nn.Module.compile``, names unchanged) of the encoder of every fusion model inside
    ``model``. Sequence lengths change between tasks and decoding steps, so ``dynamic=True`` by default."""
    compile_kwargs.setdefault("dynamic", True)
    for _, fusion in find_fusion_models(model):
        fusion.encoder.compile(**compile_kwargs)
    return model
