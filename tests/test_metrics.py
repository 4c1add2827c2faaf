"""Metrics of minivlm_hf.metrics against values worked out by hand (arithmetic in the comments).

Also: every metric through `evaluate` (compute, add, add_batch), and loading the scripts with
evaluate.load in a subprocess with a fresh HF_HOME, HF_HUB_OFFLINE=1 and sockets disabled.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minivlm_hf import metrics as M

TOL = 1e-9  # pycocotools/pycocoevalcap add epsilons (np.spacing(1), 1e-9/1e-15), so "exact" means within 1e-9


@pytest.fixture(scope="module")
def loaded():
    """One evaluate module per metric, loaded from the files through load_metric (HF_HOME from conftest)."""
    return {name: M.load_metric(name, keep_in_memory=True) for name in M.METRIC_FILES}


# ----------------------------------------------------------------------------------------------- VQA


def test_vqa_leave_one_out_counts():
    # 10 human answers, k of them equal to the prediction. The 10 leave-one-out subsets:
    #   leaving out one of the k matching annotators (k subsets) leaves k-1 matches -> min((k-1)/3, 1)
    #   leaving out one of the 10-k others (10-k subsets) leaves k matches          -> min(k/3, 1)
    # k=0: 0
    # k=1: (1*0   + 9*(1/3)) / 10 = 3/10  = 0.3
    # k=2: (2*1/3 + 8*(2/3)) / 10 = (2/3 + 16/3)/10 = 6/10 = 0.6
    # k=3: (3*2/3 + 7*1)     / 10 = (2 + 7)/10 = 0.9      (3 matches is NOT yet 1.0)
    # k=4: (4*1   + 6*1)     / 10 = 1.0
    # k=10: 1.0
    expected = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 10: 1.0}
    for k, acc in expected.items():
        answers = ["dog"] * k + ["cat"] * (10 - k)
        assert M.vqa_question_accuracy("dog", answers) == pytest.approx(acc, abs=1e-12), k
    # corpus accuracy = mean over questions: (0.6 + 1.0 + 0.0) / 3 = 1.6/3
    out = M.compute_vqa_accuracy(
        ["dog", "dog", "dog"],
        [["dog"] * 2 + ["cat"] * 8, ["dog"] * 5 + ["cat"] * 5, ["cat"] * 10],
        return_per_question=True,
    )
    assert out["accuracy"] == pytest.approx(1.6 / 3)
    assert out["per_question"] == pytest.approx([0.6, 1.0, 0.0])


def test_vqa_normalisation():
    n = M.normalize_vqa_answer
    assert n("Two") == n("2") == "2"  # number word -> digit, lowercase
    assert n("a dog") == n("dog") == n("The dog") == "dog"  # articles dropped
    assert n("yes.") == n("yes") == n(" Yes ") == "yes"  # period (not a decimal point) removed, strip
    assert n("2.5") == "2.5"  # decimal point kept
    assert n("100,978") == "100978"  # comma between digits removed
    assert n("dont") == n("don't") == "don't"  # missing apostrophe restored
    assert n("its") == "its" and n("well") == "well"  # real words are not treated as contractions
    assert n("red, white") == "red white"  # other punctuation -> space, spaces collapsed
    assert n("10:30") == "10:30"  # colon kept
    assert n("none") == "0"
    # end to end: "Two" against 2x "2" + 8 others -> 0.6 as above; against 4x "two" -> 1.0
    assert M.vqa_question_accuracy("Two", ["2", "2"] + ["3"] * 8) == pytest.approx(0.6)
    assert M.vqa_question_accuracy("A dog.", ["dog", "the dog", "dog", "Dog"] + ["cat"] * 6) == pytest.approx(1.0)


def test_vqa_single_reference_is_exact_match_and_errors():
    assert M.vqa_question_accuracy("yes", ["Yes"]) == 1.0
    assert M.vqa_question_accuracy("no", ["yes"]) == 0.0
    with pytest.raises(ValueError):
        M.compute_vqa_accuracy(["a"], [])
    with pytest.raises(ValueError):
        M.vqa_question_accuracy("a", [])
    assert M.compute_vqa_accuracy([], []) == {"accuracy": 0.0}


def test_vqa_through_evaluate(loaded):
    m = loaded["vqa_accuracy"]
    refs = [["2"] * 2 + ["3"] * 8, ["yes"] * 10]
    assert m.compute(predictions=["Two", "yes."], references=refs) == {"accuracy": pytest.approx(0.8)}  # (0.6+1)/2
    m.add(prediction="Two", reference=refs[0])
    m.add_batch(predictions=["yes."], references=[refs[1]])
    out = m.compute(return_per_question=True)
    assert out["accuracy"] == pytest.approx(0.8) and out["per_question"] == pytest.approx([0.6, 1.0])


# ---------------------------------------------------------------------------------------- retrieval

# 4 images x 6 texts; texts 0,1 -> image 0; 2,3 -> image 1; 4 -> image 2; 5 -> image 3
SCORES = np.array(
    [
        # t0   t1   t2   t3   t4   t5
        [0.1, 0.9, 0.8, 0.2, 0.3, 0.0],  # img0
        [0.5, 0.4, 0.3, 0.2, 0.9, 0.1],  # img1
        [0.2, 0.1, 0.7, 0.6, 0.5, 0.4],  # img2
        [0.0, 0.3, 0.1, 0.4, 0.2, 0.9],  # img3
    ]
)
TEXT_TO_IMAGE = [0, 0, 1, 1, 2, 3]
# i2t (0-based rank = #foreign texts scoring >= the image's best own text):
#   img0: own t0 .1, t1 .9 -> best .9; foreign >= .9: none                 -> rank 0
#   img1: own t2 .3, t3 .2 -> best .3; foreign >= .3: t0 .5, t1 .4, t4 .9  -> rank 3
#   img2: own t4 .5;               foreign >= .5: t2 .7, t3 .6             -> rank 2
#   img3: own t5 .9;               none                                    -> rank 0
#   R@1 = 2/4, R@2 = 2/4, R@3 = 3/4, R@5 = R@10 = 4/4; medr = median(1,4,3,1) = 2
# t2i (0-based rank = #wrong images scoring >= the right one; column of the text):
#   t0 [.1 .5 .2 .0] gt img0 .1: .5, .2           -> 2
#   t1 [.9 .4 .1 .3] gt img0 .9                   -> 0
#   t2 [.8 .3 .7 .1] gt img1 .3: .8, .7           -> 2
#   t3 [.2 .2 .6 .4] gt img1 .2: .2 (tie), .6, .4 -> 3   (a tie counts against the model)
#   t4 [.3 .9 .5 .2] gt img2 .5: .9               -> 1
#   t5 [.0 .1 .4 .9] gt img3 .9                   -> 0
#   R@1 = 2/6, R@2 = 3/6, R@3 = 5/6, R@5 = R@10 = 6/6; medr = median(1,1,2,3,3,4) = 2.5
EXPECTED_DEFAULT = {
    "i2t_r1": 0.5, "i2t_r5": 1.0, "i2t_r10": 1.0,
    "t2i_r1": 2 / 6, "t2i_r5": 1.0, "t2i_r10": 1.0,
    "r_mean": (0.5 + 1 + 1 + 2 / 6 + 1 + 1) / 6,
    "i2t_medr": 2.0, "t2i_medr": 2.5,
}  # fmt: skip


def test_retrieval_hand_ranks():
    assert M.compute_retrieval_recall(SCORES, TEXT_TO_IMAGE) == pytest.approx(EXPECTED_DEFAULT)
    out = M.compute_retrieval_recall(SCORES, TEXT_TO_IMAGE, ks=(1, 2, 3))
    assert [out[f"i2t_r{k}"] for k in (1, 2, 3)] == pytest.approx([0.5, 0.5, 0.75])
    assert [out[f"t2i_r{k}"] for k in (1, 2, 3)] == pytest.approx([2 / 6, 3 / 6, 5 / 6])


def test_retrieval_identity_ties_and_image_without_text():
    # 3x3, diagonal best: every query ranks its match first
    out = M.compute_retrieval_recall(np.eye(3) + 0.1, [0, 1, 2])
    assert out["i2t_r1"] == out["t2i_r1"] == 1.0 and out["i2t_medr"] == out["t2i_medr"] == 1.0
    # constant scores: all ties count against the model -> rank 2 of 3 -> R@1 = 0, R@3 = 1
    out = M.compute_retrieval_recall(np.zeros((3, 3)), [0, 1, 2], ks=(1, 3))
    assert out["i2t_r1"] == out["t2i_r1"] == 0.0 and out["i2t_r3"] == out["t2i_r3"] == 1.0
    # image 2 has no text: skipped for i2t (2 images evaluated, both hit at 1)
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    out = M.compute_retrieval_recall(s, [0, 1], ks=(1,))
    assert out["i2t_r1"] == 1.0 and out["t2i_r1"] == 1.0
    with pytest.raises(ValueError):
        M.compute_retrieval_recall(s, [0, 1, 2])  # 3 labels for 2 texts
    with pytest.raises(ValueError):
        M.compute_retrieval_recall(s, [0, 3])  # image index out of range


def test_retrieval_through_evaluate(loaded):
    m = loaded["retrieval_recall"]
    # one example per text = its row of scores against all images = a column of SCORES
    assert m.compute(predictions=SCORES.T.tolist(), references=TEXT_TO_IMAGE) == pytest.approx(EXPECTED_DEFAULT)
    m.add_batch(predictions=SCORES.T[:4], references=TEXT_TO_IMAGE[:4])
    m.add_batch(predictions=SCORES.T[4:], references=TEXT_TO_IMAGE[4:])
    assert m.compute() == pytest.approx(EXPECTED_DEFAULT)


# --------------------------------------------------------------------------------------------- NLVR


def test_nlvr_accuracy_and_consistency(loaded):
    preds = [1, 0, 1, 1, 0, True]
    refs = [1, 0, 0, 1, 1, True]
    groups = ["a", "a", "b", "b", "c", "c"]
    # correct: T T F T F T -> accuracy 4/6; sentences: a all correct, b not, c not -> consistency 1/3
    out = M.compute_nlvr_accuracy(preds, refs, group_ids=groups)
    assert out == pytest.approx({"accuracy": 4 / 6, "consistency": 1 / 3})
    assert M.compute_nlvr_accuracy(["True", "false"], [1, 0]) == {"accuracy": 1.0}
    with pytest.raises(ValueError):
        M.compute_nlvr_accuracy([2], [1])
    m = loaded["nlvr_accuracy"]
    assert m.compute(predictions=preds, references=refs) == pytest.approx({"accuracy": 4 / 6})
    m.add_batch(predictions=preds[:3], references=refs[:3])
    m.add_batch(predictions=preds[3:], references=refs[3:])
    assert m.compute(group_ids=groups) == pytest.approx({"accuracy": 4 / 6, "consistency": 1 / 3})


# ---------------------------------------------------------------------------------------- detection


def _img(boxes, labels, scores=None):
    d = {"boxes": boxes, "labels": labels}
    if scores is not None:
        d["scores"] = scores
    return d


def test_detection_perfect():
    refs = [_img([[0, 0, 10, 10], [20, 20, 50, 40]], [1, 2]), _img([[5, 5, 15, 30]], [1])]
    preds = [_img(r["boxes"], r["labels"], [0.9] * len(r["labels"])) for r in refs]
    out = M.compute_detection_map(preds, refs)
    assert out["map"] == pytest.approx(1.0, abs=TOL) and out["map_50"] == pytest.approx(1.0, abs=TOL)
    assert out["per_class_ap50"] == pytest.approx({1: 1.0, 2: 1.0}, abs=TOL)


def test_detection_iou_06_passes_three_of_ten_thresholds():
    # GT [0,0,10,10] (area 100), prediction [0,0,10,6] (area 60, inside): IoU = 60 / 100 = 0.6.
    # Thresholds .50 .55 .60 .65 ... .95: IoU >= t for .50, .55, .60 (pycocotools' 0.60 is exactly 0.6).
    # At a passing threshold the single detection is a TP: precision 1 at recall 1, so all 101 recall
    # points have precision 1 -> AP = 1. At a failing one it is a FP: AP = 0.
    # AP@0.5 = 1; AP@[.5:.95] = (1+1+1+0*7)/10 = 0.3; AP@0.75 = 0.
    out = M.compute_detection_map([_img([[0, 0, 10, 6]], [3], [0.8])], [_img([[0, 0, 10, 10]], [3])])
    assert out["map_50"] == pytest.approx(1.0, abs=TOL)
    assert out["map"] == pytest.approx(0.3, abs=TOL)
    assert out["map_75"] == pytest.approx(0.0, abs=TOL)
    # same with references in COCO xywh: [0,0,10,10] is [0,0,10,10] too; shift the GT to check the conversion
    ref_xyxy = _img([[5, 5, 15, 15]], [3])
    ref_xywh = _img([[5, 5, 10, 10]], [3])
    pred = [_img([[5, 5, 15, 11]], [3], [0.8])]
    a = M.compute_detection_map(pred, [ref_xyxy])
    b = M.compute_detection_map(pred, [ref_xywh], reference_box_format="xywh")
    assert a == b and a["map"] == pytest.approx(0.3, abs=TOL)


def test_detection_false_positives():
    ref = [_img([[0, 0, 10, 10]], [1])]
    tp, fp = [0, 0, 10, 10], [50, 50, 60, 60]
    # FP scored below the TP: ranked list TP, FP -> precision 1/1 at recall 1; the interpolated precision
    # at every recall threshold (max precision at recall >= r) is 1 -> AP unchanged = 1.
    out = M.compute_detection_map([_img([tp, fp], [1, 1], [0.9, 0.5])], ref)
    assert out["map_50"] == pytest.approx(1.0, abs=TOL) and out["map"] == pytest.approx(1.0, abs=TOL)
    # FP scored above the TP: ranked list FP, TP -> recall 1 reached at precision 1/2 -> AP = 0.5
    out = M.compute_detection_map([_img([tp, fp], [1, 1], [0.5, 0.9])], ref)
    assert out["map_50"] == pytest.approx(0.5, abs=TOL)
    # a class with predictions but no ground truth anywhere is ignored (COCO): AP stays 1
    out = M.compute_detection_map([_img([tp, fp], [1, 7], [0.5, 0.9])], ref)
    assert out["map"] == pytest.approx(1.0, abs=TOL) and set(out["per_class_ap50"]) == {1}


def test_detection_empty_images():
    # image 1: perfect detection; image 2: a GT box and no prediction.
    # 2 GT, 1 TP at precision 1 -> recall 0.5. Recall thresholds 0, .01, ..., .50 (51 of 101) get
    # precision 1, the 50 above get 0 -> AP = 51/101 at every IoU threshold.
    refs = [_img([[0, 0, 10, 10]], [1]), _img([[0, 0, 10, 10]], [1])]
    preds = [_img([[0, 0, 10, 10]], [1], [0.9]), _img([], [], [])]
    out = M.compute_detection_map(preds, refs)
    assert out["map"] == pytest.approx(51 / 101, abs=TOL) and out["map_50"] == pytest.approx(51 / 101, abs=TOL)
    # image 2 without ground truth: its detection is a FP. Lower score than the TP -> AP 1; higher -> 0.5
    refs = [_img([[0, 0, 10, 10]], [1]), _img(np.zeros((0, 4)), [])]
    low = [_img([[0, 0, 10, 10]], [1], [0.9]), _img([[0, 0, 10, 10]], [1], [0.5])]
    high = [_img([[0, 0, 10, 10]], [1], [0.9]), _img([[0, 0, 10, 10]], [1], [0.95])]
    assert M.compute_detection_map(low, refs)["map"] == pytest.approx(1.0, abs=TOL)
    assert M.compute_detection_map(high, refs)["map"] == pytest.approx(0.5, abs=TOL)
    # no ground truth at all: undefined -> -1 (pycocotools' convention)
    out = M.compute_detection_map([_img([[0, 0, 1, 1]], [1], [0.9])], [_img([], [])])
    assert out == {"map": -1.0, "map_50": -1.0, "map_75": -1.0, "per_class_ap50": {}}


def test_detection_per_class_and_label_ids():
    # class 0: perfect (AP 1); class 9: detection with IoU 0.6 (AP@0.5 1, AP 0.3); class 4: missed (AP 0)
    refs = [_img([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0, 9, 4])]
    preds = [_img([[0, 0, 10, 10], [20, 0, 30, 6]], [0, 9], [0.9, 0.8])]
    out = M.compute_detection_map(preds, refs)
    assert out["per_class_ap50"] == pytest.approx({0: 1.0, 4: 0.0, 9: 1.0}, abs=TOL)
    # mAP@0.5 = (1 + 0 + 1)/3; mAP = mean over classes of AP@[.5:.95] = (1 + 0 + 0.3)/3
    assert out["map_50"] == pytest.approx(2 / 3, abs=TOL)
    assert out["map"] == pytest.approx(1.3 / 3, abs=TOL)


def test_detection_through_evaluate(loaded):
    m = loaded["detection_map"]
    refs = [_img([[0, 0, 10, 10]], [1]), _img([[0, 0, 10, 10]], [1]), _img(np.zeros((0, 4)), [])]
    preds = [
        _img(np.array([[0.0, 0, 10, 10]]), np.array([1]), np.array([0.9])),
        _img([], [], []),
        _img([[0, 0, 10, 10]], [1], [0.5]),
    ]
    expected = M.compute_detection_map(preds, refs)
    assert expected["map"] == pytest.approx(51 / 101, abs=TOL)  # as in test_detection_empty_images
    assert m.compute(predictions=preds, references=refs) == expected
    for p, r in zip(preds, refs):
        m.add_batch(predictions=[p], references=[r])
    assert m.compute() == expected
    assert m.compute(predictions=preds[:1], references=refs[:1], per_class=False) == pytest.approx(
        {"map": 1.0, "map_50": 1.0, "map_75": 1.0}, abs=TOL
    )


# ------------------------------------------------------------------------------------------ caption


def test_caption_tokenizer():
    t = M.tokenize_caption
    assert t("A man's T-shirt, isn't it?") == "a man 's t-shirt is n't it"
    assert t('He said "Hello!" at 3:30; 2.5 kg, 1,000 people.') == "he said hello at 3:30 2.5 kg 1,000 people"
    assert t("  A   DOG.  ") == "a dog"


def test_bleu_hand_values():
    # identical candidate: every n-gram precision 1, brevity penalty 1 -> BLEU-4 = 1
    out = M.compute_caption_metrics(["a man riding a horse"], [["a man riding a horse", "a person on a horse"]])
    assert out["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    # "the cat sat on the mat" vs "the cat sat on a mat" (6 words each, BP = 1):
    #   p1 = 5/6 (2nd "the" clipped), p2 = 3/5 (the cat, cat sat, sat on), p3 = 2/4, p4 = 1/3
    #   BLEU-4 = (5/6 * 3/5 * 2/4 * 1/3)^(1/4) = (1/12)^(1/4); BLEU-2 = (5/6 * 3/5)^(1/2) = 0.5^(1/2)
    out = M.compute_caption_metrics(["The cat sat on the mat."], [["the cat sat on a mat"]])
    assert out["bleu_1"] == pytest.approx(5 / 6, abs=1e-6)
    assert out["bleu_2"] == pytest.approx(0.5**0.5, abs=1e-6)
    assert out["bleu_4"] == pytest.approx((1 / 12) ** 0.25, abs=1e-6)
    # no 4-gram in common ("a man riding a" / "man riding a horse" vs "a man walking a dog"): BLEU-4 ~ 0,
    # while p1 = 3/5 (a, man, a)
    out = M.compute_caption_metrics(["a man riding a horse"], [["a man walking a dog"]])
    assert out["bleu_4"] < 1e-6 and out["bleu_1"] == pytest.approx(3 / 5, abs=1e-6)


def test_cider_d_hand_values():
    # 2 images, 1 reference each. idf(g) = log(#images) - log(df(g)) = log 2 - log df.
    # "a" is in both references: idf 0; every other n-gram is in one: idf L = log 2.
    # Candidate = reference: unigram vectors {a: 0, cat: L} vs same -> cosine 1; bigram {a cat: L} -> 1;
    # no 3-/4-grams -> 0. CIDEr-D = 10 * mean(1, 1, 0, 0) / 1 reference = 5.0 for each image.
    out = M.compute_caption_metrics(["a cat", "a dog"], [["a cat"], ["a dog"]])
    assert out["cider"] == pytest.approx(5.0, abs=1e-9)
    # the tokenizer is applied: case and punctuation do not matter
    out = M.compute_caption_metrics(["A cat.", "A DOG!"], [["a cat"], ['"A dog"']])
    assert out["cider"] == pytest.approx(5.0, abs=1e-9)
    # with tokenize=False "A cat." does not match "a cat" at all -> CIDEr-D of image 1 is 0 -> mean 2.5
    out = M.compute_caption_metrics(["A cat.", "a dog"], [["a cat"], ["a dog"]], tokenize=False)
    assert out["cider"] == pytest.approx(2.5, abs=1e-9)
    # Unrelated candidates: {a: 0, dog: L} vs {a: 0, cat: L} -> clipped dot product 0 -> CIDEr-D 0
    out = M.compute_caption_metrics(["a dog", "a cat"], [["a cat"], ["a dog"]])
    assert out["cider"] == pytest.approx(0.0, abs=1e-12)
    # Length penalty and partial overlap. Image A ref "a black cat sleeps", candidate "a black cat";
    # image B ref = candidate "a brown dog runs" (-> 10 * mean(1,1,1,1) = 10).
    # Image A, with L = log 2 for every n-gram except "a":
    #   n=1: cand {a:0, black:L, cat:L}, ref + {sleeps:L}: dot 2L^2 / (sqrt(2)L * sqrt(3)L) = 2/sqrt(6)
    #   n=2: cand {a black, black cat}, ref + {cat sleeps}: 2/sqrt(6)
    #   n=3: cand {a black cat}, ref + {black cat sleeps}: 1/sqrt(2)
    #   n=4: no candidate 4-gram: 0
    #   length difference 1 word -> Gaussian penalty exp(-1^2 / (2 * 6^2)) = exp(-1/72) on every n
    #   CIDEr-D(A) = 10 * exp(-1/72) * (2/sqrt(6) + 2/sqrt(6) + 1/sqrt(2) + 0) / 4
    cider_a = 10 * math.exp(-1 / 72) * (4 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    out = M.compute_caption_metrics(["a black cat", "a brown dog runs"], [["a black cat sleeps"], ["a brown dog runs"]])
    assert out["cider"] == pytest.approx((cider_a + 10.0) / 2, abs=1e-9)
    # a single image has idf 0 for everything (log 1 - log 1): CIDEr-D is 0 by construction
    assert M.compute_caption_metrics(["a cat"], [["a cat"]])["cider"] == 0.0


def test_caption_through_evaluate(loaded):
    m = loaded["caption"]
    preds, refs = ["a black cat", "a brown dog runs"], [["a black cat sleeps"], ["a brown dog runs"]]
    expected = M.compute_caption_metrics(preds, refs)
    assert m.compute(predictions=preds, references=refs) == pytest.approx(expected)
    m.add_batch(predictions=preds[:1], references=refs[:1])
    m.add(prediction=preds[1], reference=refs[1])
    assert m.compute() == pytest.approx(expected)  # idf over the whole set, not per batch


# ------------------------------------------------------------------------------------------ loading


def test_load_metric_names():
    assert M.metric_path("caption").name == "caption_metrics.py"
    for name in M.METRIC_FILES:
        assert M.metric_path(name).is_file()
    with pytest.raises(KeyError):
        M.metric_path("meteor")


_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys

    def _no_network(*args, **kwargs):
        raise OSError("network access attempted in the offline test")

    socket.socket.connect = _no_network
    socket.socket.connect_ex = _no_network
    socket.create_connection = _no_network

    import evaluate

    out = {}
    for name, path in json.loads(sys.argv[1]).items():
        m = evaluate.load(path)
        out[name] = [type(m).__name__, m.description.strip().splitlines()[0]]
    nlvr = evaluate.load(json.loads(sys.argv[1])["nlvr_accuracy"])
    out["nlvr_result"] = nlvr.compute(predictions=[1, 0], references=[1, 1])
    vqa = evaluate.load(json.loads(sys.argv[1])["vqa_accuracy"])
    out["vqa_result"] = vqa.compute(predictions=["Two"], references=[["2", "2"] + ["3"] * 8])
    print(json.dumps(out))
    """
)


