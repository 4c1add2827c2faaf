"""The generation contract (transformers' generation tests) for `MiniVLMForImageCaptioning` with a tiny TEE inside,
prompted through `MiniVLMProcessor`: batched = one at a time, cached = uncached, `max_new_tokens`, and the
`image-text-to-text` pipeline with a fresh model's generation defaults."""

import numpy as np
import pytest
import torch
from PIL import Image

from contract_testers import ProcessorTester
from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from tee_utils import tiny_tee_config

PROMPTS = ["", "a red"]
MODES = {
    "greedy": {"do_sample": False},
    "beam": {"do_sample": False, "num_beams": 2},
    # A batch shares one random stream, so rows can only match their single runs where the draw is certain: a
    # near-zero temperature puts it on the top token. What is tested is where each row continues its prompt.
    "sample": {"do_sample": True, "temperature": 1e-6, "top_k": 5},
}


@pytest.fixture(scope="module")
def captioner():
    processor = ProcessorTester().processor()
    config = MiniVLMConfig(
        vision_config=tiny_tee_config(),
        vocab_size=processor.tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        region_feature_size=32,
        max_regions=10,
        max_text_length=16,
        max_tag_length=10,
        tag_score_threshold=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    processor.prepare_config(config)
    torch.manual_seed(0)
    return MiniVLMForImageCaptioning(config).eval(), processor


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in PROMPTS]


def _generate(model, processor, images, prompts, seed=0, **kwargs):
    inputs = processor(images=images, text=prompts)
    torch.manual_seed(seed)
    return model.generate(**inputs, **kwargs), inputs


@pytest.mark.parametrize("mode", list(MODES))
def test_batched_generation_equals_one_at_a_time(captioner, images, mode):
    model, processor = captioner
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, **MODES[mode]}
    batched, _ = _generate(model, processor, images, PROMPTS, **settings)
    batched_text = processor.batch_decode(batched, skip_special_tokens=True)
    for row, prompt in enumerate(PROMPTS):
        alone, _ = _generate(model, processor, [images[row]], [prompt], **settings)
        assert processor.batch_decode(alone, skip_special_tokens=True)[0] == batched_text[row], (mode, prompt)


def test_sampling_with_a_seed_is_reproducible(captioner, images):
    model, processor = captioner
    settings = {"max_new_tokens": 6, "do_sample": True, "top_k": 50}
    first, _ = _generate(model, processor, images, ["a", "a"], seed=3, **settings)
    second, _ = _generate(model, processor, images, ["a", "a"], seed=3, **settings)
    assert torch.equal(first, second)


@pytest.mark.smoke
@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_cached_equals_uncached(captioner, images, mode):
    model, processor = captioner
    settings = {"max_new_tokens": 4, **MODES[mode]}
    cached, _ = _generate(model, processor, images, ["a red", "a red"], use_cache=True, **settings)
    uncached, _ = _generate(model, processor, images, ["a red", "a red"], use_cache=False, **settings)
    assert torch.equal(cached, uncached)


def test_max_new_tokens_is_respected(captioner, images):
    model, processor = captioner
    for new in (1, 4):
        out, inputs = _generate(model, processor, images, ["a", "a"], max_new_tokens=new)
        forced, _ = _generate(model, processor, images, ["a", "a"], max_new_tokens=new, min_new_tokens=new)
        prompt = inputs["input_ids"].shape[1]
        # generation starts after the prompt, whose closing [SEP] may be reopened
        assert forced.shape[1] - new in (prompt - 1, prompt)
        assert out.shape[1] <= forced.shape[1]


def test_fresh_model_generation_config_works_in_the_pipeline(captioner, images, tmp_path):
    from transformers import pipeline

    model, processor = captioner
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    captions = pipeline("image-text-to-text", model=str(tmp_path))(images=images[0], text="")
    assert isinstance(captions[0]["generated_text"], str)
