"""Collators of every training stage: shapes, masking rates, pollution / negatives consistent with the swaps."""

import pytest
import torch

from minivlm_hf.convert import load_offline_tokenizer
from minivlm_hf.data import build_nlvr, build_scenes
from minivlm_hf.data.vocab import build_answer_vocab
from minivlm_hf.training.collators import (
    CaptioningCollator,
    DetectionCollator,
    NLVRCollator,
    PreTrainingCollator,
    RetrievalCollator,
    VQACollator,
    mask_tokens,
)
from minivlm_hf.training.features import (
    RegionStore,
    caption_examples,
    load_feature_table,
    nlvr_images,
    oracle_features,
    pretraining_examples,
    vqa_examples,
)


@pytest.fixture(scope="module")
def tok():
    return load_offline_tokenizer()


@pytest.fixture(scope="module")
def scenes():
    return build_scenes(40, 0, 0, seed=3)["train"]


@pytest.fixture(scope="module")
def table(scenes):
    return oracle_features(scenes, feature_size=24, num_regions=8)


@pytest.fixture(scope="module")
def store(table):
    return RegionStore(table)


def _rows(dataset, start, count):
    return [dataset[i] for i in range(start, start + count)]


def _unmask(ids, labels):
    return torch.where(labels != -100, labels, ids)


def test_mask_tokens_rates():
    g = torch.Generator().manual_seed(0)
    ids = torch.full((400, 50), 5000)
    eligible = torch.ones_like(ids, dtype=torch.bool)
    eligible[:, :2] = False
    masked, labels = mask_tokens(ids, eligible, g, mask_token_id=103, probability=0.15)
    selected = labels != -100
    assert not selected[:, :2].any()
    assert abs(selected[:, 2:].float().mean().item() - 0.15) < 0.01
    n = selected.sum().item()
    assert abs((masked[selected] == 103).sum().item() / n - 0.8) < 0.03
    assert abs((masked[selected] == 5000).sum().item() / n - 0.1) < 0.03  # unchanged (random hits 5000 rarely)
    assert (masked[~selected] == 5000).all()
    assert (labels[selected] == 5000).all()


def test_pretraining_masking_and_pollution(tok, table, store):
    examples = caption_examples(table)
    collator = PreTrainingCollator(tok, regions=store, max_text_length=24, max_tag_length=12, seed=1)
    counts = {0: 0, 1: 0, 2: 0}
    text_sel = text_tot = tag_sel = tag_tot = mask_hits = 0
    for start in range(0, 190, 10):
        rows = _rows(examples, start, 10)
        batch = collator(rows)
        B = len(rows)
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
        assert batch["tag_ids"].shape == batch["tag_labels"].shape
        assert batch["region_features"].shape == (B, 8, 24)
        assert batch["contrastive_labels"].shape == (B,)
        text = _unmask(batch["input_ids"], batch["labels"])
        tags = _unmask(batch["tag_ids"], batch["tag_labels"])
        own_text = collator.encode_text([r["caption"] for r in rows])[0]
        own_tags = collator.encode_tags([store.tags[r["image_index"]] for r in rows])["tag_ids"]
        swaps = {i: (kind, j) for i, kind, j in collator.last_swaps}
        for i in range(B):
            label = int(batch["contrastive_labels"][i])
            counts[label] += 1
            n_text, n_tag = int(batch["attention_mask"][i].sum()), int(batch["tag_attention_mask"][i].sum())
            got_text, got_tags = text[i, :n_text].tolist(), tags[i, :n_tag].tolist()
            own_t = own_text[i][own_text[i] != 0].tolist()
            own_g = own_tags[i][own_tags[i] != 0].tolist()
            if label == 0:
                assert i not in swaps and got_text == own_t and got_tags == own_g
            elif label == 1:  # tags polluted: another image's tags, own caption
                kind, j = swaps[i]
                assert kind == "tags" and rows[j]["image_index"] != rows[i]["image_index"]
                assert got_text == own_t and got_tags != own_g
                assert got_tags == own_tags[j][own_tags[j] != 0].tolist()
            else:  # caption polluted: another image's caption, own tags
                kind, j = swaps[i]
                assert kind == "caption" and got_tags == own_g and got_text != own_t
                assert got_text == own_text[j][own_text[j] != 0].tolist()
            # specials never selected
            assert batch["labels"][i, 0] == -100 and batch["labels"][i, n_text - 1] == -100
            assert batch["tag_labels"][i, n_tag - 1] == -100
            text_tot += n_text - 2
            tag_tot += n_tag - 1
        selected = batch["labels"] != -100
        text_sel += int(selected.sum())
        tag_sel += int((batch["tag_labels"] != -100).sum())
        mask_hits += int((batch["input_ids"][selected] == tok.mask_token_id).sum())
    total = sum(counts.values())
    assert abs(counts[2] / total - 0.25) < 0.08, counts
    assert abs(counts[1] / total - 0.25) < 0.08, counts
    assert abs(text_sel / text_tot - 0.15) < 0.04
    assert abs(tag_sel / tag_tot - 0.15) < 0.06
    assert abs(mask_hits / text_sel - 0.8) < 0.1


