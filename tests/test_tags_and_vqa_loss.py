"""Attribute tags (VinVL style) from the TEE's detections, and the softmax VQA loss."""

import pytest
import torch

from minivlm_hf.convert import load_offline_tokenizer
from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig
from minivlm_hf.modeling.modeling_minivlm import MiniVLMModel, select_tag_phrases
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering, vqa_loss
from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor
from minivlm_hf.training.features import extract_features, tags_from_detections
from tee_utils import ATTRIBUTE_NAMES, CLASS_NAMES, tiny_image_processor, tiny_tee_config

LABELS = torch.tensor([2, 0, 2, 1])
SCORES = torch.tensor([0.5, 0.9, 0.7, 0.1])
MASK = torch.tensor([True, True, True, False])
# attribute probabilities per region (3 attributes)
ATTRS = torch.tensor([[0.9, 0.2, 0.8], [0.1, 0.6, 0.7], [0.4, 0.3, 0.2], [0.9, 0.9, 0.9]])


def test_select_tag_phrases_class_mode_names_each_class_once_by_score():
    assert select_tag_phrases(LABELS, SCORES, MASK, 0.3) == [(0, []), (2, [])]
    assert select_tag_phrases(LABELS, SCORES, MASK, 0.6) == [(0, []), (2, [])]
    assert select_tag_phrases(LABELS, SCORES, MASK, 0.8) == [(0, [])]


def test_select_tag_phrases_attribute_mode_keeps_repeats_and_orders_attributes():
    phrases = select_tag_phrases(LABELS, SCORES, MASK, 0.3, ATTRS, attribute_threshold=0.5, max_attributes=2)
    # score order 0.9 (label 0), 0.7 (label 2), 0.5 (label 2); the masked region (score 0.1) never counts;
    # attributes >= 0.5, the two most probable, listed in vocabulary order; none pass for the third region
    assert phrases == [(0, [1, 2]), (2, []), (2, [0, 2])]
    assert select_tag_phrases(LABELS, SCORES, MASK, 0.3, ATTRS, 0.5, 1) == [(0, [2]), (2, []), (2, [0])]


