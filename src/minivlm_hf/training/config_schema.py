"""Validation of a recipe config (``minivlm-hf train --config``) before anything runs.

Every key is checked against what the recipes read: the sections of ``DEFAULT_CONFIG``, the ``TEEConfig`` fields
(``detector``), the ``MiniVLMConfig`` fields (``fusion``) and the ``TrainingArguments`` fields (``training``).
An unknown or misspelt key, or a value of the wrong type, raises one ``ValueError`` naming the key, the expected type,
the file and, for a misspelling, the closest known key (``difflib``).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any

# Keys whose default (None) does not say their type, values that are not of the default's type, and choices.
EXPLICIT_TYPES: dict[str, Any] = {
    "data.cache_dir": str | None, "data.fusion_num_train": int | None, "data.detector": str | None,
    "data.features_dir": str | None, "data.stream": str | None, "fusion.init_from": str | None,
    "fusion.init_text": str | None,
    "fusion.train_attn_implementation": str | None, "evaluation.limit": int | None,
    "evaluation.caption_model": str | None, "evaluation.bf16": bool | typing.Literal["auto"],
    "training.bf16": bool | typing.Literal["auto"], "detector.image_size": int,
}
CHOICES = {
    "data.features": ("detector", "oracle"), "data.tag_order": ("score", "area"),
    "collator.tag_source": ("detected", "gt"), "evaluation.split": ("train", "validation", "test"),
    "fusion.train_attn_implementation": ("auto", "eager", "sdpa", None),
}
PROBABILITIES = {
    "collator.mask_probability", "collator.pollution", "collator.caption_pollution", "collator.caption_swap",
    "collator.hflip_probability", "collator.hard_negatives", "data.tag_threshold", "data.tag_attribute_threshold",
}
POSITIVE = {
    "evaluation.batch_size", "evaluation.num_beams", "evaluation.max_new_tokens", "evaluation.num_candidates",
    "evaluation.retrieval_groups", "evaluation.limit", "training.per_device_train_batch_size",
    "training.per_device_eval_batch_size", "training.gradient_accumulation_steps",
    "data.num_train", "data.image_size", "data.extract_batch_size", "detector.image_size",
    "fusion.num_hidden_layers",
}
EXTRA_FUSION_KEYS = {"init_text": str | None, "init_from": str | None, "with_vision": bool,
                     "train_attn_implementation": str | None}


def _class_hints(cls) -> dict[str, Any]:
    """Field name -> type hint of a dataclass-like config (Any where the annotation cannot be resolved)."""
    import sys

    import torch

    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    namespace = {**vars(typing), **vars(sys.modules[cls.__module__]), "torch": torch}
    try:
        hints = typing.get_type_hints(cls, globalns=namespace)
    except Exception:
        hints = {}
    return {name: hints.get(name, Any) for name in names or hints}


def section_schemas() -> dict[str, dict[str, Any]]:
    """Section -> {key: type hint}; ``None`` for a scalar top-level key."""
    from transformers import TrainingArguments

    from ..modeling.configuration_minivlm import MiniVLMConfig
    from ..modeling.configuration_minivlm_tee import TEEConfig
    from .recipe_config import DEFAULT_CONFIG

    schemas: dict[str, dict[str, Any]] = {}
    for section, defaults in DEFAULT_CONFIG.items():
        if not isinstance(defaults, dict):
            continue
        schemas[section] = {key: _hint_of_default(f"{section}.{key}", value) for key, value in defaults.items()}
    schemas["detector"].update({k: v for k, v in _class_hints(TEEConfig).items() if k not in schemas["detector"]})
    fusion = _class_hints(MiniVLMConfig)
    fusion.update(EXTRA_FUSION_KEYS)
    schemas["fusion"] = {**fusion, **schemas["fusion"]}
    schemas["training"] = _class_hints(TrainingArguments)
    schemas["training"].pop("output_dir", None)  # --output-dir sets it
    for dotted, hint in EXPLICIT_TYPES.items():
        section, key = dotted.split(".", 1)
        if section in schemas and key in schemas[section]:
            schemas[section][key] = hint
    return schemas


def _hint_of_default(dotted: str, value) -> Any:
    if dotted in EXPLICIT_TYPES:
        return EXPLICIT_TYPES[dotted]
    # bool before int: a bool is an int too
    return next((kind for kind in (bool, float, int, str, list, dict) if isinstance(value, kind)), Any)


def matches(value, hint) -> bool:
    """Whether a JSON value fits a type hint (ints count as floats; bools are not ints)."""
    if hint is Any or hint is typing.Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # `SchedulerType | str`: the string must name a member
            return any(matches(value, e) for e in enums)
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple, typing.Sequence, set) or hint in (list, tuple):
        if not isinstance(value, list):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(any(matches(v, a) for a in args) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str) and value in {str(m.value) for m in hint}
    return True  # torch dtypes, callables and other types JSON cannot hold: left to the consumer


def describe(hint) -> str:
    """A type hint in JSON words: ``'integer or null'``, ``'list of string'``."""
    if hint is None or hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if any(isinstance(a, type) and issubclass(a, enum.Enum) for a in args):
            args = [a for a in args if a is not str]
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple, typing.Sequence, set) or hint in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "a list" + (f" of {describe(args[0]).split(' ', 1)[-1]}s" if args else "")
    if origin is dict or hint is dict:
        return "an object"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(str(m.value)) for m in hint)
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _unknown(dotted: str, key: str, known, where: str) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if "." not in dotted:
        hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {sorted(known)}"
        return ValueError(f"{where}: unknown top-level key {key!r}{hint}")
    hint = f"; did you mean {dotted.rsplit('.', 1)[0]}.{close[0]}?" if close else ""
    return ValueError(f"{where}: unknown key {dotted!r}{hint}")


def validate_recipe_config(user: dict, where: str) -> None:
    """Raise ``ValueError`` for the first unknown key or wrong-typed value of ``user`` (a partial recipe config);
    ``where`` names its source (the file, or ``--set``)."""
    from .recipe_config import DEFAULT_CONFIG

    schemas = section_schemas()
    for key, value in user.items():
        if key not in DEFAULT_CONFIG:
            raise _unknown(key, key, DEFAULT_CONFIG, where)
        if key not in schemas:  # a scalar top-level key (seed)
            expected = _hint_of_default(key, DEFAULT_CONFIG[key])
            if not matches(value, expected):
                raise ValueError(f"{where}: {key} must be {describe(expected)}, got {value!r} ({_json_type(value)})")
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {key} must be an object (a section of keys), got {_json_type(value)}")
        schema = schemas[key]
        for name, item in value.items():
            dotted = f"{key}.{name}"
            if name not in schema:
                raise _unknown(dotted, name, schema, where)
            hint = schema[name]
            if not matches(item, hint):
                raise ValueError(
                    f"{where}: {dotted} must be {describe(hint)}, got {item!r} ({_json_type(item)})"
                )
            if dotted in CHOICES and item not in CHOICES[dotted]:
                raise ValueError(f"{where}: {dotted} must be one of {list(CHOICES[dotted])}, got {item!r}")
            number = isinstance(item, (int, float)) and not isinstance(item, bool)
            if number and dotted in PROBABILITIES and not 0.0 <= item <= 1.0:
                raise ValueError(f"{where}: {dotted} must be in [0, 1], got {item!r}")
            if number and dotted in POSITIVE and item < 1:
                raise ValueError(f"{where}: {dotted} must be at least 1, got {item!r}")


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)


__all__ = ["describe", "matches", "section_schemas", "validate_recipe_config"]
