"""CPU kernel choices for MiniVLM models, applied in place from outside the model definitions.

The model files stay plain PyTorch (correct under every loading mode: offload, quantisation, tracing, export).
`enable_cpu_fast_paths(model)` makes four choices that only pay on a CPU, without touching a parameter (the saved
weights, their names and the outputs are unchanged):

- **Few-row Linears** (`FewRowsLinear`): a cached decoding step runs each fusion Linear on two rows (the new token
  and the [MASK] query). CPU BLAS runs `F.linear`'s `x @ W^T` far below memory speed for a handful of rows; the same
  dot products as `W @ x^T` on the stored `[out, in]` weight are several times faster (the vocabulary projection
  included). Used up to 4 rows (16 for the LM head, one per beam); anything else calls `nn.Linear.forward`.
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


def _enable_fusion(fusion: nn.Module) -> int:
    changed = 0
    for name, module in fusion.named_modules():
        if name.startswith("vision_model") or ".vision_model." in f".{name}.":
            continue
        if type(module) is nn.Linear and _swap_class(module, nn.Linear, FewRowsLinear):
            if name.endswith("predictions.decoder"):
                module.max_rows = FEW_ROWS_LM_HEAD
            changed += 1
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
        if name.endswith("predictions.decoder") and _swap_class(module, nn.Linear, FewRowsLinear):
            module.max_rows = FEW_ROWS_LM_HEAD
            changed += 1
        elif name.endswith("predictions.transform.dense") and _swap_class(module, nn.Linear, FewRowsLinear):
            changed += 1
    return changed


__all__ = ["FEW_ROWS", "FEW_ROWS_LM_HEAD", "FewRowsLinear", "FP32TrainingDepthwiseConv2d", "enable_cpu_fast_paths"]
