"""Relabeled HH-RLHF: two annotator types (``helpful``, ``harmless``) as two users.

Source: the gzipped JSON lines of ``../shared/data/hh_rlhf_relabeled`` (Anthropic HH-RLHF test
split relabeled per annotator type; fields ``prompt``, ``responses``, ``label``, ``objective``).
Each row becomes a triple for user ``objective``: ``responses[label]`` is chosen. The split is by
prompt (seeded), so no prompt is in two splits.

The ``prompt`` field stops after the last human turn; the assistant's cue ``\\n\\nAssistant:`` is
appended (as in the original HH dialogues) and responses get their leading space. With
``conversational``, prompts are written as chat messages instead (one per turn) and responses
as plain text: the data module renders them with the tokenizer's chat template, so an instruct
model sees the format it was tuned on, and each response ends with its end of turn.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from plrlhf.builders.common import write_splits
from plrlhf.data.sources import DataError, read_records

FILES = ("helpful.test.jsonl.gz", "harmless.test.jsonl.gz")
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")


def read_hh_pairs(
    source: str | Path, files: tuple[str, ...] = FILES
) -> tuple[list[tuple[str, str, str]], Counter]:
    """``(prompt, response_0, response_1)`` of every row (prompt ending in the assistant's cue,
    responses stripped), in file order, and the drops (identical responses)."""
    pairs, dropped = [], Counter()
    for located in _checked_rows(source, files):
        record = located.record
        first, second = (r.strip() for r in record["responses"])
        if first == second:
            dropped["identical responses"] += 1
            continue
        pairs.append((_prompt(record["prompt"]), first, second))
    return pairs, dropped


def _checked_rows(source: str | Path, files: tuple[str, ...]):
    for name in files:
        for located in read_records(Path(source) / name):
            record, where = located.record, located.where
            for key in ("prompt", "responses", "label", "objective"):
                if key not in record:
                    raise DataError(where, f"missing field {key!r}")
            responses, label = record["responses"], record["label"]
            if not (
                isinstance(responses, list)
                and len(responses) == 2
                and all(isinstance(r, str) for r in responses)
                and label in (0, 1)
            ):
                raise DataError(where, "expected two string 'responses' and a 'label' of 0 or 1")
            yield located


def _prompt(prompt: str) -> str:
    prompt = prompt.rstrip()
    return prompt if prompt.endswith("Assistant:") else prompt + ASSISTANT


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """An HH transcript (``Human: ...\\n\\nAssistant: ...``, ending with the assistant's cue) as
    chat messages, one per turn; the cue itself is the template's generation prompt."""
    text = prompt.rstrip()
    text = text[: -len("Assistant:")].rstrip() if text.endswith("Assistant:") else text
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise ValueError(f"not an HH transcript (it must start with 'Human:'): {prompt[:80]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]


def conversation(row: dict[str, Any]) -> dict[str, Any]:
    """A triple of HH text as chat messages (see ``conversational`` in the module's docstring)."""
    return {
        **row,
        "prompt": hh_messages(row["prompt"]),
        "chosen": row["chosen"].strip(),
        "rejected": row["rejected"].strip(),
    }


def build_hh_relabeled(
    source: str | Path = "../shared/data/hh_rlhf_relabeled",
    out: str | Path = "data/hh_relabeled",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    max_train: int | None = None,
    seed: int = 123,
    files: tuple[str, ...] = FILES,
    conversational: bool = False,
) -> dict[str, Counter]:
    """Relabeled HH-RLHF: helpful and harmless annotators as two users.

    Writes ``train/validation/test.jsonl`` to ``out``; returns triples per user per split. Rows
    whose two responses are identical are dropped and counted (``report["dropped"]``).

    Args:
        source: directory of the relabeled HH-RLHF ``.jsonl.gz`` files.
        out: output directory.
        fractions: train/validation/test shares of the prompts.
        max_train: keep only this many training triples, the first of the shuffled split (a
            training budget). Validation and test are not affected.
        seed: seed of the split.
        files: the source files read.
        conversational: prompts as chat messages, rendered with the tokenizer's chat template
            (same triples, same split).
    """
    rows, dropped = [], Counter()
    for located in _checked_rows(source, files):
        record = located.record
        responses, label = [r.strip() for r in record["responses"]], record["label"]
        if responses[0] == responses[1]:
            dropped["identical responses"] += 1
            continue
        rows.append(
            {
                "user_id": record["objective"],
                "group": record["objective"],
                "prompt": _prompt(record["prompt"]),
                "chosen": " " + responses[label],
                "rejected": " " + responses[1 - label],
                "flipped": record.get("original_label", label) != label,
            }
        )
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(seed).shuffle(prompts)
    n_train = round(fractions[0] * len(prompts))
    n_val = round(fractions[1] * len(prompts))
    split_of = {
        p: "train" if i < n_train else "validation" if i < n_train + n_val else "test"
        for i, p in enumerate(prompts)
    }
    rng = random.Random(seed + 1)
    splits = {}
    for split in ("train", "validation", "test"):
        splits[split] = [r for r in rows if split_of[r["prompt"]] == split]
        rng.shuffle(splits[split])  # the source lists one annotator type after the other
    if max_train is not None:
        if max_train < 1:
            raise ValueError(f"max_train must be >= 1, got {max_train}")
        splits["train"] = splits["train"][:max_train]
    if conversational:
        splits = {split: [conversation(r) for r in rows] for split, rows in splits.items()}
    return write_splits(out, splits, dropped)
