"""The ``minivlm-hf`` console script.

Each subcommand lives in ``minivlm_hf.commands.<name>`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed ``argparse.Namespace``; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "detect",
    "caption",
    "answer",
    "data",
    "init",
    "push",
    "train",
    "demo",
    "benchmark",
    "export",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minivlm-hf", description="MiniVLM: a smaller and faster vision-language model, on transformers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"minivlm_hf.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as err:
        # Bad input is reported in one line, not as a stack trace.
        print(f"minivlm-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
