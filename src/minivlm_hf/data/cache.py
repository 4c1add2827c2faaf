"""An on-disk cache for generated ``DatasetDict``s: build once, then ``load_from_disk``.

Layout under the cache root::

    <name>-<key>/                 the saved DatasetDict (``save_to_disk``) plus MANIFEST_NAME
    .tmp-<name>-<key>-<random>/   a build in progress (renamed into place when complete)

``key`` is a SHA-256 (first 16 hex digits) of the JSON of the generation parameters, which include the
generator version. The manifest records the parameters, the key and the size of every file; it is written
last, and the folder is renamed atomically, so a folder without a valid manifest (interrupted copy,
truncated file, foreign content) is detected and reported as corrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import datasets

logger = logging.getLogger(__name__)

MANIFEST_NAME = "minivlm_cache.json"
CACHE_ENV = "MINIVLM_HF_CACHE"


def default_cache_dir() -> Path:
    """``$MINIVLM_HF_CACHE``, else ``~/.cache/minivlm_hf``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "minivlm_hf")


def cache_key(params: dict[str, Any]) -> str:
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_sizes(folder: Path) -> dict[str, int]:
    """Sizes of the files of a cached dataset, leaving out the manifest and the ``cache-*.arrow`` files that
    ``datasets`` itself writes next to a loaded dataset (index maps of ``select`` and the like): derived data that
    must not make the next load rebuild the cache."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not (p.name.startswith("cache-") and p.suffix == ".arrow")
    }


def save_quietly(dataset: datasets.DatasetDict | datasets.Dataset, path: str | Path) -> None:
    """``save_to_disk`` without progress bars (restoring the previous setting)."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dataset.save_to_disk(str(path))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


class CorruptCacheError(ValueError):
    """A cache folder exists but does not hold a complete dataset for its key."""


def _verify_and_load(folder: Path, key: str, params: dict[str, Any]) -> datasets.DatasetDict:
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CorruptCacheError(f"cache folder {folder} has no {MANIFEST_NAME} (an interrupted or foreign build)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CorruptCacheError(f"unreadable cache manifest {manifest_path}: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("key") != key or manifest.get("params") != params:
        raise CorruptCacheError(f"cache manifest {manifest_path} does not match the requested parameters")
    sizes = _file_sizes(folder)
    if sizes != manifest.get("files"):
        raise CorruptCacheError(f"files under {folder} differ from its manifest (missing, extra or truncated)")
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as err:  # noqa: BLE001 - any failure to read means the folder is unusable
        raise CorruptCacheError(f"cannot load the dataset saved in {folder}: {err}") from None
    expected = manifest.get("num_rows", {})
    actual = {name: split.num_rows for name, split in loaded.items()}
    if actual != expected:
        raise CorruptCacheError(f"dataset in {folder} has rows {actual}, its manifest says {expected}")
    return loaded


def cached_build(
    name: str,
    params: dict[str, Any],
    build: Callable[[], datasets.DatasetDict],
    cache_dir: str | Path | None = None,
    *,
    rebuild_corrupt: bool = True,
) -> datasets.DatasetDict:
    """Load the dataset for ``params`` from the cache, building (and caching) it when absent.

    A corrupt cache folder raises :class:`CorruptCacheError` (a ``ValueError``) naming the folder when
    ``rebuild_corrupt`` is false; otherwise it is removed and rebuilt, with a warning."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(params)
    folder = root / f"{name}-{key}"
    if folder.exists():
        try:
            loaded = _verify_and_load(folder, key, params)
            logger.info("loaded %s from cache %s", name, folder)
            return loaded
        except CorruptCacheError as err:
            if not rebuild_corrupt:
                raise
            warnings.warn(f"{err}; rebuilding it", stacklevel=3)
            shutil.rmtree(folder, ignore_errors=True)

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{key}-", dir=root))
    try:
        dataset = build()
        save_quietly(dataset, tmp)
        manifest = {
            "key": key,
            "params": params,
            "num_rows": {split: ds.num_rows for split, ds in dataset.items()},
            "files": _file_sizes(tmp),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.exists():
                raise
            # Another process finished the same build first: use its copy.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("built %s into cache %s", name, folder)
    return _verify_and_load(folder, key, params)
