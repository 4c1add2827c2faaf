"""Saveable int8 MiniVLM fusion models through transformers' ``TorchAoConfig`` (``torchao``).

Unlike :func:`.int8.quantize_fusion_int8` (``torch.ao`` dynamic quantisation, an inference-only copy), the model
loaded here is an ordinary quantised transformers model: ``save_pretrained`` writes safetensors (torchao's tensor
subclasses flattened, with the metadata that rebuilds them), ``from_pretrained`` reloads it without a
``quantization_config`` and ``push_to_hub`` publishes it::

    from minivlm_hf import MiniVLMForQuestionAnswering
    from minivlm_hf.fast import int8_quantization_config

    model = MiniVLMForQuestionAnswering.from_pretrained("vqa-model", quantization_config=int8_quantization_config())
    model.save_pretrained("vqa-model-int8")   # or model.push_to_hub("user/vqa-model-int8")
    MiniVLMForQuestionAnswering.from_pretrained("vqa-model-int8")   # int8 again, on any CPU with torchao

Quantised: every ``nn.Linear`` of the fusion transformer and the task heads, int8 weights with one scale per output
channel and int8 activations with one scale per token, computed at each call (torchao's
``Int8DynamicActivationInt8WeightConfig``). Kept in float (``modules_to_not_convert``): the TEE inside the model,
the region embedding (its weight mixes feature and geometry columns of different scales, as
:func:`.fusion.fusion_linear_names` explains) and the captioning head's vocabulary projection, whose weight is
tied to the word embeddings (transformers' own default skips output embeddings for the same reason).
"""

from __future__ import annotations

import tempfile

from torch import nn

__all__ = ["INT8_MODULES_TO_NOT_CONVERT", "MIN_TORCHAO", "int8_quantization_config", "quantize_int8",
           "require_torchao"]

#: The lowest torchao release whose int8 tensors save to safetensors with transformers 5 (``Int8Tensor``, v2 configs).
MIN_TORCHAO = "0.18"

#: Prefixes (transformers' ``should_convert_module`` matches them from the start of a parameter name, on a module
#: boundary) of the modules that stay float: in a task head (``minivlm.`` prefix) and in a bare ``MiniVLMModel``.
INT8_MODULES_TO_NOT_CONVERT = [
    "minivlm.vision_model", "vision_model",
    "minivlm.region_embeddings", "region_embeddings",
    "cls.predictions.decoder",
]


def require_torchao() -> None:
    """Raise one clear ``ImportError`` when torchao is not installed."""
    try:
        import torchao  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"saveable int8 needs torchao>={MIN_TORCHAO} (transformers' TorchAoConfig): pip install "
            f"'minivlm-hf[int8]'; without it, minivlm_hf.fast.optimize_for_inference(model, int8=True) gives an "
            f"inference-only int8 copy ({err})"
        ) from None


def int8_quantization_config(weight_only: bool = False):
    """A ``transformers.TorchAoConfig`` for MiniVLM fusion models (see the module docstring): dynamic int8
    activations and int8 weights, or with ``weight_only`` int8 weights only (activations stay float; the weights
    are converted back to float at every call, so it saves memory, not time). Pass it to ``from_pretrained``."""
    require_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    quant_type = Int8WeightOnlyConfig() if weight_only else Int8DynamicActivationInt8WeightConfig()
    return TorchAoConfig(quant_type, modules_to_not_convert=list(INT8_MODULES_TO_NOT_CONVERT))


def quantize_int8(model: nn.Module, weight_only: bool = False) -> nn.Module:
    """An int8 copy of an in-memory MiniVLM model, as ``from_pretrained(..., quantization_config=
    int8_quantization_config())`` gives it: the model is saved to a temporary folder and reloaded quantised (the
    input model is not modified). The copy saves, reloads and pushes like any quantised transformers model."""
    require_torchao()
    if getattr(model, "minivlm_optimizations", None) is not None:
        raise ValueError("quantize_int8 needs the model itself, not an optimize_for_inference copy")
    if getattr(model.config, "quantization_config", None) is not None:
        method = getattr(model.config.quantization_config, "quant_method", model.config.quantization_config)
        method = getattr(method, "value", method)  # transformers' QuantizationMethod enum: "torchao", "bitsandbytes"
        raise ValueError(f"this {type(model).__name__} is already quantised ({method})")
    config = int8_quantization_config(weight_only)
    with tempfile.TemporaryDirectory(prefix="minivlm-int8-") as tmp:
        model.save_pretrained(tmp)
        quantized = type(model).from_pretrained(tmp, quantization_config=config, dtype=model.dtype)
    quantized.config._name_or_path = model.config._name_or_path  # not the deleted temporary folder
    return quantized
