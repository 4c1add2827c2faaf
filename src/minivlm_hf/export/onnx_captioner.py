"""Greedy captioning with ONNX Runtime: the exported TEE, decoder and cached-step graphs driven from Python.

``OnnxCaptioner.from_pretrained(folder)`` reads a folder written by ``minivlm-hf export onnx`` from a captioning
model (``decoder_model.onnx``, ``decoder_with_past_model.onnx``, ``config.json``, ``generation_config.json`` and,
when the model has a TEE, ``tee_dense.onnx`` + ``tee_box_head.onnx``); ``generate`` takes what
``MiniVLMForImageCaptioning.generate`` takes (the processor's ``pixel_values`` / ``pixel_mask`` and prompts, or
precomputed regions and tags) and returns the same token ids as its greedy decoding
(``do_sample=False, num_beams=1``): prompts are re-padded on the left, a closing [SEP] dropped, the caption length is
bounded by ``config.max_text_length``, finished rows are padded with ``pad_token_id``. Only PyTorch's Python-side
helpers (prompt re-padding, tags from detections) run here, on the saved config; no PyTorch weights are loaded.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .onnx_captioning import PREFILL, PREFILL_INPUTS, STEP, STEP_INPUTS, past_names

__all__ = ["OnnxCaptioner"]

# generation_config settings that change greedy tokens and that this loop does not apply
_UNSUPPORTED = (
    "min_length", "min_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
    "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "sequence_bias",
    "encoder_repetition_penalty", "exponential_decay_length_penalty", "stop_strings", "max_time",
)
_NEUTRAL = {"min_length": 0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def _np(t) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy() if torch.is_tensor(t) else np.ascontiguousarray(t)


class OnnxCaptioner:
    """Greedy image captioning over the exported graphs (see the module docstring).

    ``config`` (a ``MiniVLMConfig``) and ``generation_config`` supply the token ids and length limits; ``tee`` (an
    :class:`~.onnx.OnnxTEE`, optional) turns ``pixel_values`` into regions and tags."""

    def __init__(self, config, generation_config, prefill_path, step_path, tee=None, threads: int | None = None):
        from .onnx import _session

        self.config = config
        self.generation_config = generation_config
        self.tee = tee
        self.prefill_session = _session(prefill_path, threads)
        self.step_session = _session(step_path, threads)
        self.num_layers = config.num_hidden_layers
        self._step_inputs = [*STEP_INPUTS, *past_names(self.num_layers)]
        # The PyTorch model's own Python helpers, run on the config alone.
        self._shim = SimpleNamespace(config=config, generation_config=generation_config)

    @classmethod
    def from_pretrained(cls, folder, threads: int | None = None) -> "OnnxCaptioner":
        """Load an export folder (see the module docstring); the TEE graphs are used when present."""
        from ..modeling.configuration_minivlm import MiniVLMConfig

        folder = Path(folder)
        missing = [name for name in ("config.json", PREFILL, STEP) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not an ONNX captioner export (missing {', '.join(missing)}): export a captioning model "
                "with `minivlm-hf export onnx --model DIR --output OUT`"
            )
        config = MiniVLMConfig.from_pretrained(folder)
        return cls.from_export(config, None, folder, threads=threads)

    @classmethod
    def from_export(cls, config, generation_config, folder, threads: int | None = None) -> "OnnxCaptioner":
        from transformers import GenerationConfig

        from .onnx import TEE_BOX_HEAD, TEE_DENSE, OnnxTEE

        folder = Path(folder)
        if generation_config is None:
            generation_config = (GenerationConfig.from_pretrained(folder)
                                 if (folder / "generation_config.json").is_file()
                                 else GenerationConfig.from_model_config(config))
        tee = None
        if (folder / TEE_DENSE).is_file() and (folder / TEE_BOX_HEAD).is_file() and (folder / "tee_config").is_dir():
            tee = OnnxTEE.from_dir(folder, threads)
        return cls(config, generation_config, folder / PREFILL, folder / STEP, tee=tee, threads=threads)

    # -------------------------------------------------------------------------------------------------- the graphs

    def prefill(self, **inputs) -> list[np.ndarray]:
        """``decoder_model.onnx``: ``[logits, prefix_attention_mask, present.0.key, present.0.value, ...]``."""
        feed = {}
        for name in PREFILL_INPUTS:
            value = _np(inputs[name])
            if name == "region_mask":
                value = value.astype(bool)
            elif name in ("region_features", "region_boxes"):
                value = value.astype(np.float32)
            else:
                value = value.astype(np.int64)
            feed[name] = value
        return self.prefill_session.run(None, feed)

    def step(self, input_ids, attention_mask, position_ids, prefix_attention_mask, past) -> list[np.ndarray]:
        """``decoder_with_past_model.onnx``: ``[logits, present.0.key, present.0.value, ...]``."""
        values = [input_ids, attention_mask, position_ids, prefix_attention_mask]
        feed = {name: _np(v).astype(np.int64) for name, v in zip(STEP_INPUTS, values)}
        feed.update({name: _np(v) for name, v in zip(self._step_inputs[len(STEP_INPUTS):], past)})
        return self.step_session.run(None, feed)

    # ------------------------------------------------------------------------------------------------- generation

    def image_inputs(self, pixel_values, pixel_mask=None) -> dict[str, torch.Tensor]:
        """Pixels → the TEE's regions (at most ``config.max_regions``) and their tag tokens, as
        ``MiniVLMModel.get_image_features`` gives them."""
        from ..modeling.modeling_minivlm import MiniVLMModel

        if self.tee is None:
            raise ValueError(
                "pixel_values were given but this export has no TEE graphs (the model has no vision_config): pass "
                "region_features, region_boxes and tag_ids instead"
            )
        out = self.tee(pixel_values, pixel_mask)
        limit = self.config.max_regions
        regions = {
            "region_features": out["region_features"][:, :limit], "region_boxes": out["region_boxes"][:, :limit],
            "region_mask": out["region_mask"][:, :limit].bool(),
        }
        tag_ids, tag_mask = MiniVLMModel.tags_from_regions(
            self._shim, out["region_labels"][:, :limit], out["region_scores"][:, :limit], regions["region_mask"],
            out["attribute_logits"][:, :limit].float().sigmoid(), region_boxes=regions["region_boxes"],
        )
        return {**regions, "tag_ids": tag_ids, "tag_attention_mask": tag_mask}

    def _check_greedy(self, generation_config) -> None:
        used = [name for name in _UNSUPPORTED
                if getattr(generation_config, name, None) not in (None, _NEUTRAL.get(name), [], {})]
        if used:
            raise ValueError(
                f"the ONNX captioner decodes greedily without logits processors; generation_config sets "
                f"{', '.join(f'{n}={getattr(generation_config, n)!r}' for n in used)}: pass a generation_config "
                "without them"
            )

    def _max_length(self, prompt_length: int, max_new_tokens, max_length, generation_config) -> int:
        """Total length (prompt included) as ``generate`` resolves it, clamped to ``config.max_text_length``."""
        from ..modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning

        kwargs = {"generation_config": generation_config}
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        if max_length is not None:
            kwargs["max_length"] = max_length
        MiniVLMForImageCaptioning._clamp_caption_length(self._shim, prompt_length, kwargs)
        new = kwargs.get("max_new_tokens", generation_config.max_new_tokens)
        if new is not None:
            return prompt_length + new
        total = kwargs.get("max_length", max_length)
        return total if total is not None else prompt_length + 20  # generate's default: 20 new tokens

    @torch.no_grad()
    def generate(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        pixel_mask=None,
        region_features=None,
        region_boxes=None,
        region_mask=None,
        tag_ids=None,
        tag_attention_mask=None,
        token_type_ids=None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        generation_config=None,
    ) -> torch.LongTensor:
        """Greedy caption token ids ``(batch, prompt + new)``, the left-padded prompt first, as
        ``MiniVLMForImageCaptioning.generate(..., do_sample=False, num_beams=1)`` returns them. ``token_type_ids``
        (from the tokenizer) are ignored; ``generation_config`` defaults to the exported one."""
        from ..modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning

        generation_config = copy.deepcopy(generation_config or self.generation_config)
        self._check_greedy(generation_config)
        if pixel_values is not None:
            if region_features is not None:
                raise ValueError("pass either pixel_values or region_features, not both")
            image = self.image_inputs(pixel_values, pixel_mask)
            if tag_ids is not None:
                image["tag_ids"], image["tag_attention_mask"] = tag_ids, tag_attention_mask
        elif region_features is not None:
            if region_boxes is None:
                raise ValueError("region_features were given without region_boxes (normalised xyxy)")
            if tag_ids is None:
                raise ValueError("the ONNX decoder needs tag_ids with precomputed regions (a row may be just [SEP])")
            image = {"region_features": region_features, "region_boxes": region_boxes, "region_mask": region_mask,
                     "tag_ids": tag_ids, "tag_attention_mask": tag_attention_mask}
        else:
            raise ValueError("a captioning model needs an image: pass pixel_values, or region_features + "
                             "region_boxes + tag_ids")
        batch, regions = image["region_features"].shape[:2]
        if image["region_mask"] is None:
            image["region_mask"] = torch.ones(batch, regions, dtype=torch.bool)
        if image["tag_attention_mask"] is None:
            image["tag_attention_mask"] = torch.ones_like(torch.as_tensor(image["tag_ids"]))

        if input_ids is not None:
            if len(input_ids) != batch:
                raise ValueError(f"batch size mismatch: {len(input_ids)} prompts for {batch} images")
            input_ids, attention_mask = MiniVLMForImageCaptioning._left_padded_prompts(
                self._shim, torch.as_tensor(input_ids), None if attention_mask is None else torch.as_tensor(
                    attention_mask))
        else:
            bos = generation_config.bos_token_id
            bos = self.config.cls_token_id if bos is None else bos
            input_ids = torch.full((batch, 1), bos, dtype=torch.long)
            attention_mask = torch.ones_like(input_ids)
        limit = self._max_length(input_ids.shape[1], max_new_tokens, max_length, generation_config)
        eos = generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = generation_config.pad_token_id
        pad = (eos[0] if eos else 0) if pad is None else pad

        tokens, mask = _np(input_ids).astype(np.int64), _np(attention_mask).astype(np.int64)
        position_ids = np.clip(mask.cumsum(-1) - 1, 0, None)
        logits, prefix_mask, *past = self.prefill(
            input_ids=tokens, attention_mask=mask, position_ids=position_ids, **image)
        unfinished = np.ones(batch, dtype=bool)
        while True:
            next_tokens = logits[:, -1].astype(np.float32).argmax(-1)
            if eos:
                next_tokens = np.where(unfinished, next_tokens, pad)
                unfinished &= ~np.isin(next_tokens, eos)
            tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            if tokens.shape[1] >= limit or not unfinished.any():
                break
            logits, *past = self.step(next_tokens[:, None], mask, mask.cumsum(-1)[:, -1:] - 1, prefix_mask, past)
        return torch.from_numpy(tokens)
