"""`MiniVLMConfig.tag_geometry`: tag tokens carry the box of the region they name (`tag_region_index`)."""

import numpy as np
import pytest
import torch

from fusion_utils import region_inputs, text_inputs, tiny_fusion_config
from minivlm_hf.convert import load_offline_tokenizer
from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig
from minivlm_hf.modeling.modeling_minivlm import MiniVLMModel, select_tag_phrases
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering, MiniVLMForVisualReasoning
from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor
from minivlm_hf.training.collators import NLVRCollator, PreTrainingCollator, VQACollator
from minivlm_hf.training.features import RegionStore, extract_features, tags_from_detections
from tee_utils import tiny_image_processor, tiny_tee_config

LABELS = torch.tensor([2, 0, 2, 1])
SCORES = torch.tensor([0.5, 0.9, 0.7, 0.1])
MASK = torch.tensor([True, True, True, False])
ATTRS = torch.tensor([[0.9, 0.2, 0.8], [0.1, 0.6, 0.7], [0.4, 0.3, 0.2], [0.9, 0.9, 0.9]])
TAGS = {"tag_ids": torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]]), "tag_attention_mask": torch.tensor([[1, 1, 1, 1],
                                                                                                  [1, 1, 1, 0]])}
INDEX = torch.tensor([[0, 0, 1, -1], [2, 2, -1, -1]])


@pytest.fixture(scope="module")
def tokenizer():
    return load_offline_tokenizer()


def _inputs(index=INDEX):
    return {**text_inputs(), **region_inputs(), **TAGS, "tag_region_index": index}


def _trained(model):
    """A fresh model's tag geometry is gated off: open the gate as training would."""
    base = getattr(model, "minivlm", model)
    with torch.no_grad():
        base.tag_geometry.gate.fill_(1.0)
    return model


def test_fresh_geometry_starts_at_zero_and_changes_nothing():
    torch.manual_seed(0)
    model = MiniVLMModel(tiny_fusion_config(tag_geometry=True)).eval()
    assert float(model.tag_geometry.gate) == 0.0 and model.tag_geometry.projection.weight.std() > 0
    plain = MiniVLMModel(tiny_fusion_config()).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(model(**_inputs()).last_hidden_state, plain(**_inputs()).last_hidden_state)


def test_phrases_name_their_regions():
    assert select_tag_phrases(LABELS, SCORES, MASK, 0.3, return_regions=True) == [(0, [], 1), (2, [], 2)]
    phrases = select_tag_phrases(LABELS, SCORES, MASK, 0.3, ATTRS, 0.5, 2, return_regions=True)
    assert phrases == [(0, [1, 2], 1), (2, [], 2), (2, [0, 2], 0)]
    names = {0: "circle", 1: "square", 2: "box"}
    assert tags_from_detections(LABELS, SCORES, MASK, names, 0.3, return_regions=True) == (["circle", "box"], [1, 2])


def test_geometry_is_used_only_when_configured():
    torch.manual_seed(0)
    model = _trained(MiniVLMModel(tiny_fusion_config(tag_geometry=True)).eval())
    base = model(**_inputs()).last_hidden_state
    moved = model(**_inputs(torch.tensor([[1, 1, 0, -1], [2, 2, -1, -1]]))).last_hidden_state
    assert (base[0] - moved[0]).abs().max() > 1e-3  # row 0's tags now name other boxes
    torch.testing.assert_close(base[1], moved[1])  # row 1 unchanged
    # -1 means "no region": the same as a model without tag geometry (same other weights)
    plain = MiniVLMModel(tiny_fusion_config()).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    none = torch.full_like(INDEX, -1)
    torch.testing.assert_close(model(**_inputs(none)).last_hidden_state, plain(**_inputs(none)).last_hidden_state)
    # a model without tag geometry ignores the index
    torch.testing.assert_close(plain(**_inputs()).last_hidden_state, plain(**_inputs(none)).last_hidden_state)


def test_geometry_is_the_gated_normalised_box_projection():
    torch.manual_seed(0)
    model = _trained(MiniVLMModel(tiny_fusion_config(tag_geometry=True)).eval())
    inputs = _inputs()
    boxes = inputs["region_boxes"][0, 1]
    geometry = torch.cat([boxes, boxes[2:] - boxes[:2]])
    emb = model.embeddings
    tag = inputs["tag_ids"][0, 2]
    position = model.config.max_text_length + 2
    with torch.no_grad():
        model.tag_geometry.gate.fill_(0.3)
    raw = (emb.word_embeddings.weight[tag] + emb.token_type_embeddings.weight[1]
           + emb.position_embeddings.weight[position])
    expected = emb.LayerNorm(raw) + 0.3 * model.tag_geometry.LayerNorm(model.tag_geometry.projection(geometry))
    got = model._embed_tokens(inputs["tag_ids"], 1, model.config.max_text_length, None,
                              model.tag_geometry(inputs["tag_region_index"], inputs["region_boxes"]))
    torch.testing.assert_close(got[0, 2], expected)


