"""ONNX export of the captioning decoder of a ``MiniVLMForImageCaptioning``: a prefill graph and a cached step graph.

Exporter: the dynamo-based ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript) for both graphs.
The wrappers below take and return plain tensors (the ``DynamicCache`` is built inside from the ``past_key_values.*``
inputs and read back as ``present.*``), so no Cache pytree registration is needed; every axis is dynamic and the
data-dependent checks of the model are skipped under tracing. The dynamo exporter writes opset 18 at least, whatever
``--opset`` asks for the TEE / VQA graphs (see :mod:`.onnx` for why those stay on the TorchScript exporter).
``transformers.exporters.OnnxExporter`` exports one ``forward`` call with input / output names taken from its
arguments and a ``model.onnx`` + ``.onnx.data`` layout; the captioner's two graphs need a fixed call (``cache``,
``prefix_attention_mask``, ``predict_next``) and optimum's names, so the wrappers here are exported directly (they
need none of that exporter's patches).

Files (the names of optimum's decoder exports)
----------------------------------------------
``decoder_model.onnx``             the first call of ``generate``: the image prefix (tags + regions) and the prompt,
                                   plus the transient [MASK] query.
    inputs   ``input_ids``, ``attention_mask``, ``position_ids`` ``(B, P)``: the prompt re-padded on the left
             (``position_ids = max(cumsum(attention_mask) - 1, 0)``); ``tag_ids``, ``tag_attention_mask`` ``(B, G)``;
             ``region_features (B, K, F)``, ``region_boxes (B, K, 4)`` (normalised xyxy), ``region_mask (B, K)``
             (bool).
    outputs  ``logits (B, 1, V)`` (the [MASK] query: the next token), ``prefix_attention_mask (B, G + K)`` (int64),
             ``present.{i}.key`` / ``present.{i}.value`` ``(B, heads, G + K + P, head_dim)`` per layer.
``decoder_with_past_model.onnx``   one decoding step: the newest token and the [MASK] query over the cache.
    inputs   ``input_ids``, ``position_ids`` ``(B, 1)``; ``attention_mask (B, caption length so far)`` (the prompt's
             padding included, the prefix not); ``prefix_attention_mask (B, G + K)``;
             ``past_key_values.{i}.key`` / ``.value`` ``(B, heads, past, head_dim)``.
    outputs  ``logits (B, 1, V)``, ``present.{i}.key`` / ``.value`` ``(B, heads, past + 1, head_dim)``.

Tags and regions never attend to caption tokens, so their keys / values are fixed once computed; the [MASK] query is
never cached. :class:`~.onnx_captioner.OnnxCaptioner` runs the loop.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

PREFILL = "decoder_model.onnx"
STEP = "decoder_with_past_model.onnx"
PREFILL_INPUTS = (
    "input_ids", "attention_mask", "position_ids", "tag_ids", "tag_attention_mask", "region_features",
    "region_boxes", "region_mask",
)
STEP_INPUTS = ("input_ids", "attention_mask", "position_ids", "prefix_attention_mask")


def past_names(num_layers: int, prefix: str = "past_key_values") -> list[str]:
    """``{prefix}.{i}.key``, ``{prefix}.{i}.value`` for every layer, in that order."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def _present(cache) -> tuple[torch.Tensor, ...]:
    return tuple(t for layer in cache.layers for t in (layer.keys, layer.values))


class CaptionPrefillGraph(nn.Module):
    """Image prefix + prompt + [MASK] query → next-token logits, prefix mask and the per-layer keys / values."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, tag_ids, tag_attention_mask, region_features,
                region_boxes, region_mask):
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, tag_ids=tag_ids,
            tag_attention_mask=tag_attention_mask, region_features=region_features, region_boxes=region_boxes,
            region_mask=region_mask, use_cache=True, predict_next=True, return_dict=True,
        )
        return (out.logits, out.prefix_attention_mask.long(), *_present(out.cache))


class CaptionStepGraph(nn.Module):
    """One cached step: newest token + [MASK] query over ``past`` → logits and the keys / values with the token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, prefix_attention_mask, past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            prefix_attention_mask=prefix_attention_mask, use_cache=True, predict_next=True, return_dict=True,
        )
        return (out.logits, *_present(out.cache))


def is_captioner(model: nn.Module) -> bool:
    return hasattr(model, "minivlm") and type(model).__name__.endswith("ForImageCaptioning")