def test_evaluate_load_offline_fresh_hf_home(tmp_path):
    """evaluate.load of the scripts, copied to a bare folder, in a fresh process without network."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    paths = {}
    for name, stem in M.METRIC_FILES.items():
        src = M.metric_path(name)
        shutil.copy(src, scripts / src.name)  # no sibling package: the scripts must be self-contained
        paths[name] = str(scripts / src.name)
    hf_home = tmp_path / "hf_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(
        {
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1",
            "HF_EVALUATE_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_ENDPOINT": "http://127.0.0.1:9",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, json.dumps(paths)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["detection_map"][0] == "DetectionMap"
    assert out["caption"][0] == "CaptionMetrics"
    assert out["vqa_accuracy"][0] == "VqaAccuracy"
    assert out["retrieval_recall"][0] == "RetrievalRecall"
    assert out["nlvr_accuracy"][0] == "NlvrAccuracy"
    assert out["nlvr_result"] == {"accuracy": 0.5}
    assert out["vqa_result"]["accuracy"] == pytest.approx(0.6)
    copied = hf_home / "modules" / "evaluate_modules" / "metrics"
    for stem in M.METRIC_FILES.values():
        assert list(copied.glob(f"{stem}/*/{stem}.py")), f"{stem} not copied into the fresh modules cache"


def test_retrieval_evaluation_averages_disjoint_groups_of_candidates(monkeypatch):
    """``num_groups``: R@k on consecutive groups of ``num_candidates`` images, averaged; too few images is an error."""
    import datasets
    import torch

    from minivlm_hf.training import evaluation as E

    examples = datasets.Dataset.from_dict({"image_index": list(range(9)),
                                           "captions": [[f"caption {i}", "other"] for i in range(9)]})
    seen = []

    def scores(model, collator, image_indices, captions, **kwargs):
        seen.append((image_indices, captions))
        n = len(image_indices)
        # group 0 ranks every image's own caption first, group 1 ranks it last
        return torch.eye(n) if image_indices[0] == 0 else 1 - torch.eye(n)

    monkeypatch.setattr(E, "retrieval_score_matrix", scores)
    metrics, details = E.evaluate_retrieval(None, None, examples, num_candidates=4, num_groups=2)
    assert seen == [([0, 1, 2, 3], [f"caption {i}" for i in range(4)]),
                    ([4, 5, 6, 7], [f"caption {i}" for i in range(4, 8)])]
    assert metrics["i2t_r1"] == pytest.approx(0.5) and metrics["t2i_r1"] == pytest.approx(0.5)
    assert metrics["num_candidates"] == 4 and metrics["num_groups"] == 2 and len(details["scores"]) == 2
    single, _ = E.evaluate_retrieval(None, None, examples, num_candidates=4)
    assert single["i2t_r1"] == 1.0 and "num_groups" not in single
    with pytest.raises(ValueError, match="needs 12 test images; the split has 9"):
        E.evaluate_retrieval(None, None, examples, num_candidates=4, num_groups=3)