def test_clear_errors():
    torch.manual_seed(0)
    model = MiniVLMModel(tiny_fusion_config(tag_geometry=True)).eval()
    inputs = _inputs()
    with pytest.raises(ValueError, match="tag_ids need tag_region_index"):
        model(**{**inputs, "tag_region_index": None})
    with pytest.raises(ValueError, match="must have the shape of tag_ids"):
        model(**{**inputs, "tag_region_index": INDEX[:, :2]})
    with pytest.raises(ValueError, match="names region 7 but there are only 5 regions"):
        model(**{**inputs, "tag_region_index": torch.tensor([[7, 0, 0, -1], [0, 0, -1, -1]])})
    text = text_inputs()
    folded = {**text, "token_type_ids": torch.ones_like(text["input_ids"])}
    with pytest.raises(ValueError, match="not folded into input_ids"):
        model(**folded, **region_inputs())


def _pixel_model(tokenizer, cls=MiniVLMModel):
    config = MiniVLMConfig(vision_config=tiny_tee_config(), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, region_feature_size=32, max_regions=10, tag_score_threshold=0.0,
                           tag_attributes=True, tag_attribute_threshold=0.0, max_tag_attributes=1, tag_geometry=True,
                           max_text_length=16)
    MiniVLMProcessor(tiny_image_processor(), tokenizer).prepare_config(config)
    config.max_tag_length = 40
    torch.manual_seed(0)
    return _trained(cls(config).eval())


def _images(n=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)) for _ in range(n)]


def test_pixels_and_stored_features_give_the_same_geometry(tokenizer):
    """The model's own tags from pixels == extract_features' tags + tag_regions through the collator."""
    import datasets

    model = _pixel_model(tokenizer, MiniVLMForQuestionAnswering)
    processor = tiny_image_processor()
    images = _images()
    table = extract_features(model.minivlm.vision_model, processor, datasets.Dataset.from_dict({"image": images}),
                             tag_threshold=0.0, tag_attributes=True, attribute_threshold=0.0, max_attributes=1,
                             dtype="float32")
    for row in table:
        assert len(row["tag_regions"]) == len(row["tags"]) and row["tag_regions"] == sorted(row["tag_regions"])
    collator = VQACollator(tokenizer, regions=RegionStore(table), answer2id={"yes": 0}, max_text_length=16,
                           max_tag_length=40, max_regions=10, tag_geometry=True)
    batch = collator([{"image_index": i, "question": "is it red?", "answers": ["yes"] * 10} for i in range(2)])
    region_index = batch["tag_region_index"]
    assert (region_index[batch["tag_attention_mask"] == 0] == -1).all()
    assert (region_index.max(1).values >= 0).all()
    pixels = processor(images=images, return_tensors="pt")
    text = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        from_pixels = model(**text, **pixels).logits
        from_features = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        without = model(**{k: v for k, v in batch.items() if k not in ("labels", "tag_region_index")},
                        tag_region_index=torch.full_like(region_index, -1)).logits
    torch.testing.assert_close(from_pixels, from_features, atol=1e-4, rtol=1e-4)
    assert (from_features - without).abs().max() > 1e-4


def test_beam_generation_and_reload_keep_the_geometry(tokenizer, tmp_path):
    model = _pixel_model(tokenizer, MiniVLMForImageCaptioning)
    pixels = tiny_image_processor()(images=_images(), return_tensors="pt")
    a = model.generate(**pixels, max_new_tokens=4, num_beams=3, do_sample=False)
    model.save_pretrained(tmp_path)
    reloaded = MiniVLMForImageCaptioning.from_pretrained(tmp_path).eval()
    for name, value in model.minivlm.tag_geometry.state_dict().items():
        torch.testing.assert_close(reloaded.minivlm.tag_geometry.state_dict()[name], value)
    assert float(reloaded.minivlm.tag_geometry.gate) == 1.0
    assert torch.equal(reloaded.generate(**pixels, max_new_tokens=4, num_beams=3, do_sample=False), a)


