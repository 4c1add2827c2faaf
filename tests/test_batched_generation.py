"""Batched captioning equals one prompt at a time, whatever the prompts' lengths and the processor's padding side.

`generate` re-pads prompts on the left and counts positions over real tokens only; these tests compare a batch of
different-length prompts with each prompt alone: greedy and beam tokens, and for sampling every step's next-token
distribution (the random draws of a batch cannot match single runs, the distributions they draw from must).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from fusion_utils import region_inputs
from tee_utils import tiny_image_processor, tiny_tee_config

from minivlm_hf.convert import load_offline_tokenizer
from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor

PROMPTS = ["", "a red", "the big blue one"]


@pytest.fixture(scope="module")
def processor():
    return MiniVLMProcessor(tiny_image_processor(), load_offline_tokenizer(), max_text_length=16, max_tag_length=10)


@pytest.fixture(scope="module")
def captioner(processor):
    config = processor.prepare_config(MiniVLMConfig(
        vision_config=tiny_tee_config(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, region_feature_size=32, max_regions=10, tag_score_threshold=0.0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ))
    torch.manual_seed(0)
    return MiniVLMForImageCaptioning(config).eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 60, 3), dtype=np.uint8)) for i in range(len(PROMPTS))]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_tokens_equal_one_at_a_time(captioner, processor, images, padding_side, num_beams):
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=num_beams)
    batched = captioner.generate(**processor(images=images, text=PROMPTS, padding_side=padding_side), **kwargs)
    texts = processor.batch_decode(batched)
    for index, (image, prompt) in enumerate(zip(images, PROMPTS)):
        alone = captioner.generate(**processor(images=[image], text=[prompt]), **kwargs)
        assert processor.batch_decode(alone)[0] == texts[index]
        assert texts[index].startswith(prompt)


def test_batched_sampling_draws_from_the_single_prompt_distributions(captioner, processor, images):
    torch.manual_seed(3)
    out = captioner.generate(**processor(images=images, text=PROMPTS), max_new_tokens=5, do_sample=True, top_k=20,
                             output_logits=True, return_dict_in_generate=True)
    steps = len(out.logits)
    for index, (image, prompt) in enumerate(zip(images, PROMPTS)):
        single = processor(images=[image], text=[prompt])
        prompt_ids = single["input_ids"][:, :-1]  # without [SEP], as generate reopens the prompt
        sampled = out.sequences[index, -steps:]
        for step in range(steps):
            prefix = torch.cat([prompt_ids, sampled[None, :step]], dim=1)
            alone = captioner.generate(pixel_values=single["pixel_values"], pixel_mask=single["pixel_mask"],
                                       input_ids=prefix, max_new_tokens=1, do_sample=False, output_logits=True,
                                       return_dict_in_generate=True)
            torch.testing.assert_close(out.logits[step][index], alone.logits[0][0], atol=1e-4, rtol=1e-4)


def test_precomputed_regions_batch_like_single_rows(captioner):
    """The same with stored region features and a right-padded prompt batch built by hand."""
    regions = region_inputs(batch=2, regions=5, features=captioner.config.region_feature_size, seed=4)
    ids = torch.tensor([[101, 102, 0, 0], [101, 1037, 2417, 102]])
    mask = (ids != 0).long()
    batched = captioner.generate(input_ids=ids, attention_mask=mask, **regions, max_new_tokens=5, do_sample=False,
                                 tag_ids=torch.tensor([[102], [102]]))
    batched_prompt = 3  # the longest prompt without its [SEP], after re-padding
    for row in range(2):
        prompt = ids[row:row + 1, : int(mask[row].sum()) - 1]  # real tokens without [SEP]
        alone = captioner.generate(input_ids=prompt, tag_ids=torch.tensor([[102]]),
                                   **{k: v[row:row + 1] for k, v in regions.items()}, max_new_tokens=5, do_sample=False)
        new_alone = alone[0, prompt.shape[1]:]
        assert torch.equal(batched[row, batched_prompt:batched_prompt + len(new_alone)], new_alone)
        assert torch.equal(batched[row, batched_prompt - prompt.shape[1]:batched_prompt], prompt[0])
