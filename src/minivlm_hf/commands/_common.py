"""Arguments and output helpers shared by the inference subcommands."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _bounded(kind, name: str, low=None, high=None, low_open: bool = False):
    """An argparse ``type`` that parses ``kind`` and checks the range, so bad numbers fail at parse time."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


positive_int = _bounded(int, "a positive integer", low=1)
non_negative_int = _bounded(int, "an integer >= 0", low=0)
positive_float = _bounded(float, "a number > 0", low=0.0, low_open=True)
unit_interval = _bounded(float, "a number in [0, 1]", low=0.0, high=1.0)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (namespace/name)")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit to load")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="load the model code shipped with the checkpoint"
    )


def add_hub_upload_arguments(parser: argparse.ArgumentParser) -> None:
    """The upload options every Hub-publishing command shares (after its own ``--revision`` / ``--create-pr``)."""
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN / login)")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint URL (default: HF_ENDPOINT)")


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here instead of stdout")


def check_output_file(path: Path | None, flag: str = "--output") -> None:
    """Refuse an output path that cannot be written as a file, before any model is loaded."""
    if path is not None and path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    if path is not None and path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{flag} {path}: {path.parent} is not a folder")


def emit_json(data, output: Path | None) -> None:
    text = json.dumps(data, indent=2)
    if output is None:
        print(text)
        return
    from ..io.atomic import atomic_write_text

    check_output_file(output)
    atomic_write_text(output, text + "\n")  # never leave a half-written file behind
    print(f"wrote {output}", file=sys.stderr)
