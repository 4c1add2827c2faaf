"""Retrieval ranked with a captioning model's likelihoods (``evaluation.caption_model``): the teacher-forced caption
log-likelihood equals step-by-step decoding, and the fused ranking is the retrieval margin + weight x PMI. Gallery
normalisation (``evaluation.retrieval_sinkhorn``) scales hub captions down."""

import numpy as np
import pytest
import torch
from fusion_utils import tiny_fusion_config

from minivlm_hf.convert import load_offline_tokenizer
from minivlm_hf.data import build_scenes
from minivlm_hf.metrics import compute_retrieval_recall
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForImageTextRetrieval
from minivlm_hf.training import evaluation as E
from minivlm_hf.training.collators import RetrievalScoringCollator
from minivlm_hf.training.features import RegionStore, caption_examples, oracle_features
from minivlm_hf.training.recipes import fusion_collator_settings

CAPTIONS = ["a red circle", "two blue squares left of a green ring", "there is an object", "a small yellow star"]


@pytest.fixture(scope="module")
def setup():
    tok = load_offline_tokenizer()
    scenes = build_scenes(4, 0, 0, seed=3)["train"]
    table = oracle_features(scenes, feature_size=24, num_regions=5)
    config = tiny_fusion_config(vocab_size=len(tok), cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                                mask_token_id=tok.mask_token_id, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, max_text_length=24,
                                max_tag_length=16, region_feature_size=24, id2label={0: "no", 1: "yes"})
    collator = RetrievalScoringCollator(tok, regions=RegionStore(table), **fusion_collator_settings(config))
    torch.manual_seed(0)
    return config, collator, table, MiniVLMForImageCaptioning(config).eval()


def test_caption_log_likelihood_equals_step_by_step_decoding(setup):
    config, collator, _, model = setup
    matrix = E.caption_log_likelihood_matrix(model, collator, [0, 2], CAPTIONS, batch_size=3, progress=False)
    assert matrix.shape == (2, 4)
    with torch.no_grad():
        for row, image in enumerate([0, 2]):
            for col, caption in enumerate(CAPTIONS):
                batch = collator([{"image_index": image, "caption": caption}])
                ids = batch.pop("input_ids")
                batch.pop("attention_mask"), batch.pop("token_type_ids", None)
                total = 0.0
                for k in range(1, ids.shape[1]):  # each word piece after [CLS], [SEP] included
                    logits = model(input_ids=ids[:, :k], predict_next=True, **batch).logits[0, -1]
                    total += float(logits.log_softmax(-1)[ids[0, k]])
                assert matrix[row, col].item() == pytest.approx(total, abs=1e-4)
    assert (matrix < 0).all()


def _retrieval_run(setup, seed: int, **kwargs):
    """A random retrieval model, ``evaluate_retrieval`` over the 4 images with the captioner, and the pairs' inputs."""
    config, collator, table, captioner = setup
    torch.manual_seed(seed)
    retrieval = MiniVLMForImageTextRetrieval(config).eval()
    examples = caption_examples(table, per_caption=False)
    metrics, _ = E.evaluate_retrieval(retrieval, collator, examples, num_candidates=4, progress=False,
                                      caption_model=captioner, **kwargs)
    images = [int(r["image_index"]) for r in examples]
    captions = [r["captions"][0] for r in examples]
    return retrieval, metrics, examples, images, captions


def test_caption_pmi_ranking_is_margin_plus_weighted_pmi(setup):
    _, collator, _, captioner = setup
    retrieval, metrics, examples, images, captions = _retrieval_run(setup, 1, caption_pmi_weight=2.0)
    margins = E.retrieval_score_matrix(retrieval, collator, images, captions, progress=False, margins=True)
    probabilities = E.retrieval_score_matrix(retrieval, collator, images, captions, progress=False)
    torch.testing.assert_close(margins.sigmoid(), probabilities, atol=1e-5, rtol=1e-5)  # same ranking
    likelihoods = E.caption_log_likelihood_matrix(captioner, collator, images, captions, progress=False).double()
    pmi = E.caption_pmi(likelihoods)
    by_hand = likelihoods - torch.log(likelihoods.exp().mean(0, keepdim=True))
    torch.testing.assert_close(pmi, by_hand)
    expected = compute_retrieval_recall((margins.double() + 2.0 * pmi).numpy(), list(range(4)))
    for key in ("i2t_r1", "i2t_r5", "t2i_r1"):
        assert metrics[f"caption_pmi_{key}"] == pytest.approx(expected[key])
    assert metrics["i2t_r1"] == pytest.approx(compute_retrieval_recall(probabilities.numpy(), list(range(4)))["i2t_r1"])
    assert metrics["caption_pmi_weight"] == 2.0
    plain, _ = E.evaluate_retrieval(retrieval, collator, examples, num_candidates=4, progress=False)
    assert not any(k.startswith("caption_pmi") for k in plain)
    assert np.isfinite(list(plain.values())).all()


def test_sinkhorn_normalization_demotes_a_hub_caption_and_balances_the_gallery():
    # Caption 0 scores 3 with every image (a hub); captions 1 and 2 score 2.5 with their own image only.
    margins = torch.tensor([[3.0, 0.0, 0.0], [3.0, 2.5, 0.0], [3.0, 0.0, 2.5]])
    plain = compute_retrieval_recall(margins.numpy(), [0, 1, 2])
    normalized = E.sinkhorn_normalize(margins)
    assert plain["i2t_r1"] == pytest.approx(1 / 3)  # the hub wins images 1 and 2
    assert compute_retrieval_recall(normalized.numpy(), [0, 1, 2])["i2t_r1"] == 1.0
    assert normalized.argmax(1).tolist() == [0, 1, 2] and normalized.argmax(0).tolist() == [0, 1, 2]
    probabilities = normalized.exp()
    torch.testing.assert_close(probabilities.sum(0), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    # Every row / column shift of the input gives the same result: only relative scores matter.
    shifted = margins + torch.tensor([[1.0], [-2.0], [0.5]]) + torch.tensor([[0.3, -1.0, 4.0]])
    torch.testing.assert_close(E.sinkhorn_normalize(shifted), normalized, atol=1e-6, rtol=0)
    # Two images, four texts: each text's column sums to 1, each image's row to 2.
    wide = E.sinkhorn_normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), iterations=200).exp()
    torch.testing.assert_close(wide.sum(0), torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(wide.sum(1), torch.full((2,), 2.0, dtype=torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\[num_images, num_texts\] matrix, got shape \(3,\)"):
        E.sinkhorn_normalize(torch.zeros(3))


def test_evaluate_retrieval_reports_the_gallery_normalized_ranking(setup):
    _, collator, _, captioner = setup
    retrieval, metrics, _, images, captions = _retrieval_run(setup, 2, caption_pmi_weight=0.5, sinkhorn=True)
    margins = E.retrieval_score_matrix(retrieval, collator, images, captions, progress=False, margins=True).double()
    likelihoods = E.caption_log_likelihood_matrix(captioner, collator, images, captions, progress=False).double()
    expected = compute_retrieval_recall(E.sinkhorn_normalize(margins).numpy(), list(range(4)))
    fused = compute_retrieval_recall(E.sinkhorn_normalize(margins + 0.5 * E.caption_pmi(likelihoods)).numpy(),
                                     list(range(4)))
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_medr"):
        assert metrics[f"sinkhorn_{key}"] == pytest.approx(expected[key])
        assert metrics[f"caption_pmi_sinkhorn_{key}"] == pytest.approx(fused[key])
