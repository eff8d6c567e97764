"""Encoded splits on disk: tokenize once, memory-map ever after.

A source (file or dataset) encoded with one tokenizer and one set of settings is written once to
``<cache dir>/<key>/`` and read back by every later run and every process (``fit``, ``test``,
``predict``, ``adapt``, DDP ranks). The key hashes everything that decides the token ids: the
source's bytes (or dataset fingerprint), the tokenizer's files, the field names and the length
limits. The token ids of all triples sit in one flat file (``uint16`` when the vocabulary fits),
with a per-triple table of lengths; nothing per example is held as Python objects.

Files are written into a temporary directory that is renamed into place, and ``meta.json`` holds
the sha256 of every other file: a damaged or half-written entry is detected on load and rebuilt,
never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plrlhf.data.encoding import EncodedChunk, SplitStats
from plrlhf.io import atomic_directory, file_sha256

# 2: chat-template responses end at an end of turn that is the end-of-text token.
CACHE_VERSION = 2
CACHE_ENV = "PLRLHF_CACHE"
TOKENIZER_FILE_PREFIXES = ("tokenizer", "special_tokens", "vocab", "merges", "added_tokens", "chat_template")
_ARRAYS = ("lengths", "users", "groups", "where_offsets")


def default_cache_dir() -> Path:
    """``$PLRLHF_CACHE``, else ``$XDG_CACHE_HOME/plrlhf`` (``~/.cache/plrlhf``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "plrlhf"


def tokenizer_digest(tokenizer_dir: str | Path) -> str:
    """A hash of the files that decide a tokenizer's ids (not the model weights beside them)."""
    digest = hashlib.sha256()
    directory = Path(tokenizer_dir)
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.is_file() and path.name.startswith(TOKENIZER_FILE_PREFIXES):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def entry_lock(directory: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock on entry ``key`` (a lock file beside it; released when the process
    ends, also by a kill). Where file locks are not available, nothing is held: concurrent writers
    are still safe (each entry appears whole by a rename), only wasteful."""
    locks = directory / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(locks / key, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entry_key(source_identity: str, tokenizer: str, settings: Any) -> str:
    digest = hashlib.sha256(f"plrlhf-encoded-v{CACHE_VERSION}".encode())
    for part in (source_identity, tokenizer, repr(settings)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


class _HashedFile:
    """A file written in appends, hashed as it is written (so loading can check it)."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "wb")
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)

    def close(self) -> str:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return self.digest.hexdigest()


def write_entry(
    directory: Path, key: str, chunks: Iterable[EncodedChunk], vocab_size: int, source_name: str
) -> None:
    """Stream encoded chunks into ``directory/key`` (atomically: all of it appears, or none).

    ``chunks`` is consumed here; the stats and users of the last chunk describe the whole source.
    """
    token_dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    with atomic_directory(directory / key) as tmp:
        tokens, wheres = _HashedFile(tmp / "tokens.bin"), _HashedFile(tmp / "where.bin")
        lengths: list[np.ndarray] = []
        users: list[np.ndarray] = []
        groups: list[np.ndarray] = []
        where_lengths: list[np.ndarray] = []
        user_names: dict[str, int] = {}
        group_names: dict[str, int] = {}
        last: EncodedChunk | None = None
        for chunk in chunks:
            last = chunk
            flat = [ids for triple in zip(chunk.prompts, chunk.chosen, chunk.rejected) for ids in triple]
            if flat:
                tokens.write(np.fromiter(_concat(flat), dtype=token_dtype).tobytes())
            lengths.append(np.array([len(ids) for ids in flat], dtype=np.int32).reshape(-1, 3))
            users.append(_codes(chunk.users, user_names))
            groups.append(_codes(chunk.groups, group_names))
            encoded = [w.encode() for w in chunk.wheres]
            wheres.write(b"".join(encoded))
            where_lengths.append(np.array([len(w) for w in encoded], dtype=np.int64))
        if last is None:
            raise ValueError("no chunks to write")
        arrays = {
            "lengths": np.concatenate(lengths),
            "users": np.concatenate(users),
            "groups": np.concatenate(groups),
            "where_offsets": np.concatenate([[0], np.cumsum(np.concatenate(where_lengths))]),
        }
        checksums = {"tokens.bin": tokens.close(), "where.bin": wheres.close()}
        for name, array in arrays.items():
            checksums[f"{name}.npy"] = _save_array(tmp / f"{name}.npy", array)
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "source": source_name,
            "token_dtype": np.dtype(token_dtype).name,
            "rows": int(len(arrays["lengths"])),
            "user_names": list(user_names),
            "group_names": list(group_names),
            "stats": asdict(last.stats),
            "read_users": list(last.read_users),
            "spellings": {u: dict(c) for u, c in last.read_users.items() if len(c) > 1},
            "checksums": checksums,
        }
        with open(tmp / "meta.json", "w", encoding="utf-8") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())


