"""CPU kernel choices for MiniVLM models, applied in place from outside the model definitions.

The model files stay plain PyTorch (correct under every loading mode: offload, quantisation, tracing, export).
`enable_cpu_fast_paths(model)` makes four choices that only pay on a CPU, without touching a parameter (the saved
weights, their names and the outputs are unchanged):

- **Few-row Linears** (`FewRowsLinear`): a cached decoding step runs each fusion Linear on two rows (the new token
  and the [MASK] query). On some CPUs BLAS runs `F.linear`'s `x @ W^T` far below memory speed for a handful of rows
  and the same dot products as `W @ x^T` on the stored `[out, in]` weight are several times faster; on others
  `F.linear` is the faster one. `few_rows_pays` times both once per weight shape and process, and a Linear gets the
  `W @ x^T` path only where it wins. Used up to 4 rows (16 for the LM head, one per beam); anything else calls
  `nn.Linear.forward`.
- **NHWC TEE input**: oneDNN's convolutions run faster on channels_last activations, with the weights as they are.
- **Per-image TEE dense part at inference**: a batch's EfficientNet + BiFPN activations overflow the CPU caches, one
  image's mostly fit; per-image convolutions give the same maps.
- **Depthwise convolutions train in float32 under CPU autocast**: oneDNN's bf16 backward of a depthwise convolution
  is slower than its float32 one (inference keeps the autocast dtype, whose forward is the faster one).

Each choice falls back to the plain computation on other devices and dtypes, under autocast where it does not help,
while tracing / compiling / exporting, and it skips modules that accelerate has hooked (offload, `device_map`), that
were replaced (int8 and other quantised Linears) or whose weights are tensor subclasses (torchao's int8 weights).
The measurements behind each: docs/results.md.
`minivlm_hf.inference.load`, the training recipes, the feature extraction and the benchmark apply it.
"""

from __future__ import annotations

import functools
import time
import types

import torch
from torch import nn
from transformers.utils import is_tracing

from .fusion import find_fusion_models
from .tee import find_tees

#: Rows up to which a fusion Linear runs as `W @ x^T` (a decoding step has 2; 6-8 rows were mixed, 32 slower).
FEW_ROWS = 4
#: The same for the vocabulary projection (one row per beam).
FEW_ROWS_LM_HEAD = 16


#: `W @ x^T` must beat `F.linear` by this factor to be used (the timings are short and the machine may be busy).
FEW_ROWS_MARGIN = 0.8


@functools.lru_cache(maxsize=None)
def _few_rows_timings(out_features: int, in_features: int, rows: int, threads: int) -> tuple[float, float]:
    """Best-of-3 seconds per call of `F.linear` and of `W @ x^T` (as `FewRowsLinear` runs it) on `rows` float32 rows
    of a random `[out_features, in_features]` weight, interleaved so that a busy moment hits both."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    x = torch.randn(rows, in_features, generator=generator)
    columns = (x.repeat(2, 1) if rows == 1 else x).t()
    calls = max(1, min(20, 2_000_000 // (out_features * in_features)))  # about 2M multiply-adds per timing
    candidates = (lambda: nn.functional.linear(x, weight, bias), lambda: torch.addmm(bias.unsqueeze(1), weight, columns))
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        for candidate in candidates:
            candidate()  # warm-up: first-call allocations and kernel selection
        for _ in range(3):
            for index, candidate in enumerate(candidates):
                start = time.perf_counter()
                for _ in range(calls):
                    candidate()
                best[index] = min(best[index], (time.perf_counter() - start) / calls)
    return best[0], best[1]


def few_rows_pays(out_features: int, in_features: int, rows: int = 2) -> bool:
    """Whether this CPU runs a `rows`-row float32 Linear of this shape faster as `W @ x^T` than with `F.linear`
    (timed once per shape, thread count and process: about a millisecond per shape, 20 for the LM head)."""
    plain, transposed = _few_rows_timings(out_features, in_features, rows, torch.get_num_threads())
    return transposed < FEW_ROWS_MARGIN * plain


def _plain_is_required(tensor: torch.Tensor) -> bool:
    return (tensor.device.type != "cpu" or is_tracing(tensor) or torch.onnx.is_in_onnx_export())


class FewRowsLinear(nn.Linear):
    """An `nn.Linear` (same parameters and state-dict names) that computes a few float32 CPU rows as `W @ x^T`."""

    max_rows: int = FEW_ROWS

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        rows = hidden_states.numel() // hidden_states.shape[-1] if hidden_states.dim() else 0
        if (not 0 < rows <= self.max_rows or hidden_states.dtype != torch.float32 or weight.dtype != torch.float32
                or weight.device.type != "cpu" or not weight.is_contiguous() or torch.is_autocast_enabled("cpu")
                or _plain_is_required(hidden_states)):
            return super().forward(hidden_states)
        flat = hidden_states.reshape(rows, -1)
        columns = (flat.repeat(2, 1) if rows == 1 else flat).t()  # BLAS's one-column path is as slow as F.linear
        out = torch.mm(weight, columns) if self.bias is None else torch.addmm(self.bias.unsqueeze(1), weight, columns)
        return out.t()[:rows].contiguous().view(*hidden_states.shape[:-1], weight.shape[0])


class FP32TrainingDepthwiseConv2d(nn.Conv2d):
    """A depthwise `nn.Conv2d` (same parameters) that trains in float32 under CPU autocast."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (self.training and hidden_states.device.type == "cpu" and torch.is_grad_enabled()
                and torch.is_autocast_enabled("cpu")):
            with torch.autocast("cpu", enabled=False):
                return super().forward(hidden_states.float())
        return super().forward(hidden_states)