def test_pretraining_corpus_holds_captions_and_question_answer_pairs(tok, table, store):
    """OSCAR+ / VinVL corpus: every caption and every question with its most common answer; a polluted caption is
    replaced by text of the same source, so a swap cannot be told by its form."""
    corpus = pretraining_examples(table)
    captions, qa = caption_examples(table), vqa_examples(table)
    assert len(corpus) == len(captions) + len(qa)
    assert corpus["source"].count("qa") == len(qa)
    row = corpus[len(captions)]
    first = qa[0]
    assert row["source"] == "qa" and row["image_index"] == first["image_index"]
    majority = max(set(first["answers"]), key=first["answers"].count)
    assert row["caption"] == f"{first['question']} {majority}"
    # a batch mixing both sources: every caption swap keeps the source
    rows = [corpus[i] for i in range(0, 40)] + [corpus[len(captions) + i] for i in range(40)]
    collator = PreTrainingCollator(tok, regions=store, seed=5)
    collator(rows)
    swaps = [(i, j) for i, kind, j in collator.last_swaps if kind == "caption"]
    assert len(swaps) > 5
    assert all(rows[i]["source"] == rows[j]["source"] for i, j in swaps)


def test_pretraining_without_masked_labels_on_polluted_pairs(tok, table, store):
    """mask_polluted=False: the same batch (same draws), but polluted rows carry no masked-token labels."""
    rows = _rows(caption_examples(table), 0, 24)
    full = PreTrainingCollator(tok, regions=store, seed=3)(rows)
    clean = PreTrainingCollator(tok, regions=store, seed=3, mask_polluted=False)(rows)
    polluted = full["contrastive_labels"] != 0
    assert 0 < int(polluted.sum()) < len(rows)
    assert torch.equal(full["input_ids"], clean["input_ids"]) and torch.equal(full["tag_ids"], clean["tag_ids"])
    for key in ("labels", "tag_labels"):
        assert (clean[key][polluted] == -100).all()
        assert torch.equal(clean[key][~polluted], full[key][~polluted])
    assert (full["labels"][polluted] != -100).any()


