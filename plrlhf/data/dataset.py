"""``EncodedSplit``: the triples of one split, read from memory-mapped cache entries."""

from __future__ import annotations

import hashlib
from functools import cached_property

import numpy as np
from torch.utils.data import Dataset

from plrlhf.data.cache import EncodedEntry
from plrlhf.data.collate import EncodedTriple


class EncodedSplit(Dataset):
    """Triples of one or more cache entries (one per source), with per-triple model user ids and
    metric keys; items are :class:`EncodedTriple` built on access, so memory holds only the
    per-triple integer arrays.

    ``fingerprint`` names the token ids in order (it keys the reference log-prob cache).
    """

    def __init__(
        self,
        entries: list[EncodedEntry],
        user_ids: np.ndarray,
        user_keys: np.ndarray,
        group_keys: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> None:
        self.entries = entries
        self.ends = np.cumsum([len(e) for e in entries], dtype=np.int64)
        self.user_ids = user_ids
        self.user_keys = user_keys
        self.group_keys = group_keys
        self.rows = rows

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the token ids themselves, not of the cache keys that produced them: a table
        keyed by it survives whatever does not change the ids (a new cache version, a moved file,
        an archived table used on a fresh clone). Computed on first use (reads every token once)."""
        digest = hashlib.sha256()
        for entry in self.entries:
            for array in (entry.tokens, entry.lengths, entry.starts):
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(np.ascontiguousarray(array).data)
        if self.rows is not None:
            digest.update(np.ascontiguousarray(self.rows, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else int(self.ends[-1]) if len(self.ends) else 0

    def _locate(self, index: int) -> tuple[int, EncodedEntry, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        row = int(self.rows[index]) if self.rows is not None else index
        part = int(np.searchsorted(self.ends, row, side="right"))
        start = int(self.ends[part - 1]) if part else 0
        return row, self.entries[part], row - start

    def __getitem__(self, index: int) -> EncodedTriple:
        row, entry, local = self._locate(index)
        prompt, chosen, rejected = entry.ids(local)
        return EncodedTriple(
            prompt,
            chosen,
            rejected,
            user_id=int(self.user_ids[row]),
            user_key=int(self.user_keys[row]),
            group_key=int(self.group_keys[row]),
            index=index % len(self),
        )

    def where(self, index: int) -> str:
        """Where triple ``index`` was read (file and line or row)."""
        _, entry, local = self._locate(index)
        return entry.where(local)

    def lengths(self) -> np.ndarray:
        """``(N, 3)`` prompt, chosen and rejected lengths, in this split's order."""
        lengths = np.concatenate([e.lengths for e in self.entries]) if self.entries else np.zeros((0, 3))
        return lengths[self.rows] if self.rows is not None else lengths

    def select(self, indices: np.ndarray) -> EncodedSplit:
        """The triples at ``indices`` (renumbered from 0), sharing the same mapped entries."""
        rows = np.asarray(indices, dtype=np.int64)
        base = self.rows[rows] if self.rows is not None else rows
        return EncodedSplit(self.entries, self.user_ids, self.user_keys, self.group_keys, base)

    def user_id_array(self) -> np.ndarray:
        """Model user id of each triple, in this split's order."""
        return self.user_ids[self.rows] if self.rows is not None else self.user_ids
