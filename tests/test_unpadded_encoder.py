"""`config.unpad_tokens`: the encoder runs its projections on the real tokens only, with the same results."""

import copy

import pytest
import torch

from fusion_utils import region_inputs, tag_inputs, text_inputs, tiny_fusion_config
from minivlm_hf.modeling.modeling_minivlm import MiniVLMModel
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForImageTextRetrieval, MiniVLMForQuestionAnswering


def _padded_inputs():
    """Text (3 of 14), tags (1 of 6) and regions (2 of 10) padded: 24 real positions of 30."""
    inputs = {**text_inputs(), **region_inputs(), **tag_inputs()}
    inputs["attention_mask"][0, -1] = 0
    inputs["input_ids"][0, -1] = 0
    return inputs


def _pair(model_class, **config_overrides):
    """The same weights with and without unpadding."""
    torch.manual_seed(0)
    dense = model_class(tiny_fusion_config(unpad_tokens=False, **config_overrides))
    packed = copy.deepcopy(dense)
    packed.config.unpad_tokens = True
    return dense, packed


def _rows_seen(model):
    """Rows of the first feed-forward input of every forward call (padded: batch × length, unpadded: tokens)."""
    seen = []
    layer = model.encoder.layer[0] if isinstance(model, MiniVLMModel) else model.minivlm.encoder.layer[0]
    layer.intermediate.dense.register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1, i[0].shape[-1]).shape[0]))
    return seen


@pytest.mark.parametrize("mode", ["bidirectional", "caption"])
def test_same_outputs_at_real_positions_and_zeros_at_padding(mode):
    dense, packed = _pair(MiniVLMModel)
    rows = _rows_seen(packed)
    inputs = _padded_inputs()
    with torch.no_grad():
        a = dense.eval()(**inputs, attention_mode=mode)
        b = packed.eval()(**inputs, attention_mode=mode)
    batch, length = a.last_hidden_state.shape[:2]
    real = torch.cat([inputs["attention_mask"], inputs["tag_attention_mask"], inputs["region_mask"].long()], 1).bool()
    if mode == "caption":  # [tags, regions, caption]
        real = torch.cat([inputs["tag_attention_mask"], inputs["region_mask"].long(), inputs["attention_mask"]], 1).bool()
    assert rows == [int(real.sum())] and int(real.sum()) < batch * length
    torch.testing.assert_close(b.last_hidden_state[real], a.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    assert not b.last_hidden_state[~real].any()
    if mode == "bidirectional":
        torch.testing.assert_close(b.pooler_output, a.pooler_output, atol=1e-5, rtol=1e-5)


def test_caption_training_loss_and_gradients_match():
    dense, packed = _pair(MiniVLMForImageCaptioning)
    rows = _rows_seen(packed)
    inputs = _padded_inputs()
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2:4] = inputs["input_ids"][:, 2:4]
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][:, 2:4] = dense.config.mask_token_id
    losses, grads = [], []
    for model in (dense.train(), packed.train()):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert rows == [24]
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_caption_log_likelihood_matches():
    dense, packed = _pair(MiniVLMForImageCaptioning)
    rows = _rows_seen(packed)
    inputs = _padded_inputs()
    with torch.no_grad():
        scores = [model.eval().caption_log_likelihood(**inputs) for model in (dense, packed)]
    # captions cut to the longest (6), plus 5 [MASK] queries per row: 34 real positions of 38
    assert rows == [34]
    torch.testing.assert_close(scores[1], scores[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", [MiniVLMForQuestionAnswering, MiniVLMForImageTextRetrieval])
def test_classifier_heads_match_and_bf16_autocast_runs_unpadded(model_class):
    dense, packed = _pair(model_class)
    rows = _rows_seen(packed)
    inputs = _padded_inputs()
    with torch.no_grad():
        a, b = dense.eval()(**inputs).logits, packed.eval()(**inputs).logits
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c, d = dense(**inputs).logits, packed(**inputs).logits
    assert rows == [24, 24]
    torch.testing.assert_close(d.float(), c.float(), atol=0.05, rtol=0.05)


def test_fused_qkv_fast_path_runs_unpadded():
    from minivlm_hf.fast import fuse_qkv_projections

    dense, packed = _pair(MiniVLMModel)
    assert fuse_qkv_projections(packed) > 0
    rows = _rows_seen(packed)
    inputs = _padded_inputs()
    with torch.no_grad():
        a = dense.eval()(**inputs).pooler_output
        b = packed.eval()(**inputs).pooler_output
    assert rows == [24]
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flag", ["torch.jit.is_tracing", "torch.compiler.is_compiling",
                                  "torch.onnx.is_in_onnx_export"])
