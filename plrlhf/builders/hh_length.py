"""The paper's length task on real text: HH-RLHF prompts and responses, synthetic length users.

The paper's first experiment gives real summary pairs synthetic users: most prefer the longer
response, a minority the shorter one (method.md, "TL;DR length task"). Here the pairs are the real
dialogues and assistant replies of relabeled HH-RLHF (``../shared/data/hh_rlhf_relabeled``); their
annotator labels are ignored. Each pair is given to one user, chosen with the seed:

- seen users ``user_0 .. user_{n-1}``: ``round(majority_share * n)`` prefer the longer response
  (group ``majority``), the others the shorter one (``minority``); they have triples in every split;
- unseen users ``new_0 ..``: test split only, with the same majority share.

Pairs whose two responses differ in length (characters) by less than ``min_length_ratio`` carry no
clear length preference and are dropped and counted, as are identical responses and repeated pairs.
The split is by prompt (seeded), so no prompt is in two splits.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from plrlhf.builders.common import write_splits
from plrlhf.builders.hh_relabeled import FILES, conversation, read_hh_pairs


def _users(prefix: str, n: int, majority_share: float, rng: random.Random) -> dict[str, bool]:
    users = [f"{prefix}_{i}" for i in range(n)]
    majority = set(rng.sample(users, round(majority_share * n)))
    return {u: u in majority for u in users}


def build_hh_length(
    source: str | Path = "../shared/data/hh_rlhf_relabeled",
    out: str | Path = "data/hh_length",
    users: int = 10,
    unseen_users: int = 3,
    majority_share: float = 0.7,
    min_length_ratio: float = 1.5,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    max_train: int | None = None,
    seed: int = 123,
    files: tuple[str, ...] = FILES,
    conversational: bool = False,
) -> dict[str, Counter]:
    """The paper's length task on real text: HH-RLHF pairs, seeded longer/shorter users.

    Writes ``train/validation/test.jsonl`` to ``out``; returns triples per user per split.

    Args:
        source: directory of the relabeled HH-RLHF ``.jsonl.gz`` files.
        out: output directory.
        users: seen users (in every split).
        unseen_users: users of the test split only.
        majority_share: share of users (seen and unseen alike) who prefer the longer response.
        min_length_ratio: pairs whose longer response is shorter than this many times the other
            (in characters) are dropped.
        fractions: train/validation/test shares of the prompts.
        max_train: keep only this many training triples (a training budget; every user keeps an
            equal share). Validation and test are not affected.
        seed: seed of the users' preferences, the split and the assignment of pairs to users.
        files: the source files read.
        conversational: prompts as chat messages, one per turn, rendered with the tokenizer's chat
            template (an instruct model sees its own format and each response ends with its end
            of turn); the same triples, users and split.
    """
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    if min_length_ratio < 1.0:
        raise ValueError(f"min_length_ratio must be >= 1, got {min_length_ratio}")
    pairs, dropped = read_hh_pairs(source, files)
    unique: dict[tuple[str, frozenset[str]], tuple[str, str]] = {}
    kept: list[tuple[str, str, str]] = []
    for prompt, first, second in pairs:
        key = (prompt, frozenset((first, second)))
        if key in unique:
            dropped["repeated pair"] += 1
            continue
        unique[key] = (first, second)
        short, long = sorted((first, second), key=len)
        if len(long) < min_length_ratio * max(1, len(short)):
            dropped[f"lengths too close (ratio < {min_length_ratio})"] += 1
            continue
        kept.append((prompt, long, short))

    rng = random.Random(seed)
    seen = _users("user", users, majority_share, rng)
    unseen = _users("new", unseen_users, majority_share, rng)
    prompts = sorted({prompt for prompt, _, _ in kept})
    rng.shuffle(prompts)
    n_train = round(fractions[0] * len(prompts))
    n_val = round(fractions[1] * len(prompts))
    split_of = {
        p: "train" if i < n_train else "validation" if i < n_train + n_val else "test"
        for i, p in enumerate(prompts)
    }
    splits: dict[str, list[dict[str, str]]] = {}
    for split in ("train", "validation", "test"):
        rows = [k for k in kept if split_of[k[0]] == split]
        rng.shuffle(rows)
        if split == "train" and max_train is not None:
            rows = rows[:max_train]
        pool = {**seen, **unseen} if split == "test" else seen
        names = list(pool)
        splits[split] = []
        # Round robin over the shuffled pairs: every user gets an equal share of each split.
        for i, (prompt, long, short) in enumerate(rows):
            user = names[i % len(names)]
            longer = pool[user]
            splits[split].append(
                {
                    "user_id": user,
                    "group": "majority" if longer else "minority",
                    "prompt": prompt,
                    "chosen": " " + (long if longer else short),
                    "rejected": " " + (short if longer else long),
                }
            )
    for split, rows in splits.items():
        if not rows:
            raise ValueError(f"the {split} split is empty: {len(kept)} pairs kept of the source")
    if conversational:
        splits = {split: [conversation(r) for r in rows] for split, rows in splits.items()}
    return write_splits(out, splits, dropped)
