"""Every MiniVLM head: forward, loss, backward, save/load equality; captioning generation with and without cache."""

import pytest
import torch

from fusion_utils import region_inputs, tag_inputs, text_inputs, tiny_fusion_config
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import (
    MiniVLMForImageTextRetrieval,
    MiniVLMForPreTraining,
    MiniVLMForQuestionAnswering,
    MiniVLMForVisualReasoning,
)


def _pair(tensor):
    return torch.stack([tensor, tensor.flip(0)], dim=1)


def _head_cases():
    regions, text, tags = region_inputs(), text_inputs(), tag_inputs()
    masked = text["input_ids"].clone()
    labels = torch.full_like(masked, -100)
    labels[:, 2] = masked[:, 2]
    masked[:, 2] = 3
    return [
        (
            MiniVLMForPreTraining,
            {**regions, **tags, "input_ids": masked, "attention_mask": text["attention_mask"], "labels": labels,
             "tag_labels": torch.tensor([[5, -100, -100], [-100, -100, -100]]), "contrastive_labels": torch.tensor([0, 2])},
            "contrastive_logits", (2, 3),
        ),
        (
            MiniVLMForImageCaptioning,
            {**regions, **tags, "input_ids": masked, "attention_mask": text["attention_mask"], "labels": labels},
            "loss", (),
        ),
        (MiniVLMForQuestionAnswering, {**regions, **text, "labels": torch.tensor([[1.0, 0, 0.3], [0, 1, 0]])}, "logits", (2, 3)),
        (MiniVLMForImageTextRetrieval, {**regions, **text, "labels": torch.tensor([1, 0])}, "logits", (2, 2)),
        (
            MiniVLMForVisualReasoning,
            {**text, **{k: _pair(v) for k, v in regions.items()}, "labels": torch.tensor([1, 0])},
            "logits", (2, 2),
        ),
    ]


@pytest.mark.parametrize("head, inputs, field, shape", _head_cases(), ids=lambda x: getattr(x, "__name__", None))
def test_head_forward_loss_backward_and_reload(head, inputs, field, shape, tmp_path):
    torch.manual_seed(0)
    model = head(tiny_fusion_config()).train()
    out = model(**inputs)
    assert getattr(out, field).shape == shape
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = head.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(getattr(model(**inputs), field), getattr(reloaded(**inputs), field))
    assert not model(**inputs, return_dict=False)[0].requires_grad or True


def test_tuple_output_starts_with_loss():
    model = MiniVLMForImageTextRetrieval(tiny_fusion_config()).eval()
    out = model(**region_inputs(), **text_inputs(), labels=torch.tensor([1, 0]), return_dict=False)
    assert isinstance(out, tuple) and out[0].ndim == 0 and out[1].shape == (2, 2)


def test_captioning_decoder_is_tied_and_stays_tied_after_reload(tmp_path):
    model = MiniVLMForImageCaptioning(tiny_fusion_config())
    assert model.cls.predictions.decoder.weight is model.minivlm.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    reloaded = MiniVLMForImageCaptioning.from_pretrained(tmp_path)
    assert reloaded.cls.predictions.decoder.weight is reloaded.minivlm.embeddings.word_embeddings.weight


@pytest.mark.parametrize(
    "generate_kwargs",
    [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 5}],
    ids=["greedy", "beam", "sampling"],
)
def test_cached_and_uncached_decoding_give_the_same_tokens(generate_kwargs):
    torch.manual_seed(0)
    model = MiniVLMForImageCaptioning(tiny_fusion_config()).eval()
    inputs = {**region_inputs(), **tag_inputs()}
    torch.manual_seed(1)
    cached = model.generate(**inputs, max_new_tokens=9, use_cache=True, **generate_kwargs)
    torch.manual_seed(1)
    uncached = model.generate(**inputs, max_new_tokens=9, use_cache=False, **generate_kwargs)
    assert cached.shape[0] == 2 and cached.shape[1] > 1
    assert torch.equal(cached, uncached)
    assert bool((cached[:, 0] == 1).all())  # starts from [CLS]


def test_cache_encodes_the_prefix_once():
    """With a cache, only the first call sees the regions; later calls get one token each."""
    model = MiniVLMForImageCaptioning(tiny_fusion_config()).eval()
    seen = []
    original = model.minivlm.region_embeddings.forward

    def spy(features, boxes):
        seen.append(features.shape)
        return original(features, boxes)

    model.minivlm.region_embeddings.forward = spy
    lengths = []
    hook = model.minivlm.embeddings.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    model.generate(**region_inputs(), max_new_tokens=6, min_new_tokens=6, use_cache=True)
    hook.remove()
    assert len(seen) == 1
    # prefill: tags? none; caption [CLS] then the [MASK] query; each later step: one token + one [MASK]
    assert lengths[2:] == [1, 1] * 5


def test_generation_with_a_prompt_closed_by_sep_continues_the_prompt():
    model = MiniVLMForImageCaptioning(tiny_fusion_config()).eval()
    prompt = torch.tensor([[1, 40, 41, 2], [1, 40, 41, 2]])
    out = model.generate(input_ids=prompt, **region_inputs(), max_new_tokens=3)
    assert out[:, :3].tolist() == [[1, 40, 41]] * 2


