"""Atomic folder and file writes: a crash, a kill or an exception leaves the old version or the new one, whole.

A folder is written into a hidden staging sibling (``.NAME.staging-PID-XXXX``, same filesystem), then swapped with
the target in one ``renameat2(RENAME_EXCHANGE)`` on Linux (elsewhere: target -> ``.NAME.old-PID-XXXX``, staging ->
target, and an interrupted swap is undone by the next write). The old folder is deleted only after the swap.
Files and folders get the modes the umask gives (``save_pretrained`` writes weights through a 0600 temporary file).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def current_umask() -> int:
    """The process umask (read from /proc where possible: ``os.umask`` can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_modes(folder: Path) -> None:
    """Give every file and folder under ``folder`` (and ``folder``) the mode a plain ``open`` / ``mkdir`` gives."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def _fsync_tree(folder: Path) -> None:
    """Flush the staged files to disk before the rename makes them the checkpoint (a power cut then loses neither)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                _fsync_path(path)
    _fsync_path(folder)


def _fsync_path(path) -> None:
    """fsync a file or a folder (best effort: some file systems refuse it on folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # an old kernel or a filesystem without the flag: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[tuple[Path, int]]:
    found = []
    for path in target.parent.glob(f".{target.name}.{kind}-*"):
        try:
            pid = int(path.name[len(f".{target.name}.{kind}-"):].split("-")[0])
        except ValueError:
            continue
        found.append((path, pid))
    return found


def recover_interrupted(target: str | Path) -> None:
    """Undo what a killed writer of ``target`` left: a missing target whose old copy was moved aside is put back;
    staging folders of writers that are no longer running are deleted."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    if not os.path.lexists(target):
        olds = sorted((p for p, _ in _leftovers(target, "old")), key=lambda p: p.stat().st_mtime)
        if olds:
            os.rename(olds[-1], target)
    for path, pid in _leftovers(target, "old") + _leftovers(target, "staging"):
        if not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _link_tree(source: Path, destination: Path) -> None:
    """Hard-link (copy where links are refused) ``source`` to ``destination``: carried entries cost no copy."""
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        destination.mkdir()
        for child in source.iterdir():
            _link_tree(child, destination / child.name)
    else:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)


def _commit(staging: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging)  # now the old folder
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, carry: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Write a folder atomically: ``with atomic_directory(out) as tmp: model.save_pretrained(tmp)``.

    On a clean exit the staged folder replaces ``target`` (which then holds exactly what was written there: no stale
    file of an earlier save survives); on an exception nothing changes. ``carry(name)`` names top-level entries of
    the existing ``target`` to keep in the new folder (e.g. a training run's ``checkpoint-N`` folders) unless the new
    folder has an entry of that name; they are hard-linked, not copied."""
    target = Path(target)
    if os.path.lexists(target) and not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-", dir=target.parent))
    try:
        yield staging
        # Modes and fsync for what was written here only: carried entries are hard links to the user's files,
        # whose modes must not change.
        apply_umask_modes(staging)
        _fsync_tree(staging)
        if carry is not None and target.is_dir():
            for entry in target.iterdir():
                if carry(entry.name) and not os.path.lexists(staging / entry.name):
                    _link_tree(entry, staging / entry.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        _commit(staging, target)
    except OSError as err:  # e.g. a mount point: keep what was written, under a visible name
        kept = target.parent / f"{target.name}.unsaved-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(staging, kept)
        raise OSError(err.errno, f"could not replace {target} ({err.strerror}); the new files are in {kept}") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_path(target.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file through a temporary sibling and ``os.replace`` (umask modes)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file through a temporary sibling and ``os.replace`` (umask modes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = [
    "apply_umask_modes", "atomic_directory", "atomic_write_bytes", "atomic_write_text", "current_umask",
    "recover_interrupted",
]
