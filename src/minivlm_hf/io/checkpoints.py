"""What a checkpoint folder holds and whether it is whole.

``checkpoint_problem`` reads only headers (safetensors headers are checked against the file size by
``safetensors.safe_open``; the Trainer's ``.pt`` / ``.pth`` files are zip archives whose central directory is at
the end, so a truncated one does not open). The Trainer writes ``trainer_state.json`` last, so a ``checkpoint-N``
without it was interrupted.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Callable

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5",
                   "flax_model.msgpack")
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
RUN_FOLDERS = ("runs", "logs", "features")  # what the Trainer's loggers and the recipes may put in a run's folder

# Files a model's save_pretrained / processor save_pretrained / Trainer.save_model write. A folder the package writes
# holds one model's files only, so these are replaced together.
MODEL_FILE_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
    "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "model.ckpt", "training_args.bin",
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "processor_config.json", "video_preprocessor_config.json", "*.py",
)
# What else the package puts in a model folder (`init`'s card and record, training metrics).
PACKAGE_RECORDS = ("README.md", "minivlm_init.json", "metrics.json", "all_results.json", "train_results.json",
                   "eval_results.json", "test_results.json", "trainer_state.json")


def is_model_file(name: str) -> bool:
    """Whether a top-level file name is part of a saved model (weights, configs, tokenizer, processor, code)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that are neither model files nor the package's records (what replacing it would lose)."""
    return sorted(
        p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
        if p.is_dir() or not (is_model_file(p.name) or p.name in PACKAGE_RECORDS)
    )


def inside(folder: Path, name: str, resolve: bool = True) -> Path | None:
    """``folder / name`` if ``name`` is a plain relative path (no ``..``, not absolute) that, with ``resolve``, also
    resolves inside ``folder`` (no symlink out of it), else None."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        return None
    path = folder / name
    if not resolve:
        return path
    try:
        path.resolve(strict=False).relative_to(folder.resolve())
    except ValueError:
        return None
    return path


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (None if its header parses and covers the file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # SafetensorError (a Rust exception type), OSError
        return f"{path.name} is not a readable safetensors file ({str(err).splitlines()[0] if str(err) else err!r})"
    return None


def weights_problem(folder: Path) -> str | None:
    """Why the weights of ``folder`` cannot be loaded whole (None if they can)."""
    single, index = folder / WEIGHTS_NAME, folder / WEIGHTS_INDEX_NAME
    if single.is_file():
        return safetensors_problem(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return f"{WEIGHTS_INDEX_NAME} is not a valid index ({err})"
        for shard in shards:
            path = inside(folder, shard) if isinstance(shard, str) else None
            if path is None:
                return f"{WEIGHTS_INDEX_NAME} lists a shard outside the folder: {shard!r}"
            if not path.is_file():
                return f"shard {shard} listed in {WEIGHTS_INDEX_NAME} is missing"
            problem = safetensors_problem(path)
            if problem:
                return problem
        return None
    pickled = [name for name in PICKLED_WEIGHTS if (folder / name).is_file()]
    if pickled:
        return (f"it holds only pickled weights ({', '.join(pickled)}), which are never loaded (unpickling can run "
                "code): re-save the model with save_pretrained(), which writes safetensors")
    return f"no model weights ({WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME})"


def checkpoint_problem(folder: str | Path, trainer_state: bool = False) -> str | None:
    """Why ``folder`` is not a whole checkpoint (None if it is): config.json, the weights, and with
    ``trainer_state`` the Trainer's state, optimizer, scheduler and RNG files of a ``checkpoint-N``."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    config = folder / "config.json"
    if not config.is_file():
        return "no config.json"
    try:
        json.loads(config.read_text())
    except (ValueError, OSError) as err:
        return f"config.json is not valid JSON ({err})"
    problem = weights_problem(folder)
    if problem:
        return problem
    if trainer_state:
        state = folder / TRAINER_STATE_NAME
        if not state.is_file():
            return f"no {TRAINER_STATE_NAME} (the Trainer writes it last: the save was interrupted)"
        try:
            json.loads(state.read_text())
        except (ValueError, OSError) as err:
            return f"{TRAINER_STATE_NAME} is not valid JSON ({err})"
        for path in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
            try:
                with zipfile.ZipFile(path):
                    pass
            except (zipfile.BadZipFile, OSError) as err:
                return f"{path.name} is truncated or corrupt ({err})"
    return None


def training_output_problem(output_dir: str | Path) -> str | None:
    """Why ``output_dir`` should not receive a training run (None if it may): the final save swaps in a new folder
    that carries the existing entries over as hard links, which is right for a run's folder (its checkpoints, logs,
    a config next to them) but not for a mount point or a folder of other folders (a home directory)."""
    output_dir = Path(output_dir)
    if not output_dir.exists():
        return None
    if not output_dir.is_dir():
        return "it is a file"
    if os.path.ismount(output_dir):
        return "it is a mount point (use a folder inside it)"
    others = sorted(p.name + "/" for p in output_dir.iterdir()
                    if p.is_dir() and not (_CHECKPOINT_RE.match(p.name) or p.name in RUN_FOLDERS or p.name.startswith(".")))
    if others:
        return (f"it holds folders that are not a training run's ({', '.join(others[:5])}"
                f"{', ...' if len(others) > 5 else ''})")
    return None


def latest_complete_checkpoint(output_dir: str | Path, log: Callable[[str], None] | None = None) -> str | None:
    """The newest whole ``checkpoint-N`` of a training run (None if there is none); every newer one skipped is
    reported through ``log`` with the reason."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    numbered = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            numbered.append((int(match.group(1)), path))
    for _step, path in sorted(numbered, reverse=True):
        problem = checkpoint_problem(path, trainer_state=True)
        if problem is None:
            return str(path)
        if log is not None:
            log(f"skipping {path}: incomplete ({problem})")
    return None


__all__ = [
    "MODEL_FILE_PATTERNS",
    "checkpoint_problem",
    "foreign_entries",
    "inside",
    "is_model_file",
    "latest_complete_checkpoint",
    "safetensors_problem",
    "training_output_problem",
    "weights_problem",
]