def test_collators_align_region_index_with_word_pieces(tokenizer):
    table = _table(tokenizer)
    store = RegionStore(table)
    collator = PreTrainingCollator(tokenizer, regions=store, max_text_length=16, max_tag_length=12, pollution=0.0,
                                   caption_pollution=0.0, seed=0, tag_geometry=True)
    batch = collator([{"image_index": 0, "caption": "a red circle"}, {"image_index": 1, "caption": "two stars"}])
    red, circle = (tokenizer.convert_tokens_to_ids(w) for w in ("red", "circle"))
    assert batch["tag_ids"].shape == batch["tag_region_index"].shape
    # image 0: tags "red circle" (region 1), "blue star" (region 0) -> pieces red circle blue star [SEP]
    assert batch["tag_region_index"][0].tolist()[:5] == [1, 1, 0, 0, -1]
    labels = batch["tag_labels"][0]
    original = torch.where(labels != -100, labels, batch["tag_ids"][0])
    assert original[:2].tolist() == [red, circle]  # masking keeps the regions of the masked pieces
    # truncation to max_tag_length keeps pieces and regions aligned, the closing [SEP] names no region
    short = PreTrainingCollator(tokenizer, regions=store, max_text_length=16, max_tag_length=3, pollution=0.0,
                                caption_pollution=0.0, seed=0, tag_geometry=True)
    assert short([{"image_index": 0, "caption": "x"}])["tag_region_index"][0].tolist() == [1, 1, -1]
    nlvr = NLVRCollator(tokenizer, regions=store, max_text_length=16, max_tag_length=12, tag_geometry=True)
    pair = nlvr([{"left_index": 0, "right_index": 1, "sentence": "one star", "label": 1}])
    assert pair["tag_region_index"].shape == pair["tag_ids"].shape == (1, 2, pair["tag_ids"].shape[-1])
    assert pair["tag_region_index"][0, 1].tolist()[:3] == [0, 0, -1]
    # without tag_geometry (models saved before it existed do not take the argument) no index is emitted
    plain = PreTrainingCollator(tokenizer, regions=store, max_text_length=16, max_tag_length=12, seed=0)
    assert "tag_region_index" not in plain([{"image_index": 0, "caption": "x"}])


def test_recipe_collators_follow_the_model_config():
    from minivlm_hf.training.recipes import fusion_collator_settings

    assert fusion_collator_settings(tiny_fusion_config(tag_geometry=True))["tag_geometry"] is True
    assert fusion_collator_settings(tiny_fusion_config(), seed=3) == dict(
        max_text_length=12, max_tag_length=8, max_regions=5, tag_geometry=False, seed=3)


def _table(tokenizer):
    import datasets

    from minivlm_hf.training.features import region_features_schema

    rows = {
        "region_features": [np.zeros((3, 4), np.float32)] * 2,
        "region_boxes": [np.array([[0, 0, .2, .2], [.5, .5, .9, .9], [0, 0, 0, 0]], np.float32)] * 2,
        "region_mask": [[True, True, False]] * 2,
        "region_scores": [[0.8, 0.9, 0.0]] * 2,
        "region_labels": [[1, 0, 0]] * 2,
        "tags": [["red circle", "blue star"], ["blue star"]],
        "tag_regions": [[1, 0], [0]],
    }
    return datasets.Dataset.from_dict(rows, features=datasets.Features(region_features_schema(3, 4, "float32")))


def test_processor_builds_region_index(tokenizer):
    processor = MiniVLMProcessor(tiny_image_processor(), tokenizer)
    out = processor(text=["a", "b"], tags=[["red circle", "star"], ["blue star"]], tag_regions=[[2, 0], [1]])
    assert out["tag_region_index"].tolist() == [[2, 2, 0, -1], [1, 1, -1, -1]]
    assert out["tag_ids"].shape == out["tag_region_index"].shape
    with pytest.raises(ValueError, match="one region index per tag"):
        processor(text=["a"], tags=[["red circle", "star"]], tag_regions=[[2]])
    with pytest.raises(ValueError, match="without tags"):
        processor(text=["a"], tag_regions=[[2]])


def test_visual_reasoning_pairs_carry_the_index():
    torch.manual_seed(0)
    model = _trained(MiniVLMForVisualReasoning(tiny_fusion_config(tag_geometry=True, id2label={0: "false", 1: "true"})))
    model.eval()
    r = region_inputs(batch=4)
    paired = {k: v.view(2, 2, *v.shape[1:]) for k, v in r.items()}
    tags = {"tag_ids": torch.tensor([[[5, 2], [6, 2]], [[7, 2], [8, 2]]]),
            "tag_attention_mask": torch.ones(2, 2, 2, dtype=torch.long)}
    index = torch.tensor([[[0, -1], [1, -1]], [[2, -1], [0, -1]]])
    a = model(**text_inputs(), **paired, **tags, tag_region_index=index).logits
    b = model(**text_inputs(), **paired, **tags, tag_region_index=torch.full_like(index, -1)).logits
    assert a.shape == (2, 2) and (a - b).abs().max() > 1e-5


def test_adding_geometry_to_a_trained_checkpoint_starts_from_its_outputs(tmp_path):
    torch.manual_seed(0)
    source = MiniVLMForQuestionAnswering(tiny_fusion_config()).eval()
    source.save_pretrained(tmp_path)
    model = MiniVLMForQuestionAnswering.from_pretrained(tmp_path, tag_geometry=True).eval()
    assert float(model.minivlm.tag_geometry.gate) == 0.0  # missing keys start gated off
    torch.testing.assert_close(model(**_inputs()).logits, source(**_inputs()).logits)
