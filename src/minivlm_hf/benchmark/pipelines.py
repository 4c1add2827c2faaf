"""The two sides of the end-to-end benchmark, as zero-argument callables over fixed inputs.

MiniVLM side: ``hub_configs/minivlm-base`` (TEE-B0 at 512x512 + MiniLM-L12-H384 fusion), random weights, one
TEE shared by the VQA, captioning and retrieval heads (so every task sees the same regions).

Baseline side (OSCAR-B): :func:`~.baseline.build_baseline_extractor` (Faster R-CNN R101-FPN on a 600x1000 image,
50 regions x 2048) feeding BERT-base-shaped ``MiniVLMFor*`` heads (12 layers, hidden 768, 2048 + 6 region input).

Both sides run the same steps in the same code: regions → tags (``MiniVLMModel.tags_from_regions``, most confident
classes first, no repeats, ``max_tag_length`` tokens) → fusion with the same question / caption token lengths. With
random weights no detection is confident, so the tag threshold is set to 0 on both sides: every image then gets the
full ``max_tag_length`` tag tokens, as a trained detector's confident detections would give. Every pipeline is
image → result, the detector included; captioning runs the detector once and decodes from its regions (feeding
``pixel_values`` to ``generate(num_beams=5)`` would run the TEE on 5 expanded copies of the image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .baseline import BASELINE_IMAGE_SIZE, build_baseline_extractor, build_baseline_fusion_config

__all__ = [
    "Scale",
    "FULL",
    "TINY",
    "MiniVLMSide",
    "BaselineSide",
    "minivlm_config",
    "baseline_config",
    "text_batch",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark configuration (the real one or the tiny smoke-test one)."""

    tiny: bool
    image_size: int  # MiniVLM input (square)
    baseline_image: tuple[int, int]  # baseline input (height, width)
    question_tokens: int  # [CLS] question [SEP]
    caption_tokens: int  # new tokens generated
    num_beams: int
    num_captions: int  # retrieval candidates
    caption_text_tokens: int  # [CLS] caption [SEP] of a retrieval candidate
    num_answers: int  # VQA answer vocabulary
    batch_sizes: tuple[int, ...] = (1, 8, 32)


FULL = Scale(
    tiny=False, image_size=512, baseline_image=BASELINE_IMAGE_SIZE, question_tokens=16, caption_tokens=20,
    num_beams=5, num_captions=100, caption_text_tokens=16, num_answers=3129,
)
TINY = Scale(
    tiny=True, image_size=128, baseline_image=(128, 160), question_tokens=8, caption_tokens=4, num_beams=2,
    num_captions=6, caption_text_tokens=6, num_answers=7, batch_sizes=(1, 2),
)


# ---------------------------------------------------------------------------------------------------------- configs


def _tiny_tee_config():
    from ..modeling.configuration_minivlm_tee import TEEConfig

    return TEEConfig(
        backbone="test_efficientnet", bifpn_channels=16, bifpn_num_cells=1, box_head_dim=32,
        id2label={i: f"class {i}" for i in range(6)}, attribute_id2label={0: "small", 1: "large"},
        anchor_sizes=[16, 32, 64, 128, 256], pre_nms_top_k=50, post_nms_top_k=20, num_regions=10,
        roi_batch_size_per_image=16, image_size=128,
    )


