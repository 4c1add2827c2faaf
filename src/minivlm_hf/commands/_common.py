"""Arguments and output helpers shared by the inference subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id (namespace/name)")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit to load")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="load the model code shipped with the checkpoint"
    )


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here instead of stdout")


def emit_json(data, output: Path | None) -> None:
    text = json.dumps(data, indent=2)
    if output is None:
        print(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(output)  # never leave a half-written file behind
    print(f"wrote {output}", file=sys.stderr)
