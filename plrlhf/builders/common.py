"""What every dataset builder does with its triples: write the splits and report the counts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def write_splits(
    out_dir: str | Path, splits: dict[str, list[dict[str, Any]]], dropped: Counter
) -> dict[str, Counter]:
    """Write ``<split>.jsonl`` for each split; return triples per user per split, plus the drops."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Counter] = {"dropped": dropped}
    for split, rows in splits.items():
        with open(out / f"{split}.jsonl", "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        report[split] = Counter(str(row["user_id"]) for row in rows)
    return report
