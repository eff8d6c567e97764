"""Reading preference records from the files users have: JSON lines (plain or gzipped) and JSON.

A record is a dict as found in the file; :func:`read_records` yields it with its location so that
every later error can name the file and line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input, with the place it was found."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


@dataclass(frozen=True)
class Located:
    """A record and where it came from (``path:line`` for JSON lines, ``path[record i]`` for JSON)."""

    record: dict[str, Any]
    where: str


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", errors="strict")


def _is_json_array(path: Path) -> bool:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def read_records(path: str | Path) -> Iterator[Located]:
    """Yield every record of a ``.jsonl``/``.json`` file (optionally ``.gz``).

    A JSON file holding one array is read as that array; anything else is read line by line.
    Blank lines are skipped. Raises :class:`DataError` naming the file and line on malformed JSON,
    non-UTF-8 bytes or a record that is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        if _is_json_array(path):
            yield from _read_array(path)
        else:
            yield from _read_lines(path)
    except UnicodeDecodeError as error:
        raise DataError(str(path), f"not valid UTF-8 ({error.reason} at byte {error.start})") from None


def _read_lines(path: Path) -> Iterator[Located]:
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(where, f"malformed JSON ({error.msg}, column {error.colno})") from None
            yield Located(_as_object(record, where), where)


def _read_array(path: Path) -> Iterator[Located]:
    with _open_text(path) as handle:
        text = handle.read()
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}:{error.lineno}", f"malformed JSON ({error.msg}, column {error.colno})"
        ) from None
    for index, record in enumerate(records):
        where = f"{path}[record {index}]"
        yield Located(_as_object(record, where), where)


def _as_object(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(where, f"expected a JSON object, got {type(record).__name__}")
    return record