def test_padded_layout_under_tracing_compiling_and_export(flag, monkeypatch):
    _, packed = _pair(MiniVLMModel)
    rows = _rows_seen(packed)
    module, name = flag.rsplit(".", 1)
    monkeypatch.setattr(eval(module), name, lambda: True)  # data-dependent shapes are not traceable
    with torch.no_grad():
        packed.eval()(**_padded_inputs())
    assert rows == [30]


def test_padded_layout_kept_where_unpadding_does_not_apply():
    _, packed = _pair(MiniVLMModel)
    packed.eval()
    rows = _rows_seen(packed)
    inputs = _padded_inputs()
    with torch.no_grad():
        hidden = packed(**inputs, output_hidden_states=True)  # every layer's padded states are returned
        assert len(hidden.hidden_states) == 3
        packed(**inputs, output_attentions=True)
        packed(**inputs, attention_mode="caption", use_cache=True)  # the cache stores padded keys
        full = {**text_inputs(batch=1), **region_inputs(batch=1), **tag_inputs(batch=1)}
        full["region_mask"][:] = True
        packed(**full)  # nothing to skip
        few = _padded_inputs()
        few["region_mask"][:] = True
        few["tag_attention_mask"][:] = 1
        few["attention_mask"][0, -1] = 1  # 2 of 30 padding: below UNPAD_MIN_PADDING
        packed(**few)
    assert rows == [30, 30, 30, 15, 30]
    with pytest.raises(ValueError, match="token_index"):
        packed.encoder(torch.zeros(1, 3, 32), None, output_hidden_states=True, token_index=torch.tensor([0, 1]))


def test_generation_with_and_without_unpadding_gives_the_same_tokens():
    dense, packed = _pair(MiniVLMForImageCaptioning)
    inputs = {**region_inputs(), **tag_inputs()}
    start = torch.full((2, 1), dense.config.cls_token_id)
    kwargs = dict(max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        a = dense.eval().generate(input_ids=start, **inputs, **kwargs)
        b = packed.eval().generate(input_ids=start, **inputs, **kwargs)
        c = packed.generate(input_ids=start, **inputs, **kwargs, use_cache=False)  # every step unpadded
    assert torch.equal(a, b) and torch.equal(a, c)


def test_config_default_and_round_trip(tmp_path):
    from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig

    assert MiniVLMConfig().unpad_tokens is True
    tiny_fusion_config(unpad_tokens=False).save_pretrained(tmp_path)
    assert MiniVLMConfig.from_pretrained(tmp_path).unpad_tokens is False


def _loss_and_grads(model, inputs):
    loss = model.train()(**inputs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def _assert_same(a, b):
    torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=1e-5)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(b[1][name], a[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_pretraining_and_gradient_checkpointing_match_the_padded_computation(monkeypatch):
    from minivlm_hf.modeling import modeling_minivlm_layers as layers
    from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForPreTraining

    dense, packed = _pair(MiniVLMForPreTraining)
    inputs = _padded_inputs()
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    inputs.update(labels=labels, contrastive_labels=torch.tensor([0, 2]))
    reference = _loss_and_grads(dense, inputs)
    rows, forward = [], layers.MiniVLMIntermediate.forward
    monkeypatch.setattr(layers.MiniVLMIntermediate, "forward", lambda self, h: rows.append(h.shape[0]) or forward(self, h))
    _assert_same(reference, _loss_and_grads(packed, inputs))
    assert rows == [24, 24]  # 2 layers
    packed.activation_checkpointing_enable({"use_reentrant": False})  # `packed` passes through the checkpoint
    _assert_same(reference, _loss_and_grads(packed, inputs))
    assert rows == [24] * 6  # forward + the backward's recomputation, both unpadded


def test_nlvr_pairs_match_the_padded_computation():
    from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForVisualReasoning

    dense, packed = _pair(MiniVLMForVisualReasoning)
    rows = _rows_seen(packed)
    one = _padded_inputs()
    pair = {k: torch.stack([v, v.flip(0)], dim=1) for k, v in one.items() if k not in ("input_ids", "attention_mask")}
    inputs = {"input_ids": one["input_ids"], "attention_mask": one["attention_mask"], **pair,
              "labels": torch.tensor([1, 0])}
    _assert_same(_loss_and_grads(dense, inputs), _loss_and_grads(packed, inputs))
    assert rows and all(r < 60 for r in rows)