def _is_hooked(module: nn.Module) -> bool:
    return hasattr(module, "_hf_hook") or "forward" in vars(module)


def has_plain_parameters(module: nn.Module) -> bool:
    """Whether `module`'s own parameters are ordinary tensors: not on the meta device and not a tensor subclass
    such as torchao's quantised weights (an int8 `Int8Tensor` in an `nn.Linear` has no `addmm` / `cat`)."""
    return all(type(p) in (nn.Parameter, torch.Tensor) and not p.is_meta for p in module.parameters(recurse=False))


def _swap_class(module: nn.Module, plain: type, fast: type) -> bool:
    """Give `module` the fast subclass's forward if it is exactly `plain`, nothing has wrapped its forward and its
    parameters are plain tensors."""
    if type(module) is not plain or _is_hooked(module) or not has_plain_parameters(module):
        return False
    module.__class__ = fast
    return True


def _nhwc_input(backbone: nn.Module, args: tuple):
    pixel_values = args[0] if args else None
    if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4 or _plain_is_required(pixel_values):
        return None
    return (pixel_values.contiguous(memory_format=torch.channels_last), *args[1:])


def _per_image_dense_features(tee: nn.Module, pixel_values: torch.Tensor) -> list:
    dense = type(tee)._dense_features
    if tee.training or pixel_values.shape[0] == 1 or _plain_is_required(pixel_values):
        return dense(tee, pixel_values)
    per_image = [dense(tee, image) for image in pixel_values.split(1)]
    return [torch.cat(level) for level in zip(*per_image)]


def _enable_tee(tee: nn.Module) -> int:
    if getattr(tee, "_minivlm_cpu_fast_paths", False) or not hasattr(type(tee), "_dense_features"):
        return 0
    changed = 0
    for module in list(tee.backbone.modules()) + list(tee.bifpn.modules()):
        if (type(module) is nn.Conv2d and module.groups > 1
                and module.groups == module.in_channels == module.out_channels):
            changed += _swap_class(module, nn.Conv2d, FP32TrainingDepthwiseConv2d)
    if not _is_hooked(tee.backbone) and not getattr(tee.backbone, "_minivlm_channels_last", False):
        tee.backbone.register_forward_pre_hook(_nhwc_input)
        tee.backbone._minivlm_channels_last = True  # `fast.to_channels_last` registers its own otherwise
        changed += 1
    if not _is_hooked(tee):
        tee._dense_features = types.MethodType(_per_image_dense_features, tee)
        changed += 1
    tee._minivlm_cpu_fast_paths = True
    return changed


def _few_rows_linear(name: str, module: nn.Module) -> int:
    """Give a plain float32 CPU `nn.Linear` the few-row path where this CPU runs it faster; 1 if it changed."""
    if type(module) is not nn.Linear or module.weight.dtype != torch.float32 or module.weight.device.type != "cpu":
        return 0
    lm_head = name.endswith("predictions.decoder")
    # A decoding step feeds 2 rows (new token + [MASK] query); the LM head sees one row per beam.
    if not few_rows_pays(module.out_features, module.in_features, rows=5 if lm_head else 2):
        return 0
    if not _swap_class(module, nn.Linear, FewRowsLinear):
        return 0
    if lm_head:
        module.max_rows = FEW_ROWS_LM_HEAD
    return 1


def _enable_fusion(fusion: nn.Module) -> int:
    changed = 0
    for name, module in fusion.named_modules():
        if name.startswith("vision_model") or ".vision_model." in f".{name}.":
            continue
        changed += _few_rows_linear(name, module)
    return changed


def enable_cpu_fast_paths(model: nn.Module) -> int:
    """Apply the CPU kernel choices above to every TEE and fusion model inside `model`, in place; returns how many
    modules changed (0 when there is nothing to do, e.g. on a second call). Parameters, state-dict names and
    `save_pretrained` output are unchanged; outputs are equal up to float rounding."""
    changed = sum(_enable_tee(tee) for _, tee in find_tees(model))
    prefix_seen = set()
    for prefix, fusion in find_fusion_models(model):
        if any(prefix.startswith(p) for p in prefix_seen):
            continue
        prefix_seen.add(prefix)
        changed += _enable_fusion(fusion)
    # The task heads around a fusion model (LM head, classifiers) live outside it.
    for name, module in model.named_modules():
        if name.endswith(("predictions.decoder", "predictions.transform.dense")):
            changed += _few_rows_linear(name, module)
    return changed


__all__ = [
    "FEW_ROWS", "FEW_ROWS_LM_HEAD", "FEW_ROWS_MARGIN", "FewRowsLinear", "FP32TrainingDepthwiseConv2d", "enable_cpu_fast_paths",
    "few_rows_pays",
]
