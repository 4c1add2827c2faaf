# Copyright (c) minivlm-hf contributors. MIT license.
"""NLVR2 accuracy (and consistency) as an `evaluate` metric, plus the plain function it calls.

Predictions and references are binary labels: 1/True = the statement is true for the image pair,
0/False = false. Accepted values: bools, 0/1 integers, and the strings "true"/"false"/"1"/"0"
(case-insensitive) in the plain function (the `evaluate` module stores integers, so pass bools or 0/1).

Accuracy = fraction of examples whose prediction equals the label.

Consistency (Suhr et al. 2019) = fraction of unique sentences for which *every* example (every image
pair the sentence is paired with) is predicted correctly. It needs a group id per example (the sentence
the example belongs to); pass ``group_ids=[...]`` (same length and order as the examples) to the plain
function or as a ``compute()`` keyword. How to derive the sentence id from NLVR2's ``identifier`` field
is left to the data loader.

Output: ``{"accuracy": float}`` in [0, 1], plus ``"consistency"`` in [0, 1] when ``group_ids`` is given.
"""

from typing import Dict, Hashable, Optional, Sequence

import datasets
import evaluate


def _to_label(x) -> int:
    if isinstance(x, str):
        v = x.strip().lower()
        if v in ("true", "1"):
            return 1
        if v in ("false", "0"):
            return 0
        raise ValueError(f"not a binary label: {x!r}")
    v = int(x)
    if v not in (0, 1) or v != x:
        raise ValueError(f"not a binary label: {x!r}")
    return v


def compute_nlvr_accuracy(
    predictions: Sequence, references: Sequence, group_ids: Optional[Sequence[Hashable]] = None
) -> Dict[str, float]:
    """Accuracy (and, with ``group_ids``, consistency) of binary predictions, both in [0, 1].

    An empty input gives 0.0 for every key.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    correct = [_to_label(p) == _to_label(r) for p, r in zip(predictions, references)]
    out = {"accuracy": float(sum(correct) / len(correct)) if correct else 0.0}
    if group_ids is not None:
        if len(group_ids) != len(correct):
            raise ValueError(f"{len(group_ids)} group_ids but {len(correct)} examples")
        all_ok: Dict[Hashable, bool] = {}
        for g, c in zip(group_ids, correct):
            all_ok[g] = all_ok.get(g, True) and c
        out["consistency"] = float(sum(all_ok.values()) / len(all_ok)) if all_ok else 0.0
    return out


_CITATION = """\
@inproceedings{suhr2019corpus,
  title={A Corpus for Reasoning about Natural Language Grounded in Photographs},
  author={Suhr, Alane and Zhou, Stephanie and Zhang, Ally and Zhang, Iris and Bai, Huajun and Artzi, Yoav},
  booktitle={ACL},
  year={2019}
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of int 0/1 or bool): predicted labels.
    references (list of int 0/1 or bool): gold labels.
    group_ids (list, compute() keyword, optional): sentence id of every example, in the order the
        examples were added; enables "consistency".
Returns:
    accuracy (float in [0, 1]); consistency (float in [0, 1]) when group_ids is given.
Example:
    >>> m = evaluate.load("/path/to/nlvr_accuracy.py")
    >>> m.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1], group_ids=["a", "a", "b", "b"])
    {'accuracy': 0.75, 'consistency': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class NlvrAccuracy(evaluate.Metric):
    """NLVR2 accuracy and consistency."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://lil.nlp.cornell.edu/nlvr/"],
        )

    def _compute(self, predictions, references, group_ids=None):
        return compute_nlvr_accuracy(predictions, references, group_ids=group_ids)
