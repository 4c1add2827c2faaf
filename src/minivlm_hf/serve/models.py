"""Which task checkpoints a ``serve`` MODEL names, and the loaded models with one timed call per task.

A MODEL is a checkpoint folder, a folder of checkpoint folders (the demo's output: ``detector/``, ``caption/``,
``vqa/``, ``retrieval/``, ``nlvr/`` ...) or a Hub id. Each checkpoint's task comes from the architecture its
``config.json`` names, so folder names do not matter; checkpoints of other architectures (pre-training) are skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..tasks import TASKS

#: architecture → the task the page serves (the one task table, `minivlm_hf.tasks`; pre-training is not served)
ARCHITECTURE_TASKS = {task.architecture: name for name, task in TASKS.items() if name != "pretrain"}
#: what the page calls each task
TASK_TITLES = {"detector": "object detection", "caption": "captioning", "vqa": "visual question answering",
               "retrieval": "caption ranking (image-text retrieval)", "nlvr": "statements about an image pair (NLVR)"}


def _architecture(config_file: Path) -> str:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file}: not a readable config.json ({err})") from None
    return ((config.get("architectures") if isinstance(config, dict) else None) or [""])[0]


def _hub_architecture(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return _architecture(Path(hf_hub_download(repo_id, "config.json", revision=revision)))
    except (HfHubHTTPError, LocalEntryNotFoundError) as err:
        raise FileNotFoundError(f"{repo_id}: no config.json on the Hub ({type(err).__name__}: {err})") from None


def find_checkpoints(models: list[str] | str, revision: str | None = None) -> dict[str, str]:
    """``{task: folder or Hub id}`` for every MODEL (see the module docstring). Raises ``FileNotFoundError`` for a
    MODEL that is neither a folder nor a Hub id, ``ValueError`` when two checkpoints serve the same task or none
    serves any task."""
    from ..inference import _looks_like_hub_id

    found: dict[str, str] = {}

    def add(architecture: str, source: str) -> None:
        task = ARCHITECTURE_TASKS.get(architecture)
        if task is None:
            return
        if task in found:
            raise ValueError(f"two {task} checkpoints: {found[task]} and {source}; serve one of them")
        found[task] = source

    for model in [models] if isinstance(models, str) else models:
        path = Path(model)
        if path.is_dir():
            if (path / "config.json").is_file():
                add(_architecture(path / "config.json"), str(path))
            else:
                for sub in sorted(p for p in path.iterdir() if (p / "config.json").is_file()):
                    add(_architecture(sub / "config.json"), str(sub))
        elif path.exists() or not _looks_like_hub_id(model):
            raise FileNotFoundError(f"model folder not found (and not a Hub id 'namespace/name'): {model}")
        else:
            add(_hub_architecture(model, revision), model)
    if not found:
        raise ValueError(f"no task checkpoint in {', '.join([models] if isinstance(models, str) else models)}: "
                         f"expected config.json naming one of {', '.join(ARCHITECTURE_TASKS)} (in the folder, "
                         "or in its subfolders as the demo writes them)")
    return dict(sorted(found.items(), key=lambda kv: list(TASK_TITLES).index(kv[0])))


@dataclass
class Timed:
    """A result and the milliseconds the call took."""

    value: object
    milliseconds: float


@dataclass
class ServedModels:
    """The loaded (model, processor) of each task; every call returns a :class:`Timed` result."""

    sources: dict[str, str]
    loaded: dict[str, tuple] = field(default_factory=dict)

    @classmethod
    def load(cls, models: list[str] | str, revision: str | None = None, trust_remote_code: bool = False):
        from .. import inference

        sources = find_checkpoints(models, revision)
        served = cls(sources)
        for task, source in sources.items():
            served.loaded[task] = inference.load(task, source, revision, trust_remote_code)
        return served

    @property
    def tasks(self) -> list[str]:
        return list(self.loaded)

    def caption_defaults(self) -> dict:
        """The captioning model's own decoding settings (its generation_config), capped to its text length."""
        model = self.loaded["caption"][0]
        limit = model.config.max_text_length - 2
        config = model.generation_config
        return {"num_beams": int(config.num_beams or 1), "length_penalty": float(config.length_penalty or 1.0),
                "max_new_tokens": min(int(config.max_new_tokens or 20), limit), "max_new_tokens_limit": limit}

    @staticmethod
    def _timed(fn, *args, **kwargs) -> Timed:
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        return Timed(value, (time.perf_counter() - start) * 1000.0)

    def detect(self, image, threshold: float = 0.5) -> Timed:
        from ..inference import detect

        model, processor = self.loaded["detector"]
        return self._timed(lambda: detect(model, processor, [image], threshold=threshold)[0])

    def caption(self, image, **generate_kwargs) -> Timed:
        from ..inference import caption

        model, processor = self.loaded["caption"]
        return self._timed(lambda: caption(model, processor, [image], do_sample=False, **generate_kwargs)[0])

    def answer(self, image, question: str, top_k: int = 5) -> Timed:
        from ..inference import answer

        model, processor = self.loaded["vqa"]
        return self._timed(answer, model, processor, image, question, top_k=top_k)

    def rank(self, image, captions: list[str]) -> Timed:
        from ..inference import rank_captions

        model, processor = self.loaded["retrieval"]
        return self._timed(rank_captions, model, processor, image, captions)

    def judge(self, statement: str, left_image, right_image) -> Timed:
        from ..inference import judge

        model, processor = self.loaded["nlvr"]
        return self._timed(judge, model, processor, statement, left_image, right_image)


__all__ = ["ARCHITECTURE_TASKS", "TASK_TITLES", "ServedModels", "Timed", "find_checkpoints"]
