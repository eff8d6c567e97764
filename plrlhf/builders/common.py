"""What every dataset builder does with its triples: write the splits and report the counts."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plrlhf.data.sources import Located, read_records
from plrlhf.data.tables import TABLE_SUFFIXES
from plrlhf.io import atomic_write_text

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def read_published(path: str | Path) -> Iterator[Located]:
    """The records of a source as its publisher ships it, or as Hugging Face does: a JSON-lines or
    JSON file, a parquet/Arrow/CSV file, a ``save_to_disk`` directory (every split of a
    ``DatasetDict``), or a directory of parquet/Arrow files (a dataset repository's layout)."""
    path = Path(path)
    if path.is_file():
        yield from read_records(path)
        return
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        for split in splits:
            yield from read_records(path, split)
        return
    if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
        yield from read_records(path)
        return
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(TABLE_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(path).parts)  # caches, .git
    )
    if not path.is_dir() or not files:
        raise FileNotFoundError(
            f"no data at {path} (a file, a save_to_disk directory or parquet/arrow files)"
        )
    for file in files:
        yield from read_records(file)


def find_table(root: str | Path, name: str) -> Path:
    """Table ``name`` of a multi-table source in ``root``: ``name.jsonl`` (as published), or
    ``name.parquet``, or a directory ``name/`` (a ``save_to_disk`` directory or the parquet files
    of a Hugging Face repository's configuration ``name``)."""
    root = Path(root)
    for candidate in [root / f"{name}{suffix}" for suffix in (*JSON_SUFFIXES, *TABLE_SUFFIXES)] + [
        root / name
    ]:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{root}: no {name}.jsonl, {name}.parquet or {name}/ directory")


def write_splits(
    out_dir: str | Path, splits: dict[str, list[dict[str, Any]]], dropped: Counter
) -> dict[str, Counter]:
    """Write ``<split>.jsonl`` for each split; return triples per user per split, plus the drops."""
    out = Path(out_dir)
    report: dict[str, Counter] = {"dropped": dropped}
    for split, rows in splits.items():
        if not rows:
            warnings.warn(f"the {split} split came out empty ({out / f'{split}.jsonl'})", stacklevel=2)
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        report[split] = Counter(str(row["user_id"]) for row in rows)
    return report
