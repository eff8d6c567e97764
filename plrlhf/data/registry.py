"""The user registry: raw user ids from the data <-> integer indices the model sees."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
        Path(path).write_text(json.dumps(self.state_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> UserRegistry:
        return cls.from_state_dict(json.loads(Path(path).read_text()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserRegistry) and self.users == other.users

    def __repr__(self) -> str:
        return f"UserRegistry({len(self)} users)"
