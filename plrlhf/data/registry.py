"""The user registry: raw user ids from the data <-> integer indices the model sees."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from plrlhf.io import atomic_write_json

GENERIC_USER = 0
GENERIC_NAME = "<generic>"


class UserRegistry:
    """Maps raw user ids (strings or ints, compared as strings) of the training data to ``1..N``.

    Index 0 is the generic user: users never seen in training map to it. The registry is built
    once from the training split and saved, so evaluation and prediction on new files map users the
    same way as training did.
    """

    def __init__(self, users: Iterable[str] = ()) -> None:
        self.users: list[str] = []
        self._index: dict[str, int] = {}
        for user in users:
            self.add(user)

    def add(self, user: Any) -> int:
        key = str(user)
        if key not in self._index:
            self.users.append(key)
            self._index[key] = len(self.users)
        return self._index[key]

    def index(self, user: Any) -> int:
        """The model index of ``user``; 0 (the generic user) when it was not seen in training."""
        if user is None:
            return GENERIC_USER
        return self._index.get(str(user), GENERIC_USER)

    def __contains__(self, user: Any) -> bool:
        return user is not None and str(user) in self._index

    def __len__(self) -> int:
        """Number of trained users, N (the generic user not counted)."""
        return len(self.users)

    def name(self, index: int) -> str:
        return GENERIC_NAME if index == GENERIC_USER else self.users[index - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"users": list(self.users)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> UserRegistry:
        return cls(state["users"])

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> UserRegistry:
        """A registry saved by :meth:`save`; a clear error naming the file for anything else."""
        path = Path(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"user registry not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a user registry (malformed JSON: {error})") from None
        users = state.get("users") if isinstance(state, dict) else None
        if not isinstance(users, list) or not all(isinstance(u, (str, int)) for u in users):
            raise ValueError(f'{path}: not a user registry: expected {{"users": [<user id>, ...]}}')
        if len({str(u) for u in users}) != len(users):
            raise ValueError(f"{path}: a user is listed twice")
        return cls(users)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserRegistry) and self.users == other.users

    def __repr__(self) -> str:
        return f"UserRegistry({len(self)} users)"