def test_tags_from_detections_words():
    id2label, attr_names = {0: "circle", 1: "square", 2: "red_box"}, {0: "red", 1: "small", 2: "large"}
    assert tags_from_detections(LABELS, SCORES, MASK, id2label, 0.3) == ["circle", "red box"]
    assert tags_from_detections(LABELS, SCORES, MASK, id2label, 0.3, ATTRS, attr_names) == [
        "small large circle", "red box", "red large red box"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_offline_tokenizer()


def _model(tokenizer, **overrides):
    config = MiniVLMConfig(vision_config=tiny_tee_config(), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, region_feature_size=32, max_regions=10, max_tag_length=40, tag_score_threshold=0.0,
                           tag_attributes=True, tag_attribute_threshold=0.0, max_tag_attributes=1, **overrides)
    MiniVLMProcessor(tiny_image_processor(), tokenizer).prepare_config(config)
    config.max_tag_length = 40
    torch.manual_seed(0)
    return MiniVLMModel(config).eval()


def _regions_and_features(model, seed: int, **extract_kwargs):
    """Two random images: the model's own TEE regions from pixels, and extract_features' table of the same images."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)) for _ in range(2)]
    processor = tiny_image_processor()
    pixels = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        regions = model.get_image_features(pixels["pixel_values"], pixels["pixel_mask"], with_tags=False)
    table = extract_features(model.vision_model, processor, datasets.Dataset.from_dict({"image": images}),
                             tag_threshold=0.0, tag_attributes=True, attribute_threshold=0.0, max_attributes=1,
                             **extract_kwargs)
    return regions, table


def test_model_tags_from_regions_match_the_feature_extraction(tokenizer):
    """Tags the model makes from pixels == the tag strings extract_features stores, tokenised."""
    model = _model(tokenizer)
    assert model.config.tag_attribute_token_ids[0] == tokenizer(ATTRIBUTE_NAMES[0], add_special_tokens=False)["input_ids"]
    regions, table = _regions_and_features(model, seed=0)
    assert regions["region_attribute_scores"].shape[-1] == len(ATTRIBUTE_NAMES)
    tag_ids, tag_mask = model.tags_from_regions(regions["region_labels"], regions["region_scores"],
                                                regions["region_mask"], regions["region_attribute_scores"])
    for b in range(2):
        tags = table[b]["tags"]
        assert tags and all(len(t.split()) >= 2 for t in tags)  # "attribute class" phrases
        assert all(t.split()[-1] in {n.split()[-1] for n in CLASS_NAMES.values()} for t in tags)
        expected = tokenizer(" ".join(tags), add_special_tokens=False)["input_ids"][:39] + [tokenizer.sep_token_id]
        assert tag_ids[b, : int(tag_mask[b].sum())].tolist() == expected


def test_attribute_tags_need_token_ids(tokenizer):
    model = _model(tokenizer)
    model.config.tag_attribute_token_ids = None
    with pytest.raises(ValueError, match="tag_attribute_token_ids is empty"):
        model.tags_from_regions(LABELS[None], SCORES[None], MASK[None], ATTRS[None])
    model = _model(tokenizer)
    with pytest.raises(ValueError, match="no attribute scores"):
        model.tags_from_regions(LABELS[None], SCORES[None], MASK[None])


def test_vqa_loss_values_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.0, 0.6], [0.0, 0.0, 0.0]])
    lse = torch.logsumexp(logits, -1)
    row0 = -(logits[0, 0] - lse[0])
    row1 = -((1 / 3) * (logits[1, 0] - lse[1]) + (2 / 3) * (logits[1, 2] - lse[1]))
    torch.testing.assert_close(vqa_loss(logits, labels, "softmax"), (row0 + row1) / 2)  # unscored row skipped
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) * 3
    torch.testing.assert_close(vqa_loss(logits, labels, "bce"), bce)
    assert float(vqa_loss(logits, torch.zeros_like(labels), "softmax")) == 0.0


def test_vqa_model_uses_configured_loss_and_scores(tokenizer):
    from fusion_utils import tiny_fusion_config

    config = tiny_fusion_config(vqa_loss="softmax")
    torch.manual_seed(0)
    model = MiniVLMForQuestionAnswering(config).eval()
    inputs = {"input_ids": torch.tensor([[1, 50, 2], [1, 60, 2]]), "labels": torch.tensor([[1.0, 0, 0], [0, 0.3, 1.0]])}
    out = model(**inputs)
    torch.testing.assert_close(out.loss, vqa_loss(out.logits, inputs["labels"], "softmax"))
    processor = MiniVLMProcessor(tiny_image_processor(), tokenizer)
    top = processor.post_process_vqa(out.logits, config.id2label, top_k=3, score_function="softmax")
    assert abs(sum(a["score"] for a in top[0]) - 1.0) < 1e-5
    with pytest.raises(ValueError, match="score_function"):
        processor.post_process_vqa(out.logits, config.id2label, score_function="relu")
    with pytest.raises(ValueError, match="vqa_loss"):
        tiny_fusion_config(vqa_loss="hinge")
    with pytest.raises(ValueError, match="tag_attribute_threshold"):
        tiny_fusion_config(tag_attribute_threshold=1.5)


BOXES = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0]])


def test_tag_order_area_lists_the_largest_box_first():
    # the same phrases as by score (region 1: 0.9, region 2: 0.7, region 0: 0.5), reordered by box area
    by_area = select_tag_phrases(LABELS, SCORES, MASK, 0.3, ATTRS, 0.5, 2, order="area", boxes=BOXES)
    assert by_area == [(2, []), (2, [0, 2]), (0, [1, 2])]
    # class mode: the class's phrase still names its most confident region, then the order follows area
    assert select_tag_phrases(LABELS, SCORES, MASK, 0.3, order="area", boxes=BOXES) == [(2, []), (0, [])]
    with pytest.raises(ValueError, match="needs the regions' boxes"):
        select_tag_phrases(LABELS, SCORES, MASK, 0.3, order="area")
    with pytest.raises(ValueError, match="tag order"):
        select_tag_phrases(LABELS, SCORES, MASK, 0.3, order="size", boxes=BOXES)
    with pytest.raises(ValueError, match="tag_order"):
        MiniVLMConfig(tag_order="size")


def test_area_ordered_tags_from_pixels_match_the_feature_extraction(tokenizer):
    model = _model(tokenizer, tag_order="area")
    regions, table = _regions_and_features(model, seed=1, tag_order="area", dtype="float32")
    tag_ids, tag_mask = model.tags_from_regions(regions["region_labels"], regions["region_scores"],
                                                regions["region_mask"], regions["region_attribute_scores"],
                                                region_boxes=regions["region_boxes"])
    for b in range(2):
        assert len(table[b]["tags"]) > 1
        expected = tokenizer(" ".join(table[b]["tags"]), add_special_tokens=False)["input_ids"][:39]
        assert tag_ids[b, : int(tag_mask[b].sum())].tolist() == expected + [tokenizer.sep_token_id]
    with pytest.raises(ValueError, match="needs the regions' boxes"):
        model.tags_from_regions(regions["region_labels"], regions["region_scores"], regions["region_mask"],
                                regions["region_attribute_scores"])
