"""TL;DR length task from OpenAI's summarize-from-feedback comparison files (method.md).

Keeps comparisons whose two summaries both come from supervised policies (``sup`` in the policy
name, no ``ppo``, no ``cnn``). Workers are ranked by their number of *train* comparisons after that
filter; the top K are the seen users. Every worker gets a synthetic preference, drawn once in rank
order with a seeded generator: the longer summary (in characters) with probability
``longer_share``, else the shorter; the original human choice is discarded. Pairs with identical
summaries or equal lengths are dropped and counted (the official code keeps equal lengths with a
contradictory label).

Splits: ``train`` = train comparisons of the seen users; ``validation`` = ``valid1`` and
``test`` = ``valid2`` comparisons of all workers, so the others appear as unseen users there. The
train comparisons of the other workers are dropped and counted (every drop is reported).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from plrlhf.builders.common import read_published, write_splits
from plrlhf.data.sources import DataError

SPLITS = {"train": "train", "valid1": "validation", "valid2": "test"}


def _supervised(policy: str) -> bool:
    return "sup" in policy and "ppo" not in policy and "cnn" not in policy


def prompt_of(info: dict[str, Any]) -> str:
    """The official prompt, without its trailing space (summaries start with one)."""
    subreddit, title, post = (info.get(k, "") for k in ("subreddit", "title", "post"))
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def build_tldr_length(
    source: str,
    out: str = "data/tldr_length",
    users: int = 10,
    longer_share: float = 0.7,
    seed: int = 3456,
) -> dict[str, Counter]:
    """TL;DR comparisons with synthetic length preferences (the paper's first experiment).

    Writes ``train/validation/test.jsonl``; returns triples per user per split, and the drops.

    Args:
        source: a directory of summarize-from-feedback comparison files (every ``batch*.json``,
            JSON lines despite the suffix, is read), or one such file; or the ``comparisons``
            configuration as Hugging Face serves it (parquet files, or a ``save_to_disk``
            directory: all its splits are read).
        out: output directory.
        users: seen users (workers), split into longer- and shorter-preferring.
        longer_share: share of users who prefer the longer summary.
        seed: seed of the users' preferences and the split.
    """
    dropped: Counter = Counter()
    kept = []
    root = Path(source)
    files = sorted(root.glob("batch*.json")) if root.is_dir() else [root]
    # As published (batch*.json files), or as Hugging Face serves the comparisons (parquet files
    # or a save_to_disk DatasetDict; its rows keep the original split in their `split` field).
    for path in files or [root]:
        for located in read_published(path):
            record, where = located.record, located.where
            summaries = record.get("summaries")
            if not isinstance(summaries, list) or len(summaries) != 2 or "worker" not in record:
                raise DataError(where, "expected 'summaries' (two) and 'worker'")
            if not all(_supervised(str(s.get("policy", ""))) for s in summaries):
                dropped["not both supervised policies"] += 1
                continue
            a, b = (s["text"] for s in summaries)
            if a.strip() == b.strip():
                dropped["identical summaries"] += 1
            elif len(a) == len(b):
                dropped["equal lengths"] += 1
            elif record.get("split") not in SPLITS:
                dropped[f"split {record.get('split')!r}"] += 1
            else:
                kept.append(record)
    train_counts = Counter(r["worker"] for r in kept if r["split"] == "train")
    ranked = [w for w, _ in sorted(train_counts.items(), key=lambda item: (-item[1], item[0]))]
    others = sorted({r["worker"] for r in kept} - set(ranked))
    rng = random.Random(seed)
    prefers_longer = {w: rng.random() < longer_share for w in ranked + others}
    seen = set(ranked[:users])
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for record in kept:
        worker, split = record["worker"], SPLITS[record["split"]]
        if worker not in seen and split == "train":
            # the recipe: users outside the top K are the generic user, in evaluation only
            dropped["train comparison of a worker outside the top K"] += 1
            continue
        longer, shorter = sorted((s["text"] for s in record["summaries"]), key=len, reverse=True)
        chosen, rejected = (longer, shorter) if prefers_longer[worker] else (shorter, longer)
        splits[split].append(
            {
                "user_id": worker,
                "group": "prefers longer" if prefers_longer[worker] else "prefers shorter",
                "prompt": prompt_of(record.get("info", {})),
                "chosen": chosen if chosen.startswith(" ") else " " + chosen,
                "rejected": rejected if rejected.startswith(" ") else " " + rejected,
            }
        )
    return write_splits(out, splits, dropped)
