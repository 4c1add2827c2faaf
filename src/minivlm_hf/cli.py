"""The ``minivlm-hf`` console script.

Adding a command: write ``minivlm_hf.commands.<name>`` and list ``<name>`` in ``COMMAND_MODULES``. The module
exposes ``register(subparsers)``, which adds its parser and sets ``func=run``; ``run(args)`` gets the parsed
``argparse.Namespace`` and returns an exit code. Only ``run`` imports torch, transformers, the models or anything
else heavy (inside the function): at module level a command imports the standard library and ``._common`` only, so
``minivlm-hf --help``, ``minivlm-hf COMMAND --help`` and a bad argument answer in about 0.1 s instead of the
seconds torch + transformers take to import (``import minivlm_hf`` itself imports neither;
tests/test_cli_startup.py checks it).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import logging
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
    "compare",
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
    if not (sys.argv[1:] if argv is None else argv):  # no command: the whole help, as `hf` prints it
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    # At exit the interpreter garbage-collects the ~500,000 objects torch and transformers leave behind, several
    # times while it tears the modules down: 1-3 s after a one-image command. Frozen objects are skipped by those
    # collections (and still freed by reference counting); freezing only at exit leaves in-process callers alone.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    # With torchao installed (the int8 extra), transformers imports it with any model code, and torchao's
    # register_constant() calls make torch log two deprecation warnings per command that no user can act on.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:
        # Bad input is reported in one line, not as a stack trace.
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"minivlm-hf {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minivlm-hf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
