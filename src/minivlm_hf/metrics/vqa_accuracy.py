# Copyright (c) minivlm-hf contributors. MIT license.
"""VQA v2 accuracy as an `evaluate` metric (plus the plain function it calls).

The rule (Antol et al. 2015; Goyal et al. 2017, https://visualqa.org/evaluation.html): a question has 10
human answers. The accuracy of a predicted answer is the average, over the 10 subsets that leave one
annotator out, of ``min(#annotators in the subset who gave the predicted answer / 3, 1)``. Hence with
10 answers: 0 matches -> 0.0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.

Before comparing, predictions and human answers are normalised the way the description on the
VQA evaluation page says (this is an independent implementation of that description, not the
official ``vqaEval.py``):

1. lowercase; newlines/tabs become spaces; strip;
2. a comma between two digits is removed ("100,978" -> "100978");
3. punctuation is replaced by a space, except the apostrophe and the colon; the characters treated
   as punctuation are ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` (the set the reference evaluator
   uses: symbols that carry meaning in answers such as ``% $ # & *`` are kept);
4. a period is removed unless it is a decimal point (i.e. followed by a digit: "2.5", ".5" survive);
5. per word: number words "none"/"zero" ... "ten" become digits, the articles "a", "an", "the" are
   dropped, and common contractions written without their apostrophe get it back ("dont" -> "don't");
   words that are also ordinary English words ("its", "ill", "well", "were", "shed", "id", "lets", ...)
   are left alone;
6. words are joined with single spaces.

Both the prediction and every human answer are always normalised. The reference script (``vqaEval.py``)
normalises the human answers only when they are not all identical, and in its common version only
their punctuation; since the released VQA v2 answers are already in normalised form this should not
change scores, but this implementation has not been compared against that script on real data.

Output: ``{"accuracy": float}`` in [0, 1] (papers report it x100). With ``return_per_question=True`` the
list of per-question accuracies is added under ``"per_question"``.
"""

import re
from typing import Dict, List, Sequence

import datasets
import evaluate

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Contractions written without (some of) their apostrophes -> the spelling with apostrophes.
_CONTRACTION_STEMS = [
    "ain't", "aren't", "can't", "couldn't", "could've", "couldn't've", "didn't", "doesn't", "don't",
    "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's",
    "i'd've", "i'm", "i've", "isn't", "it'd", "it'd've", "it'll", "let's", "ma'am", "mightn't",
    "mightn't've", "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't",
    "shan't", "she'd've", "she'll", "she's", "should've", "shouldn't", "shouldn't've", "somebody'd",
    "somebody'll", "somebody's", "someone'd", "someone'll", "someone's", "something'd",
    "something'll", "something's", "that's", "there'd", "there're", "there's", "they'd", "they'd've",
    "they'll", "they're", "they've", "wasn't", "we'd've", "we're", "we've", "weren't",
    "what'll", "what're", "what's", "what've", "when's", "where'd", "where's", "where've", "who'd",
    "who'd've", "who'll", "who's", "who've", "why'll", "why're", "why's", "won't", "would've",
    "wouldn't", "wouldn't've", "y'all", "y'all'd've", "you'd", "you'd've", "you'll", "you're",
    "you've",
]
# Spellings that are ordinary words themselves and must not be rewritten.
_AMBIGUOUS = frozenset({"its", "ill", "well", "were", "shed", "shell", "hell", "wed", "id", "lets"})


def _build_contraction_map() -> Dict[str, str]:
    out: Dict[str, str] = {}
    for full in _CONTRACTION_STEMS:
        parts = full.split("'")
        if len(parts) == 1:
            continue
        # every way of dropping a subset of the apostrophes (at least one) maps back to the full form
        n_gaps = len(parts) - 1
        for mask in range(2**n_gaps - 1):  # mask of apostrophes kept; all-kept excluded
            s = parts[0]
            for g in range(n_gaps):
                s += ("'" if (mask >> g) & 1 else "") + parts[g + 1]
            if s not in _AMBIGUOUS:
                out[s] = full
    return out


_CONTRACTIONS = _build_contraction_map()

_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_PUNCT_RE = re.compile("[" + re.escape(_PUNCTUATION) + "]")
_DIGIT_COMMA_RE = re.compile(r"(?<=\d),(?=\d)")
_NON_DECIMAL_PERIOD_RE = re.compile(r"\.(?!\d)")


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer string following the VQA evaluation rules (see module docstring)."""
    s = str(answer).lower().replace("\n", " ").replace("\t", " ").strip()
    s = _DIGIT_COMMA_RE.sub("", s)
    s = _PUNCT_RE.sub(" ", s)
    s = _NON_DECIMAL_PERIOD_RE.sub("", s)
    words = []
    for w in s.split():
        w = _NUMBER_WORDS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one predicted answer against its human answers (normally 10).

    Average over the leave-one-annotator-out subsets of ``min(matches_in_subset / 3, 1)``. With a single
    human answer there is no subset to average over, and the result is plain exact match (0 or 1).
    """
    if len(answers) == 0:
        raise ValueError("each question needs at least one reference answer")
    pred = normalize_vqa_answer(prediction)
    hits = [normalize_vqa_answer(a) == pred for a in answers]
    n_match = sum(hits)
    if len(hits) == 1:
        return float(n_match)
    return sum(min(1.0, (n_match - int(h)) / 3.0) for h in hits) / len(hits)


def compute_vqa_accuracy(
    predictions: Sequence[str], references: Sequence[Sequence[str]], return_per_question: bool = False
) -> Dict[str, object]:
    """VQA v2 accuracy in [0, 1].

    Args:
        predictions: one answer string per question.
        references: the human answers of each question (10 in VQA v2).
        return_per_question: also return the list of per-question accuracies under "per_question".

    Returns:
        {"accuracy": mean accuracy over questions} (0.0 for an empty input), plus "per_question".
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    per_q: List[float] = [vqa_question_accuracy(p, r) for p, r in zip(predictions, references)]
    out: Dict[str, object] = {"accuracy": float(sum(per_q) / len(per_q)) if per_q else 0.0}
    if return_per_question:
        out["per_question"] = per_q
    return out


_CITATION = """\
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): one predicted answer per question.
    references (list of list of str): the human answers of each question (10 in VQA v2).
    return_per_question (bool, compute() keyword, default False): add "per_question".
Returns:
    accuracy (float in [0, 1]): mean VQA accuracy; per_question (list of float) on request.
Example:
    >>> m = evaluate.load("/path/to/vqa_accuracy.py")
    >>> m.compute(predictions=["two"], references=[["2"] * 4 + ["3"] * 6])
    {'accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    """VQA v2 accuracy (leave-one-annotator-out average of min(matches/3, 1))."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
            ),
            reference_urls=["https://visualqa.org/evaluation.html"],
        )

    def _compute(self, predictions, references, return_per_question: bool = False):
        return compute_vqa_accuracy(predictions, references, return_per_question=return_per_question)
