"""Testers for the contract suite (tests/test_contract_*.py), in the style of transformers' per-model `ModelTester`
classes: each builds a tiny config and the inputs (with or without labels) that every model class it covers takes.

The invariants themselves are those of transformers' model / config / image-processor / processor / generation
common tests, ported (not copied) to these classes. An invariant that does not hold yet is marked
`xfail(strict=True)` with the defect in one line, so that the test turns red (XPASS) once the defect is fixed.
"""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

import minivlm_hf  # noqa: F401  (registers the Auto classes)
from fusion_utils import region_inputs, tag_inputs, text_inputs, tiny_fusion_config
from minivlm_hf.modeling.modeling_minivlm import MiniVLMModel
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import (
    MiniVLMForImageTextRetrieval,
    MiniVLMForPreTraining,
    MiniVLMForQuestionAnswering,
    MiniVLMForVisualReasoning,
)
from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection, TEEModel
from tee_utils import model_labels, synthetic_scene, tiny_image_processor, tiny_tee_config

FUSION_CLASSES = (
    MiniVLMModel,
    MiniVLMForPreTraining,
    MiniVLMForImageCaptioning,
    MiniVLMForQuestionAnswering,
    MiniVLMForImageTextRetrieval,
    MiniVLMForVisualReasoning,
)
LM_HEAD_CLASSES = (MiniVLMForPreTraining, MiniVLMForImageCaptioning)
TEE_CLASSES = (TEEModel, TEEForObjectDetection)



def xfail_if(request, condition, reason):
    """Mark the running test `xfail(strict=True)` when `condition` holds (per-parameter expected failures)."""
    if condition:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def assert_outputs_close(a, b, atol=1e-5, rtol=1e-5, path="output"):
    """Recursively compare two model outputs (ModelOutput / tuple / tensor / None)."""
    if hasattr(a, "to_tuple") and not torch.is_tensor(a):
        a = a.to_tuple()
    if hasattr(b, "to_tuple") and not torch.is_tensor(b):
        b = b.to_tuple()
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), f"{path}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_outputs_close(x, y, atol, rtol, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_outputs_close(a[key], b[key], atol, rtol, f"{path}.{key}")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b), path
        if a.is_floating_point():
            torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=path)
        else:
            assert torch.equal(a, b), path
    elif hasattr(a, "get_seq_length"):  # caches: compared through the logits they produced
        pass
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def load_twice_from_one_tensor_checkpoint(model, model_class, folder):
    """Save `model`'s config and only its first tensor, then load that folder twice with one seed: every other weight
    comes from `_init_weights`, so the two loads must agree."""
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    first = next(iter(model.state_dict()))
    save_file({first: model.state_dict()[first].contiguous()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    loaded = []
    for _ in range(2):
        torch.manual_seed(123)
        loaded.append(model_class.from_pretrained(folder))
    assert_state_dicts_equal(*loaded)
    return loaded


def assert_state_dicts_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], atol=0, rtol=0, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Fusion models
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class FusionModelTester:
    """Tiny fusion models (2 layers, hidden 32, 4 heads, vocabulary 120), fed precomputed regions (`vision=False`)
    or 64 px images through a tiny TEE inside (`vision=True`)."""

    batch_size: int = 2
    text_length: int = 7
    num_regions: int = 5
    tag_length: int = 3
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    hidden_size: int = 32
    vocab_size: int = 120
    image_size: int = 64

    def get_config(self, vision: bool = False, **overrides):
        if not vision:
            return tiny_fusion_config(**overrides)
        settings = dict(
            max_regions=self.num_regions,
            tag_score_threshold=0.0,  # a random TEE scores low: every region becomes a tag
            tag_token_ids={0: [5], 1: [6, 7], 2: [8], 3: [9]},
        )
        settings.update(overrides)
        return tiny_fusion_config(vision_config=tiny_tee_config(), **settings)

    def pixel_values(self, batch: int, seed: int = 3):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, self.image_size, self.image_size, generator=g)

    def prepare_inputs(self, model_class, vision: bool = False, labels: bool = False, batch: int | None = None):
        batch = batch or self.batch_size
        text = text_inputs(batch=batch, length=self.text_length, vocab=self.vocab_size)
        if vision:
            image = {"pixel_values": self.pixel_values(batch)}
        else:
            image = region_inputs(batch=batch, regions=self.num_regions)
        inputs = {**text}
        if model_class is MiniVLMForVisualReasoning:
            pair_image = (
                {"pixel_values": torch.stack([image["pixel_values"], image["pixel_values"].flip(-1)], dim=1)}
                if vision else {k: torch.stack([v, v.flip(0)], dim=1) for k, v in image.items()}
            )
            inputs.update(pair_image)
        else:
            inputs.update(image)
            if model_class in (MiniVLMModel, MiniVLMForPreTraining, MiniVLMForImageCaptioning) and not vision:
                inputs.update(tag_inputs(batch=batch))
        if labels:
            inputs.update(self.labels(model_class, inputs))
        return inputs

    def labels(self, model_class, inputs):
        batch = inputs["input_ids"].shape[0]
        if model_class in LM_HEAD_CLASSES:
            ids = inputs["input_ids"]
            target = torch.full_like(ids, -100)
            target[:, 2] = ids[:, 2]
            out = {"labels": target}
            if model_class is MiniVLMForPreTraining:
                out["contrastive_labels"] = torch.arange(batch) % 3
            return out
        if model_class is MiniVLMForQuestionAnswering:
            scores = torch.zeros(batch, 3)
            scores[:, 0] = 1.0
            scores[-1, 2] = 0.3
            return {"labels": scores}
        if model_class in (MiniVLMForImageTextRetrieval, MiniVLMForVisualReasoning):
            return {"labels": torch.arange(batch) % 2}
        return {}

    @staticmethod
    def slice_inputs(inputs, rows):
        return {k: v[rows] for k, v in inputs.items()}

    @staticmethod
    def main_output(model_class, output, inputs):
        """`(per_row, batched)`: the outputs each row must reproduce alone. `per_row` lists one tensor per row,
        restricted to real (non-padding) positions; `batched` lists tensors whose first dimension is the batch."""
        if model_class is MiniVLMModel:
            keep = output.attention_mask.bool()
            return [output.last_hidden_state[b][keep[b]] for b in range(keep.shape[0])], [output.pooler_output]
        if model_class in LM_HEAD_CLASSES:
            text = inputs["attention_mask"].bool()
            logits = output.prediction_logits if model_class is MiniVLMForPreTraining else output.logits
            if model_class is MiniVLMForPreTraining:  # [text, tags, regions]
                logits = logits[:, : text.shape[1]]
            else:  # caption mode: [tags, regions, caption]
                logits = logits[:, -text.shape[1]:]
            batched = [output.contrastive_logits] if model_class is MiniVLMForPreTraining else []
            return [logits[b][text[b]] for b in range(text.shape[0])], batched
        return [], [output.logits]

    def expected_sequence_length(self, model_class):
        """Text + tags + regions, for the region inputs of `prepare_inputs` (vision=False)."""
        tags = self.tag_length if model_class in (MiniVLMModel, MiniVLMForPreTraining, MiniVLMForImageCaptioning) else 0
        return self.text_length + tags + self.num_regions


