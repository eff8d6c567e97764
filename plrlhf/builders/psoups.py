"""P-SOUPS from the Personalized-Soups preference files: six profiles, one user each.

``P1A.json`` .. ``P3B.json``, each one JSON array of ``{user_input, completion_a, completion_b}``
with ``completion_a`` preferred for that profile. The profile's preference instruction, still in
``user_input``, is stripped (both the comma and the no-comma wording the sources use); a record
whose instruction is not found keeps its text and is counted. Records with identical completions
and exact duplicates within a profile are dropped and counted; the same triple under two profiles
stays in both. Seeded split of each profile's triples.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from plrlhf.builders.common import write_splits
from plrlhf.data.sources import DataError, read_records

PROFILES = {
    "P1A": "Generate a response that can be easily understood by an elementary school student.",
    "P1B": "Generate a response that only a PhD Student in that specific field could understand.",
    "P2A": "Generate a response that is concise and to the point, without being verbose.",
    "P2B": "Generate a response that is very informative, without missing any background information.",
    "P3A": "Generate a response that is friendly, witty, funny, and humorous, like a close friend.",
    "P3B": "Generate a response in an unfriendly manner.",
}


def _variants(instruction: str) -> list[str]:
    return sorted({instruction, instruction.replace(",", "")}, key=len, reverse=True)


def strip_instruction(text: str, instruction: str) -> str | None:
    """``text`` without the profile's instruction, or ``None`` when it is not in the text."""
    for variant in _variants(instruction):
        if variant in text:
            return " ".join(text.replace(variant, "").split(" ")).strip()
    return None


def build_psoups(
    source: str,
    out: str = "data/psoups",
    test_share: float = 0.1,
    validation_share: float = 0.05,
    seed: int = 123,
    profiles: dict[str, str] | None = None,
) -> dict[str, Counter]:
    """P-SOUPS: six preference profiles as users.

    Writes ``train/validation/test.jsonl`` (users ``P1A`` .. ``P3B``); returns the counts.

    Args:
        source: directory with ``P1A.json`` .. ``P3B.json``.
        out: output directory.
        test_share: share of all pairs (every profile together) for test, as the recipe's one
            seeded 90/10 split.
        validation_share: share of the remaining pairs held out for validation (not in the recipe).
        seed: seed of the split.
        profiles: profile name -> the instruction appended to its prompts (default: the six).
    """
    profiles = profiles or PROFILES
    dropped: Counter = Counter()
    rows: list[dict[str, Any]] = []
    for profile, instruction in profiles.items():
        seen: set[tuple[str, str, str]] = set()
        for located in read_records(Path(source) / f"{profile}.json"):
            record, where = located.record, located.where
            try:
                key = (record["user_input"], record["completion_a"], record["completion_b"])
            except KeyError as missing:
                raise DataError(where, f"missing field {missing}") from None
            if key[1].strip() == key[2].strip():
                dropped["identical completions"] += 1
                continue
            if key in seen:
                dropped["duplicate within profile"] += 1
                continue
            seen.add(key)
            prompt = strip_instruction(key[0], instruction)
            if prompt is None:
                dropped["(kept) preference instruction not found"] += 1
                prompt = key[0].strip()
            rows.append(
                {
                    "user_id": profile,
                    "group": profile[:2],
                    "prompt": prompt,
                    "chosen": key[1],
                    "rejected": key[2],
                }
            )
    random.Random(seed).shuffle(rows)
    n_test = math.ceil(test_share * len(rows))  # as datasets' train_test_split rounds the test part
    rest, test = rows[: len(rows) - n_test], rows[len(rows) - n_test :]
    n_val = int(validation_share * len(rest))
    splits = {"train": rest[n_val:], "validation": rest[:n_val], "test": test}
    return write_splits(out, splits, dropped)
