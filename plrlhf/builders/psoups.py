"""P-SOUPS from the Personalized-Soups preference files: six profiles, one user each.

``P1A.json`` .. ``P3B.json``, each one JSON array of ``{user_input, completion_a, completion_b}``
with ``completion_a`` preferred for that profile. The profile's preference instruction, still in
``user_input``, is stripped (both the comma and the no-comma wording the sources use); a record
whose instruction is not found keeps its text and is counted. Records with identical completions
and exact duplicates within a profile are dropped and counted; the same triple under two profiles
stays in both. Seeded split of each profile's triples.
"""

from __future__ import annotations

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
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
    seed: int = 123,
    profiles: dict[str, str] | None = None,
) -> dict[str, Counter]:
    """P-SOUPS: six preference profiles as users.

    Writes ``train/validation/test.jsonl`` (users ``P1A`` .. ``P3B``); returns the counts.

    Args:
        source: directory with ``P1A.json`` .. ``P3B.json``.
        out: output directory.
        fractions: train/validation/test shares of each profile's pairs.
        seed: seed of the split.
        profiles: profile name -> the instruction appended to its prompts (default: the six).
    """
    profiles = profiles or PROFILES
    dropped: Counter = Counter()
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for profile, instruction in profiles.items():
        seen: set[tuple[str, str, str]] = set()
        rows = []
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
        random.Random(f"{seed}-{profile}").shuffle(rows)
        n_train, n_val = round(fractions[0] * len(rows)), round(fractions[1] * len(rows))
        splits["train"] += rows[:n_train]
        splits["validation"] += rows[n_train : n_train + n_val]
        splits["test"] += rows[n_train + n_val :]
    return write_splits(out, splits, dropped)