# ----------------------------------------------------------------------------------------------------------------
# TEE
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TEEModelTester:
    """Tiny TEE (timm `test_efficientnet`, one 16-channel BiFPN cell) on 64 px synthetic scenes."""

    batch_size: int = 2
    image_size: int = 64

    def get_config(self, **overrides):
        return tiny_tee_config(**overrides)

    def scenes(self):
        return [
            synthetic_scene([(4, 4, 30, 24, 0), (36, 30, 60, 60, 2)], image_id=0),
            synthetic_scene([(10, 8, 50, 40, 1)], image_id=1),
        ]

    def prepare_inputs(self, model_class, labels: bool = False, batch: int | None = None):
        batch = batch or self.batch_size
        processor = tiny_image_processor()
        scenes = self.scenes()[:batch]
        encoded = processor([image for image, _ in scenes], return_tensors="pt")
        inputs = {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"]}
        if labels and model_class is TEEForObjectDetection:
            inputs["labels"] = [model_labels(ann, self.image_size, self.image_size) for _, ann in scenes]
        return inputs


# ----------------------------------------------------------------------------------------------------------------
# Processors
# ----------------------------------------------------------------------------------------------------------------
class ProcessorTester:
    """Images of two sizes (non-square, so resizing and padding both matter) and the offline BERT tokenizer."""

    @staticmethod
    def images():
        rng = np.random.default_rng(0)
        return [
            Image.fromarray(rng.integers(0, 255, (48, 60, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (64, 40, 3), dtype=np.uint8)),
        ]

    @staticmethod
    def image_processor(backend="torchvision", **overrides):
        from minivlm_hf.modeling.image_processing_pil_minivlm import MiniVLMImageProcessorPil

        if backend == "pil":
            kwargs = {"size": {"longest_edge": 64}}
            kwargs.update(overrides)
            return MiniVLMImageProcessorPil(**kwargs)
        return tiny_image_processor(**overrides)

    @staticmethod
    def tokenizer():
        from minivlm_hf.convert import load_offline_tokenizer

        return load_offline_tokenizer()

    def processor(self, **kwargs):
        from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor

        return MiniVLMProcessor(self.image_processor(), self.tokenizer(), max_text_length=16, max_tag_length=10, **kwargs)
