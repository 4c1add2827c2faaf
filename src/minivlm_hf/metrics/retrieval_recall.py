# Copyright (c) minivlm-hf contributors. MIT license.
"""Image-text retrieval recall R@K (image->text and text->image) as an `evaluate` metric.

Input: a similarity matrix ``scores[num_images, num_texts]`` (higher = more similar) and, for every
text, the index of the image it describes (``text_to_image[num_texts]``). An image may have several
texts (5 in COCO / Flickr30k).

* text->image (t2i): for each text, the query ranks all images; a hit at K if its image is in the top K.
* image->text (i2t): for each image, the query ranks all texts; a hit at K if ANY of its texts is in the
  top K (i.e. the best-ranked of its texts is within K). Images without any text are skipped.

Ties count against the model: the rank of the ground truth is the number of *wrong* candidates whose
score is >= the ground truth's score (0-based), so a constant score matrix does not get perfect recall.
Without ties this is the usual rank of a descending sort.

Output keys (recalls are fractions in [0, 1]; papers show them x100):
``i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10`` (one per K of ``ks``, default (1, 5, 10)),
``r_mean`` (mean of those recalls), ``i2t_medr`` and ``t2i_medr`` (median 1-based rank of the ground truth).

With `evaluate`, every example is one text: ``predictions`` is that text's row of scores against all
images (a column of the matrix: pass ``scores.T``), ``references`` is its image index. ``add_batch`` can
then be called per batch of texts. For large matrices prefer the plain function
``compute_retrieval_recall(scores, text_to_image)``, which takes an array directly.
"""

from typing import Dict, Sequence

import datasets
import evaluate
import numpy as np

_CHUNK = 1024


def compute_retrieval_recall(scores, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """R@K in both directions from a [num_images, num_texts] score matrix (array, tensor or nested list).

    Args:
        scores: similarity of image i and text t at ``scores[i, t]``.
        text_to_image: image index of every text (length num_texts).
        ks: the K values to report.
    """
    s = np.asarray(scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores, dtype=np.float64)
    t2i = np.asarray(text_to_image, dtype=np.int64).reshape(-1)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D [num_images, num_texts], got shape {s.shape}")
    n_img, n_txt = s.shape
    if t2i.shape[0] != n_txt:
        raise ValueError(f"text_to_image has {t2i.shape[0]} entries but scores has {n_txt} texts (columns)")
    if n_txt and (t2i.min() < 0 or t2i.max() >= n_img):
        raise ValueError("text_to_image holds an image index outside [0, num_images)")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")

    # text -> image: rank = #wrong images scoring >= the right one (the right one always counts itself once)
    t2i_rank = np.empty(n_txt, dtype=np.int64)
    for a in range(0, n_txt, _CHUNK):
        cols = slice(a, min(a + _CHUNK, n_txt))
        block = s[:, cols]
        gt = block[t2i[cols], np.arange(block.shape[1])]
        t2i_rank[cols] = (block >= gt[None, :]).sum(0) - 1

    # image -> text: best-scoring own text; rank = #foreign texts scoring >= it
    has_text = np.zeros(n_img, dtype=bool)
    has_text[t2i] = True
    i2t_rank = []
    for a in range(0, n_img, _CHUNK):
        rows = np.arange(a, min(a + _CHUNK, n_img))
        block = s[rows]
        own = t2i[None, :] == rows[:, None]
        best = np.where(own, block, -np.inf).max(1)
        rank = ((block >= best[:, None]) & ~own).sum(1)
        i2t_rank.append(rank[has_text[rows]])
    i2t_rank = np.concatenate(i2t_rank) if i2t_rank else np.zeros(0, dtype=np.int64)

    out: Dict[str, float] = {}
    recalls = []
    for name, ranks in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in ks:
            r = float((ranks < k).mean()) if ranks.size else 0.0
            out[f"{name}_r{k}"] = r
            recalls.append(r)
    out["r_mean"] = float(np.mean(recalls)) if recalls else 0.0
    out["i2t_medr"] = float(np.median(i2t_rank) + 1) if i2t_rank.size else float("nan")
    out["t2i_medr"] = float(np.median(t2i_rank) + 1) if t2i_rank.size else float("nan")
    return out


_CITATION = """\
@inproceedings{faghri2018vse,
  title={{VSE++}: Improving Visual-Semantic Embeddings with Hard Negatives},
  author={Faghri, Fartash and Fleet, David J. and Kiros, Jamie Ryan and Fidler, Sanja},
  booktitle={BMVC},
  year={2018}
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of list of float): one row per text: its scores against all images
        (i.e. scores.T for a [num_images, num_texts] matrix). All rows must have num_images entries.
    references (list of int): the image index of each text.
    ks (tuple of int, compute() keyword, default (1, 5, 10)).
Returns:
    i2t_r{k}, t2i_r{k} (float in [0, 1]), r_mean, i2t_medr, t2i_medr.
Example:
    >>> m = evaluate.load("/path/to/retrieval_recall.py")
    >>> m.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])["t2i_r1"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Image<->text retrieval recall at K."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.List(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        if len(predictions) == 0:
            raise ValueError("no texts were added")
        lengths = {len(row) for row in predictions}
        if len(lengths) != 1:
            raise ValueError(f"every text needs a score for every image; got row lengths {sorted(lengths)}")
        scores = np.asarray(predictions, dtype=np.float64).T  # [num_images, num_texts]
        return compute_retrieval_recall(scores, references, ks=tuple(ks))
