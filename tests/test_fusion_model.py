"""MiniVLMModel: BERT parity, attention modes, region inputs, bad input."""

import pytest
import torch
from transformers import BertConfig, BertModel

from fusion_utils import copy_config, region_inputs, tag_inputs, text_inputs, tiny_fusion_config
from minivlm_hf.modeling.modeling_minivlm import MiniVLMModel


def _bert_for(config, attn="sdpa"):
    bert_config = BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=config.pad_token_id,
    )
    return BertModel._from_config(bert_config, attn_implementation=attn).eval()


def test_text_only_hidden_states_equal_bert():
    torch.manual_seed(0)
    config = tiny_fusion_config()
    model = MiniVLMModel(config).eval()
    bert = _bert_for(config)
    result = bert.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("region")})
    assert not result.missing_keys and not result.unexpected_keys
    inputs = text_inputs()
    with torch.no_grad():
        ours = model(**inputs)
        theirs = bert(**inputs)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours.last_hidden_state[valid], theirs.last_hidden_state[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=1e-5, rtol=0)


def test_offline_minilm_init_matches_bert_from_pretrained():
    from minivlm_hf.convert import init_fusion_from_bert, resolve_text_source

    config = tiny_fusion_config(
        vocab_size=30522, hidden_size=384, num_attention_heads=12, intermediate_size=1536, num_hidden_layers=6,
        max_text_length=40, max_tag_length=30, cls_token_id=101, sep_token_id=102, mask_token_id=103,
        bos_token_id=101, eos_token_id=102,
    )
    model = MiniVLMModel(config).eval()
    report = init_fusion_from_bert(model)
    assert report.source_layers == 6
    assert any(k.startswith("region_embeddings.") for k in report.missing)
    assert not any(k.startswith("encoder.") for k in report.missing)
    bert = BertModel.from_pretrained(str(resolve_text_source()), attn_implementation="sdpa").eval()
    ids = torch.tensor([[101, 1037, 2417, 4418, 2000, 1996, 2187, 102]])
    with torch.no_grad():
        ours = model(input_ids=ids).last_hidden_state
        theirs = bert(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_sdpa_and_eager_agree_with_regions_and_tags():
    torch.manual_seed(0)
    config = tiny_fusion_config()
    sdpa = MiniVLMModel._from_config(copy_config(config), attn_implementation="sdpa").eval()
    eager = MiniVLMModel._from_config(copy_config(config), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    inputs = {**text_inputs(), **region_inputs(), **tag_inputs()}
    with torch.no_grad():
        for mode in ("bidirectional", "caption"):
            a = sdpa(**inputs, attention_mode=mode).last_hidden_state
            b = eager(**inputs, attention_mode=mode).last_hidden_state
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_output_layout_and_masks():
    torch.manual_seed(0)
    model = MiniVLMModel(tiny_fusion_config()).eval()
    inputs = {**text_inputs(), **region_inputs(), **tag_inputs()}
    out = model(**inputs, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 7 + 3 + 5, 32)
    assert out.pooler_output.shape == (2, 32)
    assert len(out.hidden_states) == 3
    assert out.text_slice == slice(0, 7) and out.tag_slice == slice(7, 10) and out.region_slice == slice(10, 15)
    assert out.attention_mask[1].tolist() == [1] * 5 + [0, 0] + [1, 1, 0] + [1, 1, 1, 0, 0]
    # masked regions do not influence the real tokens
    changed = dict(inputs)
    changed["region_features"] = inputs["region_features"].clone()
    changed["region_features"][1, -2:] = 100.0
    with torch.no_grad():
        a = model(**inputs).last_hidden_state
        b = model(**changed).last_hidden_state
    real = out.attention_mask.bool()
    torch.testing.assert_close(a[real], b[real])


def test_eager_attentions_are_returned():
    model = MiniVLMModel._from_config(tiny_fusion_config(), attn_implementation="eager").eval()
    out = model(**text_inputs(), **region_inputs(), output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 12, 12)


def test_caption_mask_is_causal_and_prefix_ignores_caption():
    torch.manual_seed(0)
    model = MiniVLMModel(tiny_fusion_config()).eval()
    base = {**text_inputs(batch=1), **region_inputs(batch=1), **tag_inputs(batch=1)}
    changed = dict(base)
    changed["input_ids"] = base["input_ids"].clone()
    changed["input_ids"][0, 4] = 50
    with torch.no_grad():
        a = model(**base, attention_mode="caption")
        b = model(**changed, attention_mode="caption")
    start = a.text_slice.start
    # prefix (tags + regions) and caption tokens before position 4 are unchanged, position 4 onwards change
    torch.testing.assert_close(a.last_hidden_state[:, : start + 4], b.last_hidden_state[:, : start + 4])
    assert not torch.allclose(a.last_hidden_state[:, start + 4], b.last_hidden_state[:, start + 4])


def test_gradient_checkpointing_gives_same_loss_and_grads():
    torch.manual_seed(0)
    from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForImageTextRetrieval

    model = MiniVLMForImageTextRetrieval(tiny_fusion_config()).train()
    inputs = {**text_inputs(), **region_inputs(), "labels": torch.tensor([1, 0])}
    loss = model(**inputs).loss
    loss.backward()
    grad = model.minivlm.encoder.layer[0].attention.self.query.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable({"use_reentrant": False})
    assert model.minivlm.encoder.layer[0].gradient_checkpointing
    loss2 = model(**inputs).loss
    loss2.backward()
    torch.testing.assert_close(loss, loss2)
    torch.testing.assert_close(grad, model.minivlm.encoder.layer[0].attention.self.query.weight.grad)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(region_features=torch.randn(2, 5, 7)), "region_feature_size=16"),
        (lambda i: i.update(region_features=torch.randn(3, 5, 16)), "batch size mismatch"),
        (lambda i: i["region_boxes"].__setitem__((0, 0, 2), 1.7), "normalised xyxy in \\[0, 1\\]"),
        (lambda i: i.update(region_boxes=None), "without region_boxes"),
        (lambda i: i.update(pixel_values=torch.randn(2, 3, 32, 32)), "pixel_values or region_features"),
        (lambda i: i.update(attention_mode="causal"), "attention_mode"),
    ],
)
def test_bad_inputs_get_clear_errors(change, message):
    model = MiniVLMModel(tiny_fusion_config()).eval()
    inputs = {**text_inputs(), **region_inputs()}
    change(inputs)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_pixel_values_without_vision_config_is_a_clear_error():
    model = MiniVLMModel(tiny_fusion_config()).eval()
    with pytest.raises(ValueError, match="no vision_config"):
        model(**text_inputs(), pixel_values=torch.randn(2, 3, 32, 32))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_attention_heads"):
        tiny_fusion_config(num_attention_heads=5)


def test_concat_geometry_columns_start_with_the_features_variance_share(tmp_path):
    torch.manual_seed(0)
    config = tiny_fusion_config(region_feature_size=384, hidden_size=64, num_attention_heads=4)
    model = MiniVLMModel(config)
    weight = model.region_embeddings.projection.weight
    features, geometry = weight[:, :-6], weight[:, -6:]
    ratio = geometry.std() / features.std()
    assert abs(ratio - (384 / 6) ** 0.5) < 0.25 * (384 / 6) ** 0.5  # sqrt(64) = 8x the feature columns' std
    # The two blocks now contribute comparable variance for inputs of comparable size.
    x = torch.randn(4096, 390)
    assert 0.5 < (x[:, -6:] @ geometry.T).var() / (x[:, :-6] @ features.T).var() < 2.0
    # Loading never re-scales stored weights.
    model.save_pretrained(tmp_path)
    reloaded = MiniVLMModel.from_pretrained(tmp_path)
    assert torch.equal(reloaded.region_embeddings.projection.weight, weight)