def _concat(rows: Sequence[list[int]]) -> Iterable[int]:
    for row in rows:
        yield from row


def _codes(names: Sequence[str | None], table: dict[str, int]) -> np.ndarray:
    codes = np.empty(len(names), dtype=np.int32)
    for i, name in enumerate(names):
        codes[i] = -1 if name is None else table.setdefault(name, len(table))
    return codes


def _save_array(path: Path, array: np.ndarray) -> str:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return file_sha256(path)


@dataclass
class EncodedEntry:
    """One encoded source, memory-mapped: token ids and per-triple lengths, users, groups."""

    directory: Path
    key: str
    tokens: np.ndarray
    lengths: np.ndarray
    """``(N, 3)``: prompt, chosen and rejected lengths of each triple."""
    starts: np.ndarray
    """``(N,)``: where each triple's prompt starts in ``tokens``."""
    users: np.ndarray
    """``(N,)`` codes into ``user_names``; -1: no user id."""
    groups: np.ndarray
    user_names: list[str]
    group_names: list[str]
    stats: SplitStats
    read_users: dict[str, dict[str, int]]
    """Every user id of the records read (dropped ones too), in order of first appearance, with
    how it was spelled when spelled more than one way."""
    _where_offsets: np.ndarray
    _where: np.ndarray
    fresh: bool = False
    """Encoded by this process (not read from an earlier run's cache)."""

    def __len__(self) -> int:
        return len(self.lengths)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by reference (DDP spawn, data loader workers): the other process maps the same
        # files instead of receiving a copy of every token id. Checked when this one loaded it.
        return (_reopen, (str(self.directory.parent), self.key, self.fresh))

    def ids(self, row: int) -> tuple[list[int], list[int], list[int]]:
        start = int(self.starts[row])
        p, c, r = (int(n) for n in self.lengths[row])
        flat = self.tokens[start : start + p + c + r].tolist()
        return flat[:p], flat[p : p + c], flat[p + c :]

    def where(self, row: int) -> str:
        return bytes(self._where[self._where_offsets[row] : self._where_offsets[row + 1]]).decode()


def load_entry(directory: Path, key: str, verify: bool = True) -> tuple[EncodedEntry | None, str]:
    """The entry ``directory/key``, checked against its checksums; ``(None, why)`` when it is
    missing, from another version, or damaged. ``verify=False`` skips the checksums (an entry
    this run has already checked, reopened in another process)."""
    path = directory / key
    if not path.is_dir():
        return None, "not cached"
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
            return None, "written by another version"
        for name, expected in meta["checksums"].items() if verify else ():
            if file_sha256(path / name) != expected:
                return None, f"{name} does not match its checksum (damaged)"
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
        tokens = _map(path / "tokens.bin", np.dtype(meta["token_dtype"]))
        where = _map(path / "where.bin", np.dtype(np.uint8))
        lengths = arrays["lengths"].reshape(-1, 3)
        if len(lengths) != meta["rows"] or int(lengths.sum()) != len(tokens):
            return None, "sizes do not match (damaged)"
        totals = lengths.sum(axis=1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(totals)[:-1]]) if len(totals) else totals
        stats = SplitStats(**meta["stats"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"unreadable ({type(error).__name__}: {error})"
    read_users = {user: meta["spellings"].get(user, {}) for user in meta["read_users"]}
    return (
        EncodedEntry(
            path,
            key,
            tokens,
            lengths,
            starts,
            arrays["users"],
            arrays["groups"],
            meta["user_names"],
            meta["group_names"],
            stats,
            read_users,
            arrays["where_offsets"],
            where,
        ),
        "",
    )


def _reopen(directory: str, key: str, fresh: bool) -> EncodedEntry:
    entry, why = load_entry(Path(directory), key, verify=False)
    if entry is None:
        raise RuntimeError(f"encoded cache {directory}/{key} vanished while in use: {why}")
    entry.fresh = fresh
    return entry


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
