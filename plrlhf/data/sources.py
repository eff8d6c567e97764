"""Reading preference records from what users have: JSON lines / JSON (plain or gzipped), parquet,
CSV and Arrow files, Hugging Face datasets (``save_to_disk`` directories, the local cache, objects).

A record is a dict as found in the source; :func:`read_records` yields it with its location so
that every later error can name the file and line (or row).
"""

from __future__ import annotations

import gzip
import json
import zlib
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


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a file, each line decoded on its own, so that bad bytes and
    damaged compressed data are reported at their line."""
    number = 0
    with _open_binary(path) as handle:
        while True:
            try:
                raw = handle.readline()
            except (EOFError, OSError, zlib.error) as error:
                raise DataError(
                    f"{path}:{number + 1}", f"corrupt or truncated gzip data after line {number} ({error})"
                ) from None
            if not raw:
                return
            number += 1
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number}", f"not valid UTF-8 ({error.reason} at byte {error.start} of the line)"
                ) from None


def _is_json_array(path: Path) -> bool:
    for _, line in _lines(path):
        if line.strip():
            return line.lstrip().startswith("[")
    return False


def read_records(source: Any, split: str = "train") -> Iterator[Located]:
    """Yield every record of a data source (see :mod:`plrlhf.data.tables` for the formats).

    A JSON file holding one array is read as that array; other JSON files are read line by line.
    Blank lines are skipped. Raises :class:`DataError` naming the file and line on malformed JSON,
    non-UTF-8 bytes, damaged gzip data or a record that is not an object. ``split`` picks the split
    of a ``DatasetDict`` directory.
    """
    from plrlhf.data import tables  # the table formats import pyarrow: only when used

    if tables.is_table_source(source):
        yield from tables.read_table_records(source, split)
        return
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if _is_json_array(path):
        yield from _read_array(path)
    else:
        yield from _read_lines(path)


def _read_lines(path: Path) -> Iterator[Located]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(where, f"malformed JSON ({error.msg}, column {error.colno})") from None
        yield Located(_as_object(record, where), where)


def _read_array(path: Path) -> Iterator[Located]:
    text = "".join(line for _, line in _lines(path))
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
