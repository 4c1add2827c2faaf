"""Reading and writing checkpoint folders safely.

- :mod:`.atomic`: :func:`atomic_directory` (stage a folder next to its target, then swap it in, so a crash leaves the
  old folder or the new one, whole) and :func:`atomic_write_text`;
- :mod:`.checkpoints`: which files make up a model, whether a folder (or a Trainer ``checkpoint-N``) is complete,
  the newest complete checkpoint of a run;
- :mod:`.loading`: loading a checkpoint for a task, refusing a folder of another kind, broken or pickled weights and
  missing head weights with one line that says what the folder holds.
"""

from .atomic import atomic_directory, atomic_write_text
from .checkpoints import checkpoint_problem, is_model_file, latest_complete_checkpoint

__all__ = [
    "atomic_directory",
    "atomic_write_text",
    "checkpoint_problem",
    "is_model_file",
    "latest_complete_checkpoint",
]
