# Copyright (c) minivlm-hf contributors. MIT license.
"""Caption metrics BLEU-1..4 and CIDEr-D as an `evaluate` metric, plus the plain function it calls.

Scores come from the COCO caption evaluation code (``pycocoevalcap``): ``pycocoevalcap.bleu.bleu.Bleu``
(corpus BLEU with the "closest" reference length for the brevity penalty) and
``pycocoevalcap.cider.cider.Cider``. Despite its name the latter is CIDEr-D: it clips the candidate's
tf-idf weights by the reference's, multiplies each n-gram similarity by a Gaussian length penalty with
sigma = 6, averages n = 1..4 and the references, and scales by 10 (see ``cider_scorer.py``). The
document frequencies (idf) are taken from the references of the whole evaluated set, so CIDEr-D must be
computed on the full set at once (which ``add_batch`` + ``compute`` does), and a set of a single image
always scores 0 (every n-gram then has idf log(1/1) = 0).

Tokenisation: the COCO pipeline runs the Stanford PTBTokenizer (Java) and then drops punctuation tokens.
Java is not available here, so ``tokenize_caption`` is a small pure-Python tokenizer in the same spirit
(it is not byte-identical to PTB, so scores can differ slightly from the official server's):

1. lowercase; typographic quotes become ASCII;
2. the clitics n't 's 're 've 'll 'd 'm are split off as their own tokens ("don't" -> "do n't",
   "man's" -> "man 's"), as PTB does;
3. tokens are runs of letters/digits; a hyphen inside a word ("t-shirt") and a period, comma or colon
   between digits ("2.5", "1,000", "3:30") are kept inside the token;
4. all other punctuation is dropped; tokens are joined by single spaces.

METEOR, ROUGE-L and SPICE are not computed (METEOR and SPICE need Java).

Output: ``{"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"}``: BLEU in [0, 1]; ``cider`` is CIDEr-D on
pycocoevalcap's scale (papers show both x100, e.g. CIDEr 1.20 -> 120).
"""

import contextlib
import io
import re
from typing import Dict, List, Sequence

import datasets
import evaluate
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00b4": "'", "`": "'"})
_NT_RE = re.compile(r"(?<=\w)n't\b")
_CLITIC_RE = re.compile(r"(?<=\w)'(s|re|ve|ll|d|m)\b")
_TOKEN_RE = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:(?:-|(?<=\d)[.,:](?=\d))[^\W_]+)*")


def tokenize_caption(text: str) -> str:
    """Lowercase, split clitics, drop punctuation; returns the tokens joined by single spaces."""
    s = str(text).lower().translate(_QUOTES)
    s = _NT_RE.sub(" n't", s)
    s = _CLITIC_RE.sub(r" '\1", s)
    return " ".join(_TOKEN_RE.findall(s))


def compute_caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True
) -> Dict[str, float]:
    """BLEU-1..4 and CIDEr-D of one candidate caption per image against its reference captions.

    Args:
        predictions: one generated caption per image.
        references: the reference captions of each image (at least one each).
        tokenize: apply ``tokenize_caption`` to candidates and references (set False if the strings are
            already tokenised, space-separated).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("no captions to score")
    tok = tokenize_caption if tokenize else (lambda x: " ".join(str(x).split()))
    res: Dict[int, List[str]] = {}
    gts: Dict[int, List[str]] = {}
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if isinstance(refs, str):
            raise ValueError("references must be a list of caption lists, got a string")
        if len(refs) == 0:
            raise ValueError(f"image {i} has no reference caption")
        res[i] = [tok(pred)]
        gts[i] = [tok(r) for r in refs]
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["cider"] = float(cider)
    return out


_CITATION = """\
@inproceedings{papineni2002bleu,
  title={{BLEU}: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={ACL},
  year={2002}
}
@inproceedings{vedantam2015cider,
  title={{CIDEr}: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
@article{chen2015microsoft,
  title={Microsoft {COCO} Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): one generated caption per image.
    references (list of list of str): the reference captions of each image.
    tokenize (bool, compute() keyword, default True): apply the built-in Python tokenizer.
Returns:
    bleu_1 .. bleu_4 (float in [0, 1]) and cider (CIDEr-D, pycocoevalcap scale).
Example:
    >>> m = evaluate.load("/path/to/caption_metrics.py")
    >>> m.compute(predictions=["a cat", "a dog"], references=[["a cat"], ["a dog"]])["cider"]
    5.0
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class CaptionMetrics(evaluate.Metric):
    """BLEU-1..4 and CIDEr-D (pycocoevalcap scorers, pure-Python tokenisation)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
        )

    def _compute(self, predictions, references, tokenize: bool = True):
        return compute_caption_metrics(predictions, references, tokenize=tokenize)