def minivlm_config(scale: Scale = FULL):
    """``minivlm-base`` (or a tiny stand-in), answer vocabulary of ``scale.num_answers``, tag threshold 0."""
    from ..modeling.configuration_minivlm import MiniVLMConfig

    if scale.tiny:
        tee = _tiny_tee_config()
        config = MiniVLMConfig(
            vision_config=tee, vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, region_feature_size=tee.box_head_dim, max_regions=10, max_text_length=16,
            max_tag_length=8, tag_token_ids={i: [10 + i, 20 + i] for i in range(tee.num_labels)},
        )
    else:
        from ..hub.variants import variant_dir

        config = MiniVLMConfig.from_pretrained(variant_dir("minivlm-base"))
    config.tag_score_threshold = 0.0
    config.id2label = {i: f"answer_{i}" for i in range(scale.num_answers)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return config


def baseline_config(reference, scale: Scale = FULL, num_detector_classes: int | None = None):
    """BERT-base-shaped fusion config (tiny stand-in for tests) with ``reference``'s text / tag lengths, answer
    vocabulary and special tokens; detector class ``c`` maps to the word pieces of MiniVLM class ``c mod n``."""
    from ..modeling.configuration_minivlm import MiniVLMConfig

    kwargs = build_baseline_fusion_config()
    if scale.tiny:
        kwargs.update(vocab_size=reference.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, region_feature_size=64, max_position_embeddings=64)
    mapping = reference.tag_token_ids or {0: [reference.sep_token_id]}
    keys = sorted(mapping)
    num_classes = num_detector_classes or (11 if scale.tiny else 1601)
    kwargs.update(
        max_regions=reference.max_regions if scale.tiny else 50,
        max_text_length=reference.max_text_length,
        max_tag_length=reference.max_tag_length,
        tag_score_threshold=0.0,
        tag_token_ids={c: list(mapping[keys[c % len(keys)]]) for c in range(num_classes)},
        id2label=dict(reference.id2label),
        label2id=dict(reference.label2id),
    )
    for name in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
        kwargs[name] = getattr(reference, name)
    return MiniVLMConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------- inputs


def text_batch(num: int, length: int, vocab_size: int, cls_id: int, sep_id: int, seed: int = 0) -> dict[str, Tensor]:
    """``num`` random ``[CLS] … [SEP]`` sequences of ``length`` tokens (ids away from the special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    low = min(1000, vocab_size // 2)
    ids = torch.randint(low, vocab_size, (num, length), generator=gen)
    ids[:, 0] = cls_id
    ids[:, -1] = sep_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _normalised_pixels(batch: int, size: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.rand(batch, 3, size, size, generator=gen) - mean) / std


def _build(cls, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.eval()
    model.requires_grad_(False)
    from ..fast.cpu import enable_cpu_fast_paths

    enable_cpu_fast_paths(model)  # both sides get the same CPU kernel choices
    return model


# ---------------------------------------------------------------------------------------------------------- sides


@dataclass
class _Common:
    scale: Scale
    config: Any
    vqa: nn.Module
    captioner: nn.Module | None
    retriever: nn.Module | None
    question: dict[str, Tensor] = field(default_factory=dict)
    captions: dict[str, Tensor] = field(default_factory=dict)

    def _texts(self, seed: int) -> None:
        c = self.config
        self.question = text_batch(1, self.scale.question_tokens, c.vocab_size, c.cls_token_id, c.sep_token_id, seed)
        self.captions = text_batch(
            self.scale.num_captions, self.scale.caption_text_tokens, c.vocab_size, c.cls_token_id, c.sep_token_id,
            seed + 1,
        )

    def questions(self, batch: int) -> dict[str, Tensor]:
        return {k: v.expand(batch, -1) for k, v in self.question.items()}

    def caption_prompt(self, batch: int = 1) -> Tensor:
        return torch.full((batch, 1), self.config.cls_token_id, dtype=torch.long)

    def generate_kwargs(self, num_beams: int, use_cache: bool = True) -> dict[str, Any]:
        n = self.scale.caption_tokens
        return dict(max_new_tokens=n, min_new_tokens=n, num_beams=num_beams, do_sample=False, use_cache=use_cache)


class MiniVLMSide(_Common):
    """MiniVLM models (random weights) and the image → result callables."""

    label = "minivlm-base"

    def __init__(self, scale: Scale = FULL, seed: int = 0, tasks=("vqa", "caption", "retrieval")):
        from ..modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
        from ..modeling.modeling_minivlm_tasks import MiniVLMForImageTextRetrieval, MiniVLMForQuestionAnswering

        config = minivlm_config(scale)
        vqa = _build(MiniVLMForQuestionAnswering, config, seed)
        captioner = _build(MiniVLMForImageCaptioning, config, seed + 1) if "caption" in tasks else None
        retriever = _build(MiniVLMForImageTextRetrieval, config, seed + 2) if "retrieval" in tasks else None
        tee = vqa.minivlm.vision_model
        for model in (captioner, retriever):
            if model is not None:
                model.minivlm.vision_model = tee  # one TEE for every head
        super().__init__(scale=scale, config=config, vqa=vqa, captioner=captioner, retriever=retriever)
        self._texts(seed)
        self.pixel_values = _normalised_pixels(1, scale.image_size, seed)
        self.pixel_mask = torch.ones(1, scale.image_size, scale.image_size, dtype=torch.long)

    @property
    def tee(self) -> nn.Module:
        return self.vqa.minivlm.vision_model

    def images(self, batch: int) -> tuple[Tensor, Tensor]:
        return self.pixel_values.expand(batch, -1, -1, -1).contiguous(), self.pixel_mask.expand(batch, -1, -1)

    # regions ------------------------------------------------------------------------------------------------
    @staticmethod
    def regions(fusion_model: nn.Module, pixel_values: Tensor, pixel_mask: Tensor) -> dict[str, Tensor]:
        """TEE → region inputs + tags of ``fusion_model`` (a task head), as the fusion model would build them."""
        return fusion_model.minivlm.get_image_features(pixel_values, pixel_mask).region_inputs()

    # callables ----------------------------------------------------------------------------------------------
    def extraction(self, tee: nn.Module | None = None, batch: int = 1) -> Callable[[], Any]:
        tee = tee if tee is not None else self.tee
        pixel_values, pixel_mask = self.images(batch)
        return lambda: tee(pixel_values=pixel_values, pixel_mask=pixel_mask).region_features

    def vqa_call(self, model: nn.Module | None = None, batch: int = 1) -> Callable[[], Tensor]:
        model = model if model is not None else self.vqa
        pixel_values, pixel_mask = self.images(batch)
        question = self.questions(batch)
        return lambda: model(**question, pixel_values=pixel_values, pixel_mask=pixel_mask).logits

    def vqa_from_regions(self, regions: dict[str, Tensor], model: nn.Module | None = None) -> Callable[[], Tensor]:
        model = model if model is not None else self.vqa
        return lambda: model(**self.question, **regions).logits

    def caption_call(self, num_beams: int, model: nn.Module | None = None) -> Callable[[], Tensor]:
        model = model if model is not None else self.captioner
        kwargs = self.generate_kwargs(num_beams)

        def run():
            regions = self.regions(model, self.pixel_values, self.pixel_mask)
            return model.generate(input_ids=self.caption_prompt(), **regions, **kwargs)

        return run

    def caption_from_regions(self, regions: dict[str, Tensor], use_cache: bool, num_beams: int = 1,
                             model: nn.Module | None = None) -> Callable[[], Tensor]:
        model = model if model is not None else self.captioner
        kwargs = self.generate_kwargs(num_beams, use_cache=use_cache)
        return lambda: model.generate(input_ids=self.caption_prompt(), **regions, **kwargs)

    def retrieval_call(self, model: nn.Module | None = None) -> Callable[[], Tensor]:
        model = model if model is not None else self.retriever
        n = self.scale.num_captions
        image = {"pixel_values": self.pixel_values, "pixel_mask": self.pixel_mask}
        return lambda: model.rank_texts(self.captions, image, batch_size=n).scores


class BaselineSide(_Common):
    """OSCAR-B-style baseline: R101-FPN Faster R-CNN regions → BERT-base-shaped heads (random weights)."""

    label = "baseline (R101 Faster R-CNN + BERT-base)"

    def __init__(self, reference_config, scale: Scale = FULL, seed: int = 0, tasks=("vqa", "caption", "retrieval")):
        from ..modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
        from ..modeling.modeling_minivlm_tasks import MiniVLMForImageTextRetrieval, MiniVLMForQuestionAnswering

        if scale.tiny:
            self.extractor = build_baseline_extractor(
                feature_dim=64, num_classes=11, min_size=scale.baseline_image[0], max_size=scale.baseline_image[1],
                backbone_name="resnet18", rpn_post_nms_top_n_test=100, pre_nms_top_n=500, num_regions=10,
                seed=seed,
            )
            config = baseline_config(reference_config, scale, num_detector_classes=11)
        else:
            self.extractor = build_baseline_extractor(seed=seed)
            config = baseline_config(reference_config, scale)
        vqa = _build(MiniVLMForQuestionAnswering, config, seed)
        captioner = _build(MiniVLMForImageCaptioning, config, seed + 1) if "caption" in tasks else None
        retriever = _build(MiniVLMForImageTextRetrieval, config, seed + 2) if "retrieval" in tasks else None
        super().__init__(scale=scale, config=config, vqa=vqa, captioner=captioner, retriever=retriever)
        self._texts(seed)
        gen = torch.Generator().manual_seed(seed)
        self.image = torch.rand(3, *scale.baseline_image, generator=gen)  # RGB in [0, 1]; the detector normalises

    def regions(self, fusion_model: nn.Module, extractor: nn.Module | None = None) -> dict[str, Tensor]:
        """Detector (``extractor``, default the side's own) → normalised region inputs + tags of ``fusion_model``."""
        extractor = extractor if extractor is not None else self.extractor
        features, boxes = extractor(self.image)
        height, width = self.image.shape[-2:]
        boxes = (boxes.float() / boxes.new_tensor([width, height, width, height]).float()).clamp(0, 1)
        mask = torch.ones(features.shape[:2], dtype=torch.bool)
        tag_ids, tag_mask = fusion_model.minivlm.tags_from_regions(
            extractor.last_labels, extractor.last_scores, mask,
            getattr(extractor, "last_attribute_scores", None), region_boxes=boxes,
        )
        return {"region_features": features, "region_boxes": boxes, "region_mask": mask, "tag_ids": tag_ids,
                "tag_attention_mask": tag_mask}

    def extraction(self) -> Callable[[], Any]:
        return lambda: self.extractor(self.image).region_features

    def vqa_call(self) -> Callable[[], Tensor]:
        return lambda: self.vqa(**self.question, **self.regions(self.vqa)).logits

    def caption_call(self, num_beams: int) -> Callable[[], Tensor]:
        kwargs = self.generate_kwargs(num_beams)
        model = self.captioner
        return lambda: model.generate(input_ids=self.caption_prompt(), **self.regions(model), **kwargs)

    def retrieval_call(self) -> Callable[[], Tensor]:
        n = self.scale.num_captions
        model = self.retriever
        return lambda: model.rank_texts(self.captions, self.regions(model), batch_size=n).scores


# ---------------------------------------------------------------------------------------------------------- memory jobs
# Module-level (picklable) so that peak memory can be measured in a fresh subprocess (machine.py).


def build_minivlm_vqa_state(tiny: bool, seed: int = 0) -> MiniVLMSide:
    return MiniVLMSide(TINY if tiny else FULL, seed=seed, tasks=("vqa",))


def build_baseline_vqa_state(tiny: bool, seed: int = 0) -> BaselineSide:
    scale = TINY if tiny else FULL
    return BaselineSide(minivlm_config(scale), scale, seed=seed, tasks=("vqa",))


def run_vqa_once(side, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    with torch.inference_mode():
        side.vqa_call()()