def caption_example_inputs(model: nn.Module, batch: int = 2, prompt: int = 3, tags: int = 4, regions: int = 5,
                           seed: int = 0) -> dict[str, torch.Tensor]:
    """Random prefill inputs: left-padded prompts starting with [CLS], tags ending with [SEP], some padding."""
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    low = min(1000, c.vocab_size // 2)
    input_ids = torch.randint(low, c.vocab_size, (batch, prompt), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    input_ids[:, 0] = c.cls_token_id
    if batch > 1 and prompt > 1:  # the last row: a shorter prompt, left-padded
        input_ids[-1, :-1], input_ids[-1, -1] = c.pad_token_id or 0, c.cls_token_id
        attention_mask[-1, :-1] = 0
    tag_ids = torch.randint(low, c.vocab_size, (batch, tags), generator=gen)
    tag_ids[:, -1] = c.sep_token_id
    tag_mask = torch.ones_like(tag_ids)
    xy = torch.rand(batch, regions, 2, generator=gen) * 0.5
    wh = torch.rand(batch, regions, 2, generator=gen) * 0.4 + 0.05
    region_mask = torch.ones(batch, regions, dtype=torch.bool)
    if batch > 1:
        tag_mask[-1, :1], tag_ids[-1, 0] = 0, c.pad_token_id or 0
        region_mask[-1, -2:] = False
    return {
        "input_ids": input_ids, "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0), "tag_ids": tag_ids,
        "tag_attention_mask": tag_mask, "region_features": torch.rand(batch, regions, c.region_feature_size,
                                                                      generator=gen),
        "region_boxes": torch.cat([xy, xy + wh], dim=-1), "region_mask": region_mask,
    }


def step_example_inputs(prefill_inputs: dict[str, torch.Tensor], prefill_outputs, token: int = 5
                        ) -> dict[str, torch.Tensor]:
    """Step inputs following a prefill: one new token per row, the caption mask grown by one."""
    mask = prefill_inputs["attention_mask"]
    batch = mask.shape[0]
    mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], dim=1)
    return {
        "input_ids": torch.full((batch, 1), token, dtype=torch.long), "attention_mask": mask,
        "position_ids": mask.cumsum(-1)[:, -1:] - 1, "prefix_attention_mask": prefill_outputs[1],
        "past": tuple(prefill_outputs[2:]),
    }


def _dynamo_export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes,
                   opset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on dynamic-shape renaming, onnxscript's version notes
        torch.onnx.export(
            module, args, str(path), dynamo=True, opset_version=max(opset, 18), input_names=list(input_names),
            output_names=list(output_names), dynamic_shapes=dynamic_shapes, verbose=False,
            external_data=False,  # one self-contained file per graph (MiniVLM is far below ONNX's 2 GB limit)
        )


def export_captioner(model: nn.Module, output_dir: str | Path, opset: int = 18) -> dict[str, str]:
    """Export ``decoder_model.onnx`` and ``decoder_with_past_model.onnx`` of a ``MiniVLMForImageCaptioning``.

    Exports a copy with eager attention and without the TEE (exported separately). The dynamo exporter emits
    opset 18 or later (its own minimum): a lower ``opset`` gives 18."""
    output_dir = Path(output_dir)
    model = copy.deepcopy(model).eval()
    model.minivlm.vision_model = None
    model.config._attn_implementation = "eager"
    model.minivlm.config._attn_implementation = "eager"
    layers = model.config.num_hidden_layers
    dim = torch.export.Dim
    batch = dim("batch")
    prompt = dim("prompt_length", max=model.config.max_text_length - 1)
    tags, regions = dim("tag_length"), dim("num_regions")
    prefill = caption_example_inputs(model)
    prefill_shapes = {
        "input_ids": {0: batch, 1: prompt}, "attention_mask": {0: batch, 1: prompt},
        "position_ids": {0: batch, 1: prompt}, "tag_ids": {0: batch, 1: tags},
        "tag_attention_mask": {0: batch, 1: tags}, "region_features": {0: batch, 1: regions},
        "region_boxes": {0: batch, 1: regions}, "region_mask": {0: batch, 1: regions},
    }
    graph = CaptionPrefillGraph(model)
    with torch.no_grad():
        args = tuple(prefill[name] for name in PREFILL_INPUTS)
        _dynamo_export(graph, args, output_dir / PREFILL, PREFILL_INPUTS,
                       ["logits", "prefix_attention_mask", *past_names(layers, "present")], prefill_shapes, opset)
        step = step_example_inputs(prefill, graph(*args))
    past = dim("past_length")
    step_shapes = {
        "input_ids": {0: batch},
        "attention_mask": {0: batch, 1: dim("caption_length", max=model.config.max_text_length)},
        "position_ids": {0: batch}, "prefix_attention_mask": {0: batch, 1: dim("prefix_length")},
        "past": tuple({0: batch, 2: past} for _ in range(2 * layers)),
    }
    with torch.no_grad():
        _dynamo_export(CaptionStepGraph(model), tuple(step[name] for name in (*STEP_INPUTS, "past")),
                       output_dir / STEP, [*STEP_INPUTS, *past_names(layers)],
                       ["logits", *past_names(layers, "present")], step_shapes, opset)
    return {"decoder_model": str(output_dir / PREFILL), "decoder_with_past_model": str(output_dir / STEP)}


