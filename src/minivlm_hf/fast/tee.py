"""Inference fast paths of the TEE detector, applied from outside the model definition.

Nothing here edits ``modeling_minivlm_tee.py``: each function transforms an already built (eval-mode) TEE module
tree in place.

- :func:`fuse_conv_bn`: fold every batch norm that directly follows a convolution into that convolution
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and replace the batch norm by what is left of it (``Identity``,
  or the activation of timm's ``BatchNormAct2d``). The TEE-B0 has 76 such pairs (48 in the EfficientNet, 28 in
  the BiFPN). Pairs are found structurally (a ``Conv2d`` followed, in registration order inside the same parent, by
  a ``BatchNorm2d`` of matching width) and, when an example input is given, confirmed by data flow: during one
  forward pass the batch norm must receive exactly the tensor the convolution returned.
- :func:`to_channels_last`: convolution weights and the backbone's input in ``torch.channels_last`` (NHWC), which
  lets oneDNN run the depthwise convolutions without layout reorders.
- :func:`compile_dense_part`: ``torch.compile`` of the shape-static dense part (EfficientNet + BiFPN); the
  proposal selection / NMS / RoIAlign stages have data-dependent shapes and stay eager.
- :func:`bf16_dense_part`: run the EfficientNet + BiFPN in bfloat16 (weights converted, input cast on entry, the
  BiFPN maps cast back to float32 so that proposals, RoIAlign, box head and NMS stay float32).

About ``aten::_slow_conv2d_forward`` in CPU profiles of the TEE: PyTorch sends a float32 convolution to oneDNN
only if it is grouped, or has a kernel larger than 3x3, or a batch larger than 1, or an input of more than 20480
elements (and, for an unstrided 1x1 convolution at batch < 16, only with more than one intra-op thread); otherwise
it uses its own im2col + GEMM ("slow" is the kernel's name, not a diagnosis). At batch 1, 512x512 and 2 threads
that is 56 small convolutions per image: the 32 squeeze-excitation 1x1 convolutions of the EfficientNet (on 1x1
pooled maps), the 15 BiFPN pointwise convolutions on P5-P7 (16x16 and smaller, 64 channels) and the 9 proposal-head
convolutions on P5-P7. None is depthwise, dilated or non-contiguous (depthwise convolutions always go to oneDNN);
they are tiny and PyTorch picks that path on purpose. With one thread every unstrided 1x1 convolution of the
network takes it too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "is_tee",
    "find_tees",
    "find_conv_bn_pairs",
    "fuse_conv_bn",
    "to_channels_last",
    "compile_dense_part",
    "bf16_dense_part",
    "tee_example_input",
]

_TEE_PARTS = ("backbone", "bifpn", "proposal_head", "roi_pooler", "box_head", "predictor")


def is_tee(module: nn.Module) -> bool:
    """True for a TEE region extractor (``TEEModel``, also when loaded as remote code: checked by its parts)."""
    return all(isinstance(getattr(module, name, None), nn.Module) for name in _TEE_PARTS)


def find_tees(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, TEE)`` of every TEE inside ``model`` (``model`` itself included), outermost only."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if is_tee(module) and not any(name.startswith(prefix + ".") or prefix == "" for prefix, _ in found):
            found.append((name, module))
    return found


def tee_example_input(tee: nn.Module, size: int | None = None) -> torch.Tensor:
    """A small random ``(1, C, size, size)`` input (default one ``2**max_level`` tile, 128 px for the TEE)."""
    config = getattr(tee, "config", None)
    channels = getattr(config, "num_channels", 3)
    size = size or 2 ** getattr(config, "max_level", 7)
    param = next(tee.parameters())
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, size, size, generator=gen).to(param.device)


# ------------------------------------------------------------------------------------------------ conv + BN folding


def _structural_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.num_features == conv.out_channels
                and bn.track_running_stats
                and bn.running_mean is not None
            ):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + conv_name, prefix + bn_name))
    return pairs


def _confirmed_by_data_flow(model: nn.Module, pairs, run) -> list[tuple[str, str]]:
    """Keep the pairs whose batch norm always received exactly the tensor its convolution returned."""
    modules = dict(model.named_modules())
    last_output: dict[str, int] = {}
    ok = {pair: None for pair in pairs}  # None = never ran
    conv_of = {bn: conv for conv, bn in pairs}
    handles = []

    def conv_hook(name):
        def hook(_module, _args, output):
            last_output[name] = id(output)

        return hook

    def bn_hook(name):
        def hook(_module, args):
            conv = conv_of[name]
            same = bool(args) and id(args[0]) == last_output.get(conv)
            key = (conv, name)
            ok[key] = same if ok[key] is None else (ok[key] and same)

        return hook

    try:
        for conv, bn in pairs:
            handles.append(modules[conv].register_forward_hook(conv_hook(conv)))
            handles.append(modules[bn].register_forward_pre_hook(bn_hook(bn)))
        with torch.inference_mode():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return [pair for pair, good in ok.items() if good]


def find_conv_bn_pairs(model: nn.Module, run=None) -> list[tuple[str, str]]:
    """Qualified ``(conv, batch_norm)`` names that can be folded. ``run``: a zero-argument callable running a
    forward pass of ``model`` (for the data-flow confirmation; without it the structural rule alone decides)."""
    pairs = _structural_pairs(model)
    if run is not None and pairs:
        pairs = _confirmed_by_data_flow(model, pairs, run)
    return pairs


def _replacement_for(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a batch norm once folded: nothing, or timm ``BatchNormAct2d``'s dropout + activation."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if isinstance(act, nn.Module) and type(bn).__name__ == "BatchNormAct2d":
        return nn.Sequential(drop if isinstance(drop, nn.Module) else nn.Identity(), act)
    raise TypeError(f"do not know what {type(bn).__name__} does besides normalising; not folded")


def _set_submodule(model: nn.Module, name: str, value: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, value)


@torch.no_grad()
def fuse_conv_bn(model: nn.Module, run=None) -> int:
    """Fold batch norms into the preceding convolutions of ``model`` (in eval mode), in place; returns the number
    folded. ``run``: optional zero-argument forward pass used to confirm each pair by data flow (recommended for
    models not known to follow the conv → BN pattern). Batch norms of unknown subclasses are left alone."""
    if model.training:
        raise ValueError("fuse_conv_bn needs a model in eval mode (model.eval()): folding uses the running statistics")
    folded = 0
    for conv_name, bn_name in find_conv_bn_pairs(model, run):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        try:
            replacement = _replacement_for(bn)
        except TypeError:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        fused.requires_grad_(False)
        _set_submodule(model, conv_name, fused)
        _set_submodule(model, bn_name, replacement)
        folded += 1
    return folded


# ------------------------------------------------------------------------------------------------ channels_last


def _to_channels_last_hook(_module, args, kwargs):
    if args and torch.is_tensor(args[0]) and args[0].dim() == 4:
        args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return args, kwargs


def to_channels_last(tee: nn.Module) -> nn.Module:
    """Convolution weights in ``channels_last`` and a pre-hook that converts the backbone's input (after the
    TEE pads it). In place; returns ``tee``."""
    tee.to(memory_format=torch.channels_last)
    if not getattr(tee.backbone, "_minivlm_channels_last", False):
        tee.backbone.register_forward_pre_hook(_to_channels_last_hook, with_kwargs=True)
        tee.backbone._minivlm_channels_last = True
    return tee


# ------------------------------------------------------------------------------------------------ bf16 / compile


def _cast_input_hook(dtype):
    def hook(_module, args, kwargs):
        if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
            args = (args[0].to(dtype), *args[1:])
        return args, kwargs

    return hook


def _float_outputs_hook(_module, _args, output):
    if isinstance(output, (list, tuple)):
        return type(output)(o.float() if torch.is_tensor(o) and o.is_floating_point() else o for o in output)
    return output


def bf16_dense_part(tee: nn.Module) -> nn.Module:
    """EfficientNet + BiFPN weights in bfloat16; the backbone casts its input to bf16 and the BiFPN returns
    float32 maps, so everything after (proposals, RoIAlign, box head, NMS) is unchanged float32. In place."""
    if getattr(tee, "_minivlm_bf16_dense", False):
        return tee
    tee.backbone.to(torch.bfloat16)
    tee.bifpn.to(torch.bfloat16)
    tee.backbone.register_forward_pre_hook(_cast_input_hook(torch.bfloat16), with_kwargs=True)
    tee.bifpn.register_forward_hook(_float_outputs_hook)
    tee._minivlm_bf16_dense = True
    return tee


def compile_dense_part(tee: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` (``nn.Module.compile``, names unchanged) of the backbone and the BiFPN. Compilation
    happens on the first call of each input shape; time it separately. In place; returns ``tee``."""
    compile_kwargs.setdefault("dynamic", False)
    for part in (tee.backbone, tee.bifpn):
        part.compile(**compile_kwargs)
    return tee
