"""What every dataset builder does with its triples: write the splits and report the counts."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from plrlhf.io import atomic_write_text


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