def save_captioner_files(model: nn.Module, output_dir: str | Path, processor=None) -> None:
    """``config.json`` + ``generation_config.json`` (and the processor / tokenizer files) next to the graphs."""
    output_dir = Path(output_dir)
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)


def load_processor(model_dir, trust_remote_code: bool = False):
    """The processor saved with a model (``processor_config.json`` or tokenizer files), or None when it has none."""
    folder = Path(model_dir)
    if not any((folder / name).is_file() for name in ("processor_config.json", "tokenizer_config.json")):
        return None
    from transformers import AutoProcessor

    import minivlm_hf  # noqa: F401  (registers the Auto classes)

    return AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code)


@torch.no_grad()
def verify_captioner(model: nn.Module, output_dir, threads: int | None = None, steps: int = 3) -> dict[str, dict]:
    """ORT vs PyTorch: prefill logits / prefix mask / keys / values and ``steps`` cached steps, on shapes other than
    the export example's (batch 3 and 1), then greedy tokens from the same regions and tags."""
    from .onnx import _diff
    from .onnx_captioner import OnnxCaptioner

    runner = OnnxCaptioner.from_export(model.config, model.generation_config, output_dir, threads=threads)
    results: dict[str, dict] = {}
    prefill_graph, step_graph = CaptionPrefillGraph(model), CaptionStepGraph(model)
    for case, shape in enumerate([dict(batch=3, prompt=4, tags=3, regions=6), dict(batch=1, prompt=1, tags=5,
                                                                                    regions=2)]):
        inputs = caption_example_inputs(model, seed=20 + case, **shape)
        reference = prefill_graph(*(inputs[name] for name in PREFILL_INPUTS))
        outputs = runner.prefill(**inputs)
        names = ["logits", "prefix_attention_mask", *past_names(model.config.num_hidden_layers, "present")]
        for name, ref, out in zip(names, reference, outputs):
            results[f"decoder_model.{name}[{case}]"] = _diff(out, ref)
        prefix_mask, ref_past, out_past = reference[1], reference[2:], outputs[2:]
        mask = inputs["attention_mask"]
        for step in range(steps):
            mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
            ids = torch.full((mask.shape[0], 1), 7 + step, dtype=torch.long)
            position = mask.cumsum(-1)[:, -1:] - 1
            reference = step_graph(ids, mask, position, prefix_mask, tuple(ref_past))
            outputs = runner.step(ids, mask, position, prefix_mask, out_past)
            results[f"decoder_with_past_model.logits[{case}.{step}]"] = _diff(outputs[0], reference[0])
            results[f"decoder_with_past_model.present[{case}.{step}]"] = max(
                (_diff(o, r) for o, r in zip(outputs[1:], reference[1:])), key=lambda d: d["max_abs"])
            ref_past, out_past = reference[1:], outputs[1:]
    image = caption_example_inputs(model, batch=2, prompt=1, seed=30)
    region_inputs = {k: image[k] for k in ("tag_ids", "tag_attention_mask", "region_features", "region_boxes",
                                           "region_mask")}
    new = min(6, model.config.max_text_length - 1)
    expected = model.generate(**region_inputs, max_new_tokens=new, do_sample=False, num_beams=1)
    got = runner.generate(**region_inputs, max_new_tokens=new)
    results["generate.tokens"] = {
        "max_abs": float((got != expected).sum()) if got.shape == expected.shape else float("inf"), "max_rel": 0.0,
    }
    return results