def test_pretraining_determinism(tok, table, store):
    examples = caption_examples(table)
    rows = _rows(examples, 0, 12)
    a = PreTrainingCollator(tok, regions=store, seed=5)
    b = PreTrainingCollator(tok, regions=store, seed=5)
    first, second = a(rows), b(rows)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(first[k], a(rows)[k]) for k in first)  # same rows, same epoch → same batch
    a.epoch = 1
    assert not torch.equal(first["labels"], a(rows)["labels"])
    c = PreTrainingCollator(tok, regions=store, seed=6)
    assert not torch.equal(first["labels"], c(rows)["labels"])
    explicit = PreTrainingCollator(tok, regions=store, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(explicit(rows)["labels"], explicit(rows)["labels"])


def test_captioning_collator(tok, table, store):
    examples = caption_examples(table)
    collator = CaptioningCollator(tok, regions=store, max_text_length=24, max_tag_length=12, seed=0)
    rows = _rows(examples, 0, 32)
    batch = collator(rows)
    original = collator.encode_text([r["caption"] for r in rows])[0]  # padded to the longest caption only
    width = original.shape[1]
    assert width < 24 and batch["input_ids"].shape == batch["labels"].shape == (32, width)
    for i in range(32):
        length = int(batch["attention_mask"][i].sum())
        selected = (batch["labels"][i] != -100).nonzero().flatten().tolist()
        expected = min(max(1, round(0.15 * (length - 1))), 3)
        assert len(selected) == expected
        assert all(1 <= p < length for p in selected)  # never [CLS] or padding; [SEP] may be selected
        assert batch["labels"][i, selected].tolist() == original[i, selected].tolist()
        unselected = [p for p in range(width) if p not in selected]
        assert batch["input_ids"][i, unselected].tolist() == original[i, unselected].tolist()
    generation = CaptioningCollator(tok, regions=store, for_generation=True, return_image_index=True)(rows[:3])
    assert "input_ids" not in generation and generation["image_index"].tolist() == [r["image_index"] for r in rows[:3]]
    assert generation["tag_ids"].shape[0] == 3


def test_vqa_collator_soft_scores(tok, table, store):
    answer2id = build_answer_vocab()
    collator = VQACollator(tok, regions=store, answer2id=answer2id)
    examples = vqa_examples(table)
    rows = _rows(examples, 0, 8)
    rows[0] = {**rows[0], "answers": ["medium"] + ["small"] * 9}
    rows[1] = {**rows[1], "answers": ["red", "red", "blue"] + ["green"] * 7}
    batch = collator(rows)
    assert batch["labels"].shape == (8, len(answer2id))
    assert batch["labels"][0, answer2id["small"]] == 1.0
    assert batch["labels"][0, answer2id["medium"]] == pytest.approx(1 / 3)
    assert batch["labels"][1, answer2id["red"]] == pytest.approx(2 / 3)
    assert batch["labels"][1, answer2id["green"]] == 1.0
    assert batch["input_ids"][:, 0].eq(tok.cls_token_id).all()
    assert batch["region_features"].shape == (8, 8, 24)
    assert batch["labels"].sum(1).ge(1.0).all()  # the true answer always has >= 3 votes


def test_retrieval_negatives(tok, table, store):
    examples = caption_examples(table)
    rows = [examples[i] for i in range(0, 200, 5)][:16]
    collator = RetrievalCollator(tok, regions=store, seed=2)
    batch = collator(rows)
    assert batch["input_ids"].shape[0] == 32 and batch["labels"].tolist() == [1, 0] * 16
    texts = collator.encode_text([r["caption"] for r in rows])[0]
    kinds = set()
    for i, kind, j in collator.last_swaps:
        pos, neg = 2 * i, 2 * i + 1
        assert torch.equal(batch["region_features"][pos], store.region_features[rows[i]["image_index"]].float())
        width = texts.shape[1]
        if kind == "caption":  # same image, another image's caption
            assert torch.equal(batch["region_features"][neg], batch["region_features"][pos])
            assert batch["input_ids"][neg, :width].tolist() == texts[j].tolist()
        else:  # same caption, another image
            assert torch.equal(batch["region_features"][neg], store.region_features[rows[j]["image_index"]].float())
            assert torch.equal(batch["input_ids"][neg], batch["input_ids"][pos])
        assert rows[j]["image_index"] != rows[i]["image_index"]
        kinds.add(kind)
    assert kinds == {"caption", "image"}


def test_hard_retrieval_negatives_take_the_most_similar_caption(tok, table, store):
    examples = caption_examples(table)
    rows = [examples[i] for i in range(0, 200, 5)][:16]
    collator = RetrievalCollator(tok, regions=store, seed=2, hard_negatives=1.0)
    collator(rows)
    words = [set(r["caption"].split()) for r in rows]

    def jaccard(a, b):
        return len(words[a] & words[b]) / len(words[a] | words[b])

    for i, _kind, j in collator.last_swaps:
        donors = [k for k in range(len(rows)) if rows[k]["image_index"] != rows[i]["image_index"]
                  and rows[k]["caption"] != rows[i]["caption"]]
        assert j in donors and jaccard(i, j) == max(jaccard(i, k) for k in donors)
    # Random donors are less similar on average than the hardest ones.
    easy = RetrievalCollator(tok, regions=store, seed=2)
    easy(rows)
    mean = lambda swaps: sum(jaccard(i, j) for i, _, j in swaps) / len(swaps)  # noqa: E731
    assert mean(collator.last_swaps) > mean(easy.last_swaps) + 0.1
    with pytest.raises(ValueError, match="hard_negatives"):
        RetrievalCollator(tok, hard_negatives=1.5)


def test_nlvr_collator_pairs(tok):
    nlvr = build_nlvr(6, 0, 0, seed=1)["train"]
    images, statements = nlvr_images(nlvr)
    assert len(images) == 12 and len(statements) == 12
    store = RegionStore(oracle_features(images, feature_size=24, num_regions=8))
    rows = [statements[i] for i in range(5)]
    batch = NLVRCollator(tok, regions=store)(rows)
    assert batch["input_ids"].shape[0] == 5
    assert batch["region_features"].shape == (5, 2, 8, 24)
    assert batch["region_boxes"].shape == (5, 2, 8, 4)
    assert batch["region_mask"].shape == (5, 2, 8)
    assert batch["tag_ids"].shape[:2] == (5, 2) and batch["tag_attention_mask"].shape == batch["tag_ids"].shape
    assert batch["labels"].tolist() == [int(r["label"]) for r in rows]
    for b, row in enumerate(rows):
        assert torch.equal(batch["region_features"][b, 0], store.region_features[row["left_index"]])
        assert torch.equal(batch["region_features"][b, 1], store.region_features[row["right_index"]])
        assert images[row["left_index"]]["image_id"] == f"{row['pair_id']}_left"


def test_nlvr_collator_gt_tags_come_from_each_side_of_the_pair(tok):
    from minivlm_hf.data.vocab import OBJECT_ID2LABEL
    from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor

    nlvr = build_nlvr(4, 0, 0, seed=2)["train"]
    images, statements = nlvr_images(nlvr)
    store = RegionStore(oracle_features(images, feature_size=24, num_regions=8))
    rows = [{**statements[i], "left_objects": nlvr[i]["left_objects"], "right_objects": nlvr[i]["right_objects"],
             "left_image": nlvr[i]["left_image"], "right_image": nlvr[i]["right_image"]} for i in range(3)]

    def expected(objects):
        names = [OBJECT_ID2LABEL[int(c)] for c in objects["category_id"]]
        return " ".join(dict.fromkeys(names))

    processor = MiniVLMImageProcessor(size={"longest_edge": 96})
    for collator in (NLVRCollator(tok, regions=store, tag_source="gt"),
                     NLVRCollator(tok, image_processor=processor, tag_source="gt")):
        batch = collator([{k: v for k, v in r.items() if collator.regions is not None or "index" not in k}
                          for r in rows])
        for b, row in enumerate(rows):
            for s, side in enumerate(("left", "right")):
                ids = batch["tag_ids"][b, s][batch["tag_attention_mask"][b, s].bool()].tolist()
                assert tok.decode(ids, skip_special_tokens=True) == expected(row[f"{side}_objects"])
    with pytest.raises(ValueError, match="'left_objects'"):
        NLVRCollator(tok, regions=store, tag_source="gt")([statements[0]])


def test_detection_collator_and_flip(scenes):
    from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor

    processor = MiniVLMImageProcessor(size={"longest_edge": 128})
    rows = _rows(scenes, 0, 3)
    plain = DetectionCollator(processor)(rows)
    flipped = DetectionCollator(processor, hflip_probability=1.0)(rows)
    assert plain["pixel_values"].shape[:2] == (3, 3) and plain["pixel_mask"].shape[0] == 3
    for row, a, b in zip(rows, plain["labels"], flipped["labels"]):
        n = len(row["objects"]["category_id"])
        assert a["class_labels"].tolist() == row["objects"]["category_id"]
        assert a["boxes"].shape == (n, 4) and a["attribute_labels"].shape == (n, 2)
        assert torch.allclose(b["boxes"][:, 0], 1 - a["boxes"][:, 0], atol=1e-2)
        assert torch.allclose(b["boxes"][:, 1:], a["boxes"][:, 1:], atol=1e-5)


def test_pixel_rows_and_errors(tok, scenes):
    from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor

    processor = MiniVLMImageProcessor(size={"longest_edge": 128})
    batch = CaptioningCollator(tok, image_processor=processor, tag_source="gt")(_rows(scenes, 0, 2))
    assert batch["pixel_values"].shape[:2] == (2, 3) and "tag_ids" in batch and batch["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="no image input"):
        VQACollator(tok, answer2id={"yes": 0})([{"question": "is it?", "answers": ["yes"]}])
    with pytest.raises(ValueError, match="at least 2 rows"):
        RetrievalCollator(tok)([{"caption": "x"}])


def test_feature_table_errors(tmp_path, table):
    with pytest.raises(FileNotFoundError, match="missing_table"):
        load_feature_table(tmp_path / "missing_table")
    bad = tmp_path / "corrupt_table"
    table.save_to_disk(str(bad))
    for arrow in bad.glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    with pytest.raises(ValueError, match="corrupt_table"):
        load_feature_table(bad)