def test_captioning_without_an_image_is_a_clear_error():
    model = MiniVLMForImageCaptioning(tiny_fusion_config()).eval()
    with pytest.raises(ValueError, match="needs an image"):
        model(input_ids=torch.tensor([[1, 5, 2]]))


def test_caption_longer_than_max_text_length_is_clamped_with_a_warning(caplog):
    model = MiniVLMForImageCaptioning(tiny_fusion_config()).eval()
    with caplog.at_level("WARNING"):
        out = model.generate(**region_inputs(), max_new_tokens=20, min_new_tokens=20)
    assert out.shape[1] == 12  # [CLS] + 11 tokens: every text position of max_text_length=12
    assert "at most 11 new tokens instead of 20" in caplog.text
    with pytest.raises(ValueError, match="prompt has 12 tokens; captions are limited to config.max_text_length=12"):
        model.generate(input_ids=torch.ones((1, 12), dtype=torch.long), **region_inputs(batch=1))


def _overfit(model, inputs, steps):
    """AdamW (lr 3e-3) on one fixed batch; the loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_vqa_loss_drops_when_overfitting():
    torch.manual_seed(0)
    model = MiniVLMForQuestionAnswering(tiny_fusion_config()).train()
    inputs = {**region_inputs(), **text_inputs(), "labels": torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])}
    losses = _overfit(model, inputs, 25)
    assert losses[-1] < 0.3 * losses[0]


def test_retrieval_rankings():
    torch.manual_seed(0)
    model = MiniVLMForImageTextRetrieval(tiny_fusion_config()).eval()
    regions = region_inputs(batch=3)
    texts = text_inputs(batch=4)
    one_image = {k: v[:1] for k, v in regions.items()}
    ranking = model.rank_texts(texts, one_image, batch_size=3)
    assert ranking.scores.shape == (4,) and sorted(ranking.ranking.tolist()) == [0, 1, 2, 3]
    # batched scores equal one-by-one scores
    singles = [model(**{k: v[i : i + 1] for k, v in texts.items()}, **one_image).logits.softmax(-1)[0, 1] for i in range(4)]
    torch.testing.assert_close(ranking.scores, torch.stack(singles).detach(), atol=1e-5, rtol=1e-5)
    assert ranking.scores[ranking.ranking[0]] == ranking.scores.max()
    by_image = model.rank_images({k: v[:1] for k, v in texts.items()}, regions, batch_size=2)
    assert by_image.scores.shape == (3,)
    with pytest.raises(ValueError, match="ONE image"):
        model.rank_texts(texts, regions)


def test_nlvr_requires_image_pairs():
    model = MiniVLMForVisualReasoning(tiny_fusion_config()).eval()
    with pytest.raises(ValueError, match="PAIR"):
        model(**text_inputs(), **region_inputs())


@pytest.mark.parametrize("case, loss_name, logits_name, shape", [
    (0, "masked_lm_loss", "prediction_logits", (2, 10, 120)), (1, "loss", "logits", (2, 7, 120))])
def test_sparse_decoder_in_training_gives_the_full_loss(case, loss_name, logits_name, shape):
    """Training mode runs the vocabulary decoder on masked positions only (pre-training and captioning); the loss
    equals the eval-mode loss computed from the full logits (dropout is 0 in the tiny config)."""
    head, inputs, _, _ = _head_cases()[case]
    torch.manual_seed(0)
    model = head(tiny_fusion_config())
    train_out = model.train()(**inputs)
    assert getattr(train_out, logits_name) is None
    eval_out = model.eval()(**inputs)
    assert getattr(eval_out, logits_name).shape == shape
    torch.testing.assert_close(getattr(train_out, loss_name), getattr(eval_out, loss_name))
    torch.testing.assert_close(train_out.loss, eval_out.loss)


def test_caption_log_likelihood_sums_the_generation_steps_log_probabilities():
    """`caption_log_likelihood`: the [MASK] query for position k+1 computes exactly what the generation step after
    k+1 tokens computes (same visibility and position), for every k in one pass; padding is not counted."""
    torch.manual_seed(0)
    model = MiniVLMForImageCaptioning(tiny_fusion_config()).eval()
    image = {**region_inputs(), **tag_inputs()}
    text = text_inputs()
    with torch.no_grad():
        scores = model.caption_log_likelihood(**text, **image)
        expected = torch.zeros(2)
        for k in range(6):  # predicting tokens 1 … 6 of a 7-token caption
            prefix = {n: t[:, : k + 1] for n, t in text.items()}
            step = model(**prefix, **image, predict_next=True, use_cache=False).logits[:, 0].log_softmax(-1)
            token = text["input_ids"][:, k + 1]
            expected += step[torch.arange(2), token] * text["attention_mask"][:, k + 1]
        # Extra padding columns change nothing.
        padded = {n: torch.nn.functional.pad(t, (0, 3)) for n, t in text.items()}
        padded_scores = model.caption_log_likelihood(**padded, **image)
    assert scores.shape == (2,)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_scores, scores)
