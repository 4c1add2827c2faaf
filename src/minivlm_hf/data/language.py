"""Captions, VQA questions and NLVR statements for synthetic scenes, all derived from the ground truth.

Spatial relations are read from the boxes and only used when they are clear: ``a`` is *left of* ``b`` when
``a``'s box ends before ``b``'s box starts (``a.x + a.w <= b.x``), likewise *above* with the y axis; two
objects whose boxes overlap along an axis are never related along that axis.

Questions only name an object through a referring expression that matches exactly one object of the
scene, so every question has one determined answer. Counts are answered with digits (as in VQA v2) and
written as words in captions and statements. All text is lowercase without a final full stop.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np

from .render import SceneObject
from .vocab import COLORS, MAX_OBJECTS, NEAR_ANSWERS, NUMBER_WORDS, SHAPE_PLURALS, SHAPES, SIZES

NUM_CAPTIONS = 5
NUM_ANSWERS = 10
MIN_QUESTIONS, MAX_QUESTIONS = 4, 6
NOISY_ANSWER_PROBABILITIES = (0.6, 0.3, 0.1)  # 0, 1 or 2 of the 10 annotators give a near answer
QUESTION_TYPES = ("color", "shape", "size", "count", "exist", "relation")

# Attribute subsets usable to name an object; "shape" subsets end in the shape noun, the others in "object".
_NOUN_SUBSETS = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))
_OBJECT_SUBSETS = (("color",), ("size",), ("size", "color"))


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _count_phrase(n: int, singular: str, plural: str) -> str:
    return with_article(singular) if n == 1 else f"{NUMBER_WORDS[n]} {plural}"


def _attr(obj: SceneObject, name: str) -> int:
    return {"shape": obj.shape, "color": obj.color, "size": obj.size}[name]


def phrase(obj: SceneObject, attrs: Sequence[str]) -> str:
    """``obj`` named by the given attributes, e.g. ``("size", "color", "shape")`` -> "small red circle";
    without "shape" the noun is "object"."""
    words = []
    if "size" in attrs:
        words.append(obj.size_name)
    if "color" in attrs:
        words.append(obj.color_name)
    words.append(obj.shape_name if "shape" in attrs else "object")
    return " ".join(words)


def left_of(a: SceneObject, b: SceneObject) -> bool:
    return a.x2 <= b.bbox[0]


def above(a: SceneObject, b: SceneObject) -> bool:
    return a.y2 <= b.bbox[1]


def unique_references(objects: Sequence[SceneObject], index: int, subsets=_NOUN_SUBSETS, exclude: str = "") -> list:
    """The attribute subsets (not using ``exclude``) that single out ``objects[index]``."""
    target = objects[index]
    found = []
    for subset in subsets:
        if exclude in subset:
            continue
        matches = sum(all(_attr(o, a) == _attr(target, a) for a in subset) for o in objects)
        if matches == 1:
            found.append(subset)
    return found


def _description(rng: np.random.Generator, obj: SceneObject) -> str:
    """A truthful (not necessarily unique) indefinite description for captions."""
    subset = _NOUN_SUBSETS[int(rng.choice(4, p=(0.1, 0.4, 0.1, 0.4)))]
    return with_article(phrase(obj, subset))


def _position(objects: Sequence[SceneObject], obj: SceneObject) -> int:
    return next(i for i, o in enumerate(objects) if o is obj)


def _pairs(objects: Sequence[SceneObject], relation: Callable) -> list[tuple[SceneObject, SceneObject]]:
    return [(a, b) for a in objects for b in objects if a is not b and relation(a, b)]


# ---------------------------------------------------------------------------------------------- captions
def _cap_horizontal(rng, objects):
    pairs = _pairs(objects, left_of)
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    if rng.random() < 0.5:
        return f"{_description(rng, a)} to the left of {_description(rng, b)}"
    return f"{_description(rng, b)} to the right of {_description(rng, a)}"


def _cap_vertical(rng, objects):
    pairs = _pairs(objects, above)
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    if rng.random() < 0.5:
        return f"{_description(rng, a)} above {_description(rng, b)}"
    return f"{_description(rng, b)} below {_description(rng, a)}"


def _cap_shape_inventory(rng, objects):
    counts = Counter(o.shape_name for o in objects)
    items = [_count_phrase(n, s, SHAPE_PLURALS[s]) for s, n in counts.items()]
    return _join(items) if len(items) > 1 or rng.random() < 0.5 else f"an image with {items[0]}"


def _cap_total_including(rng, objects):
    if len(objects) < 2:
        return None
    return f"{NUMBER_WORDS[len(objects)]} objects including {_description(rng, _pick(rng, objects))}"


def _cap_color_count(rng, objects):
    counts = Counter(o.color_name for o in objects)
    color = _pick(rng, sorted(counts))
    n = counts[color]
    if n == 1:
        return f"there is {with_article(color)} object in the picture"
    return f"there are {NUMBER_WORDS[n]} {color} objects in the picture"


def _cap_full_list(rng, objects):
    if len(objects) > 3:
        return None
    return _join([_description(rng, o) for o in objects])


def _cap_largest(rng, objects):
    if len(objects) < 2:
        return None
    largest = max(objects, key=lambda o: o.area)
    others = len(objects) - 1
    rest = "one other object" if others == 1 else f"{NUMBER_WORDS[others]} other objects"
    return f"a picture with {with_article(phrase(largest, ('size', 'color', 'shape')))} and {rest}"


def _cap_single(rng, objects):
    if len(objects) != 1:
        return None
    o = objects[0]
    forms = (
        f"{with_article(o.size_name)} {o.color_name} {o.shape_name}",
        f"a single {o.color_name} {o.shape_name}",
        f"there is {with_article(o.size_name)} {o.shape_name} in the picture",
        f"{with_article(o.color_name)} {o.shape_name} alone in the image",
        f"an image with one {o.size_name} {o.color_name} {o.shape_name}",
        f"one {o.color_name} object",
    )
    return _pick(rng, forms)


CAPTION_TEMPLATES = (
    _cap_horizontal, _cap_vertical, _cap_shape_inventory, _cap_total_including, _cap_color_count,
    _cap_full_list, _cap_largest, _cap_single,
)


def make_captions(rng: np.random.Generator, objects: Sequence[SceneObject], num: int = NUM_CAPTIONS) -> list[str]:
    """``num`` distinct captions, each from a different template while templates remain."""
    captions: list[str] = []
    for _round in range(8):
        order = rng.permutation(len(CAPTION_TEMPLATES))
        for t in order:
            text = CAPTION_TEMPLATES[t](rng, objects)
            if text is not None and text not in captions:
                captions.append(text)
                if len(captions) == num:
                    return captions
    raise AssertionError(f"could not write {num} distinct captions for {objects}")  # pragma: no cover


# --------------------------------------------------------------------------------------------- questions
def _q_color(rng, objects):
    options = [(i, s) for i in range(len(objects)) for s in unique_references(objects, i, exclude="color")]
    if not options:
        return None
    i, subset = _pick(rng, options)
    return f"what color is the {phrase(objects[i], subset)}?", objects[i].color_name


def _q_shape(rng, objects):
    options = [(i, s) for i in range(len(objects)) for s in unique_references(objects, i, _OBJECT_SUBSETS)]
    if not options:
        return None
    i, subset = _pick(rng, options)
    return f"what shape is the {phrase(objects[i], subset)}?", objects[i].shape_name


def _q_size(rng, objects):
    options = [(i, s) for i in range(len(objects)) for s in unique_references(objects, i, exclude="size")]
    if not options:
        return None
    i, subset = _pick(rng, options)
    return f"what size is the {phrase(objects[i], subset)}?", objects[i].size_name


def _q_count(rng, objects):
    """A counting question; the answer value is drawn uniformly among the values the scene allows (so that
    "1" and "0" do not dominate), then a question with that answer."""
    by_answer: dict[int, list[str]] = {len(objects): ["how many objects are there?"]}
    for shape in SHAPES:
        n = sum(o.shape_name == shape for o in objects)
        by_answer.setdefault(n, []).append(f"how many {SHAPE_PLURALS[shape]} are there?")
    for color in COLORS:
        n = sum(o.color_name == color for o in objects)
        by_answer.setdefault(n, []).append(f"how many {color} objects are there?")
    for o in objects:
        n = sum(p.color == o.color and p.shape == o.shape for p in objects)
        text = f"how many {o.color_name} {SHAPE_PLURALS[o.shape_name]} are there?"
        if text not in by_answer.setdefault(n, []):
            by_answer[n].append(text)
    answer = _pick(rng, sorted(by_answer))
    return _pick(rng, by_answer[answer]), str(answer)


_EXIST_FORMS = (
    (("color", "shape"), lambda c, s, z: f"is there {with_article(c)} {s}?"),
    (("shape",), lambda c, s, z: f"are there any {SHAPE_PLURALS[s]}?"),
    (("size", "shape"), lambda c, s, z: f"is there {with_article(z)} {s}?"),
    (("color",), lambda c, s, z: f"is there {with_article(c)} object?"),
)


def _q_exist(rng, objects):
    want_yes = rng.random() < 0.5
    for f in rng.permutation(len(_EXIST_FORMS)):
        attrs, template = _EXIST_FORMS[f]
        present = {tuple(_attr(o, a) for a in attrs) for o in objects}
        if want_yes:
            key = _pick(rng, sorted(present))
        else:
            sizes = {"color": len(COLORS), "shape": len(SHAPES), "size": len(SIZES)}
            absent = [k for k in np.ndindex(*(sizes[a] for a in attrs)) if k not in present]
            if not absent:
                continue
            key = _pick(rng, absent)
        values = dict(zip(attrs, key))
        text = template(
            COLORS[values.get("color", 0)], SHAPES[values.get("shape", 0)], SIZES[values.get("size", 0)]
        )
        return text, "yes" if want_yes else "no"
    return None


def _q_relation(rng, objects):
    horizontal = _pairs(objects, left_of)
    vertical = _pairs(objects, above)
    if not horizontal and not vertical:
        return None
    use_h = bool(horizontal) and (not vertical or rng.random() < 0.5)
    candidates = horizontal if use_h else vertical
    order = rng.permutation(len(candidates))
    for k in order:
        a, b = candidates[k]
        if rng.random() < 0.5:  # ask about (b, a): the converse relation holds
            a, b = b, a
            first = False
        else:
            first = True
        ra = unique_references(objects, _position(objects, a))
        rb = unique_references(objects, _position(objects, b))
        if not ra or not rb:
            continue
        ta, tb = phrase(a, _pick(rng, ra)), phrase(b, _pick(rng, rb))
        # first: a is left of / above b.
        near, far = ("left", "right") if use_h else ("above", "below")
        true_word = near if first else far
        if rng.random() < 0.5:
            word = _pick(rng, (near, far))
            prep = f"to the {word} of" if use_h else word
            return f"is the {ta} {prep} the {tb}?", "yes" if word == true_word else "no"
        if use_h:
            return f"is the {ta} to the left or to the right of the {tb}?", true_word
        return f"is the {ta} above or below the {tb}?", true_word
    return None


QUESTION_GENERATORS = {
    "color": _q_color, "shape": _q_shape, "size": _q_size, "count": _q_count, "exist": _q_exist,
    "relation": _q_relation,
}


def near_answer(rng: np.random.Generator, answer: str) -> str:
    if answer.isdigit():
        n = int(answer)
        options = [m for m in (n - 1, n + 1) if 0 <= m <= MAX_OBJECTS]
        return str(_pick(rng, options))
    return _pick(rng, NEAR_ANSWERS[answer])


def annotator_answers(rng: np.random.Generator, answer: str, num: int = NUM_ANSWERS) -> list[str]:
    """``num`` annotator answers: all ``answer`` except 0-2 near answers at seeded positions."""
    answers = [answer] * num
    noisy = int(rng.choice(len(NOISY_ANSWER_PROBABILITIES), p=NOISY_ANSWER_PROBABILITIES))
    for pos in rng.choice(num, size=noisy, replace=False):
        answers[int(pos)] = near_answer(rng, answer)
    return answers


def make_questions(rng: np.random.Generator, objects: Sequence[SceneObject]) -> list[tuple[str, str, str]]:
    """4-6 distinct questions as ``(question, answer, question_type)``, types rotating in a seeded order."""
    wanted = int(rng.integers(MIN_QUESTIONS, MAX_QUESTIONS + 1))
    questions: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    order = [QUESTION_TYPES[i] for i in rng.permutation(len(QUESTION_TYPES))]
    for attempt in range(12 * wanted):
        qtype = order[attempt % len(order)]
        made = QUESTION_GENERATORS[qtype](rng, objects)
        if made is None or made[0] in seen:
            continue
        seen.add(made[0])
        questions.append((made[0], made[1], qtype))
        if len(questions) == wanted:
            break
    if len(questions) < MIN_QUESTIONS:  # pragma: no cover - count/exist always offer enough variety
        raise AssertionError(f"only {len(questions)} questions for {objects}")
    return questions


# ------------------------------------------------------------------------------------------------- NLVR
def _nlvr_candidates(left: Sequence[SceneObject], right: Sequence[SceneObject]) -> dict[str, list[tuple[str, bool]]]:
    """Every statement of every type about the pair, with its truth value."""
    def count(objs, shape=None, color=None):
        return sum((shape is None or o.shape_name == shape) and (color is None or o.color_name == color) for o in objs)

    sides = {"left": left, "right": right}
    out: dict[str, list[tuple[str, bool]]] = {k: [] for k in NLVR_STATEMENT_TYPES}
    for s in SHAPES:
        cl, cr = count(left, s), count(right, s)
        pl = SHAPE_PLURALS[s]
        if cl + cr:
            out["more"].append((f"there are more {pl} in the left image than in the right image", cl > cr))
            out["more"].append((f"there are more {pl} in the right image than in the left image", cr > cl))
        out["both"].append((f"both images contain {with_article(s)}", cl > 0 and cr > 0))
        for side, other in (("left", "right"), ("right", "left")):
            mine, theirs = count(sides[side], s), count(sides[other], s)
            out["only"].append((f"only the {side} image contains {with_article(s)}", mine > 0 and theirs == 0))
            for n in range(1, 4):
                out["exactly"].append(
                    (f"the {side} image contains exactly {NUMBER_WORDS[n]} {s if n == 1 else pl}", mine == n)
                )
        for n in range(2, 7):
            out["total"].append((f"the two images contain {NUMBER_WORDS[n]} {pl} in total", cl + cr == n))
        for c in COLORS:
            out["neither"].append(
                (f"neither image contains {with_article(c)} {s}", count(left, s, c) + count(right, s, c) == 0)
            )
    for c in COLORS:
        out["both"].append((f"both images contain {with_article(c)} object", count(left, color=c) > 0 and count(right, color=c) > 0))
    out["more"].append(("the left image contains more objects than the right image", len(left) > len(right)))
    out["more"].append(("the right image contains more objects than the left image", len(right) > len(left)))
    return out


NLVR_STATEMENT_TYPES = ("more", "both", "only", "exactly", "total", "neither")


def make_nlvr_statements(
    rng: np.random.Generator, left: Sequence[SceneObject], right: Sequence[SceneObject], num: int = 2
) -> list[tuple[str, int, str]]:
    """``num`` distinct statements ``(sentence, label, statement_type)`` about an image pair, labels
    alternating true/false in a seeded order (so the labels are balanced), the type drawn uniformly
    among those that can reach the wanted label."""
    candidates = _nlvr_candidates(left, right)
    first = int(rng.integers(2))
    statements: list[tuple[str, int, str]] = []
    used: set[str] = set()
    for k in range(num):
        label = (first + k) % 2
        for t in rng.permutation(len(NLVR_STATEMENT_TYPES)):
            stype = NLVR_STATEMENT_TYPES[t]
            pool = [text for text, truth in candidates[stype] if truth == bool(label) and text not in used]
            if pool:
                text = _pick(rng, pool)
                used.add(text)
                statements.append((text, label, stype))
                break
        else:  # pragma: no cover - "exactly"/"neither" always offer both truth values
            raise AssertionError("no statement with the wanted truth value")
    return statements


def objects_in_words(objects: Sequence[SceneObject]) -> list[str]:
    """Each object as "size color shape" (handy for debugging and summaries)."""
    return [phrase(o, ("size", "color", "shape")) for o in objects]


__all__ = [
    "CAPTION_TEMPLATES", "NLVR_STATEMENT_TYPES", "QUESTION_TYPES", "above", "annotator_answers", "left_of",
    "make_captions", "make_nlvr_statements", "make_questions", "objects_in_words", "phrase",
    "unique_references", "with_article",
]
