"""Files a run depends on are written whole or not at all, and read back without running code.

Every write goes to a uniquely named temporary file in the target's own directory, is flushed to
disk (``fsync``) and then renamed over the target. A rename within one directory is atomic on POSIX
filesystems: a reader (or a run resumed after a crash, a kill or a full disk) sees the previous
file or the new one, never a truncated mix, and concurrent writers never share a temporary name.
A temporary file in another directory (as ``tempfile`` picks by default) would be *copied* over
the target when the two are on different filesystems, truncating the target first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _process_umask() -> int:
    """The process's umask (read at import, while nothing else runs: setting it to read it is
    not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ``mkstemp`` / ``mkdtemp`` create private files (0600) and directories (0700); what replaces a
# target gets the permissions a plain ``open`` / ``mkdir`` would have given it.
_UMASK = _process_umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIRECTORY_MODE = 0o777 & ~_UMASK


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on an error
    it is removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in blocks (files of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1) + "\n")


def atomic_torch_save(value: Any, path: str | Path) -> None:
    """``torch.save`` of ``value`` to ``path``, atomically (streamed: no copy in memory)."""
    import torch

    with atomic_file(path, "wb") as handle:
        torch.save(value, handle)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``path`` to fill; on a clean exit it takes the place of
    ``path`` (the old directory, if any, is removed only after the new one is in place)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, _DIRECTORY_MODE)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / "previous")
    os.replace(tmp, target)
    _fsync_directory(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
