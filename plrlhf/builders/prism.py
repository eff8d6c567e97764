"""PRISM (prism-alignment): real users, multi-turn conversations, stated preferences.

Reads ``conversations.jsonl`` and ``survey.jsonl``. Every turn yields one triple per rejected reply
(the chosen reply against each other reply of that turn); the prompt is the conversation so far as
chat messages (earlier user messages and the chosen reply of each earlier turn). Conversations with
no usable turn are dropped (counted) before the split.

Users are shuffled with the seed; the first ``seen_share`` are seen, except those with a single
conversation, which join the unseen users. Seen users' conversations are shuffled; ``train_share``
of them are for training (``validation_share`` of those held out for validation), the rest and all
unseen users' conversations are the test split.

With ``user_text`` the user's explicit text leads the conversation as a system message: their three
highest-rated stated preferences (by the ``stated_prefs`` ratings; the official code used
``order_stated_prefs``, which is only the order the sliders were shown), self description and
demographics.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

from plrlhf.builders.common import find_table, read_published, write_splits
from plrlhf.data.sources import DataError

EMPTY = "EMPTY STRING"
DEMOGRAPHICS = ("age", "gender", "education", "employment_status", "marital_status", "english_proficiency")


def user_text(survey: dict[str, Any]) -> str:
    """The user's explicit text: top-3 stated preferences, self description, demographics."""
    ratings = {k: v for k, v in (survey.get("stated_prefs") or {}).items() if isinstance(v, int | float)}
    top = sorted(ratings, key=lambda k: (-ratings[k], k))[:3]
    lines = []
    if top:
        lines.append("What matters most to me in a response: " + ", ".join(top) + ".")
    if survey.get("self_description"):
        lines.append(f"About me: {survey['self_description'].strip()}")
    facts = [f"{k.replace('_', ' ')}: {survey[k]}" for k in DEMOGRAPHICS if survey.get(k)]
    if facts:
        lines.append("; ".join(facts) + ".")
    return "\n".join(lines)


def conversation_triples(conversation: dict[str, Any], dropped: Counter) -> list[dict[str, Any]]:
    turns: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for item in conversation["conversation_history"]:
        turns[int(item["turn"])].append(item)
    history: list[dict[str, str]] = []
    triples = []
    for turn in sorted(turns):
        users = [m for m in turns[turn] if m["role"] == "user"]
        models = [m for m in turns[turn] if m["role"] == "model"]
        chosen = [m for m in models if m.get("if_chosen")]
        if not users or not chosen:
            dropped["turn without user message or chosen reply"] += 1
            break  # later turns would lack their history
        message = {"role": "user", "content": users[0]["content"]}
        best = chosen[0]["content"]
        for other in models:
            if other is chosen[0]:
                continue
            if other["content"].strip() in ("", EMPTY) or best.strip() in ("", EMPTY):
                dropped["empty reply"] += 1
                continue
            triples.append(
                {"prompt": [*history, message], "chosen": best, "rejected": other["content"], "turn": turn}
            )
        history += [message, {"role": "assistant", "content": best}]
    return triples


def build_prism(
    source: str,
    out: str = "data/prism",
    seen_share: float = 0.9,
    train_share: float = 0.9,
    validation_share: float = 0.1,
    seed: int = 123,
    with_user_text: bool = True,
) -> dict[str, Counter]:
    """PRISM: real users, their conversations and stated preferences.

    Writes ``train/validation/test.jsonl`` from a PRISM directory; returns the counts.

    Args:
        source: directory with ``conversations.jsonl`` and ``survey.jsonl`` as published, or the
            same tables as Hugging Face serves them (``conversations.parquet`` or a directory
            ``conversations/`` of parquet files or from ``save_to_disk``; likewise ``survey``).
        out: output directory.
        seen_share: share of users seen in training.
        train_share: share of each seen user's dialogues for training (``int(share * n)``; the
            rest of that user's dialogues go to test).
        validation_share: share of all training dialogues held out for validation.
        seed: seed of the user and dialogue splits.
        with_user_text: prepend the users' own survey text to their prompts.
    """
    surveys = {r.record["user_id"]: r.record for r in read_published(find_table(source, "survey"))}
    dropped: Counter = Counter()
    by_user: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for located in read_published(find_table(source, "conversations")):
        record, where = located.record, located.where
        for key in ("conversation_id", "user_id", "conversation_history"):
            if key not in record:
                raise DataError(where, f"missing field {key!r}")
        triples = conversation_triples(record, dropped)
        if not triples:
            dropped["conversation without a usable turn"] += 1
            continue
        text = user_text(surveys.get(record["user_id"], {})) if with_user_text else ""
        for triple in triples:
            if text:
                triple["prompt"] = [{"role": "system", "content": text}, *triple["prompt"]]
            triple.update(
                user_id=record["user_id"],
                group=record.get("conversation_type", ""),
                conversation_id=record["conversation_id"],
            )
        by_user[record["user_id"]].append(triples)
    rng = random.Random(seed)
    users = sorted(by_user)
    rng.shuffle(users)
    n_seen = int(seen_share * len(users))
    # The recipe: seen users with a single dialogue move to unseen (all their dialogues to test).
    seen = [u for u in users[:n_seen] if len(by_user[u]) > 1]
    unseen = [u for u in users if u not in set(seen)]
    train_part, test_part = [], []
    for user in seen:  # each seen user's own dialogues: int(train_share * n) to train, the rest to test
        dialogues = list(by_user[user])
        rng.shuffle(dialogues)
        n_train = int(train_share * len(dialogues))
        train_part += dialogues[:n_train]
        test_part += dialogues[n_train:]
    # Validation (not in the recipe): a seeded share of all training dialogues.
    rng.shuffle(train_part)
    n_val = int(validation_share * len(train_part))
    splits = {
        "train": [t for c in train_part[n_val:] for t in c],
        "validation": [t for c in train_part[:n_val] for t in c],
        "test": [t for c in test_part for t in c] + [t for u in unseen for c in by_user[u] for t in c],
    }
    return write_splits(out, splits, dropped)
