"""One rank of the 2-process streamed fusion training check (run by tests/test_feature_streaming.py under torchrun).

Runs ``minivlm-hf train STAGE ...`` with the training collator wrapped so that it records the rows it is given
(``question_id`` / ``example_id`` / ``sentence``), and writes them to OUT/seen_rank{R}.json.

    torchrun --nproc_per_node 2 tests/feature_stream_ddp_worker.py OUT -- train vqa --config ... --output-dir ...
"""

import json
import os
import sys
from pathlib import Path

from minivlm_hf.cli import main as cli
from minivlm_hf.training import recipes

SEEN: list[str] = []


class RecordingCollator:
    """The stage's collator, unchanged, but the ids of its rows are kept (attributes read and set on the inner one)."""

    def __init__(self, inner):
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def __call__(self, rows):
        SEEN.extend(str(r.get("question_id", r.get("example_id", r.get("sentence")))) for r in rows)
        return self._inner(rows)


def build_collators(stage, config, data, model=None, split="train"):
    collator = _build_collators(stage, config, data, model, split)
    return RecordingCollator(collator) if split == "train" else collator


_build_collators = recipes.build_collators
recipes.build_collators = build_collators

if __name__ == "__main__":
    out, command = Path(sys.argv[1]), sys.argv[3:]
    code = cli(command)
    (out / f"seen_rank{os.environ['RANK']}.json").write_text(json.dumps(SEEN))
    sys.exit(code)
