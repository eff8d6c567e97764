"""The paper's length-preference task in miniature: users who want longer or shorter answers.

Each prompt asks for a summary of a short note; the two candidate summaries tell the same facts in
fewer or more sentences. A *majority* of users prefers the longer summary and a *minority* the
shorter one, each user consistently (method.md, "TL;DR length task"). Users that appear only in the
test split are *unseen*. The text is plain English from templates, so that a model trained on it
can later generate readable summaries.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from plrlhf.builders.common import write_splits

NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "David",
    "Ella",
    "Farid",
    "Grace",
    "Hugo",
    "Iris",
    "Jonas",
    "Kira",
    "Leo",
    "Maya",
    "Nils",
    "Olga",
    "Pablo",
    "Rosa",
    "Sam",
    "Tara",
    "Yusuf",
]
PLACES = [
    "the library",
    "the harbour",
    "the old bakery",
    "the town hall",
    "the park",
    "the train station",
    "the market",
    "the school garden",
    "the museum",
    "the river bank",
]
ACTIONS = [
    "painted a mural",
    "fixed a bicycle",
    "planted tomatoes",
    "baked bread",
    "repaired the roof",
    "organised a concert",
    "cleaned the windows",
    "built a bench",
    "read stories to children",
    "sold old books",
    "found a lost dog",
    "tested a new recipe",
]
DAYS = [
    "on Monday",
    "on Tuesday",
    "on Wednesday",
    "on Thursday",
    "on Friday",
    "on Saturday",
    "on Sunday",
    "last week",
    "yesterday",
    "this morning",
]
MOODS = ["cheerful", "tired", "proud", "nervous", "relaxed", "busy", "curious", "calm"]
WEATHER = [
    "it was raining",
    "the sun was out",
    "a cold wind was blowing",
    "the air was warm",
    "fog covered the streets",
    "snow had just fallen",
]
RESULTS = [
    "Everyone liked the result.",
    "Some neighbours came to help.",
    "It took longer than planned.",
    "A local paper wrote about it.",
    "The work will continue next month.",
    "Nobody had expected it to go so well.",
    "Children watched with great interest.",
    "It cost less than people feared.",
]
REQUESTS = [
    "Summarize the note.",
    "Give a summary of this note.",
    "What happened? Summarize.",
    "Write a summary of the note below.",
]


@dataclass(frozen=True)
class _Story:
    name: str
    action: str
    place: str
    day: str
    mood: str
    weather: str
    results: tuple[str, str]

    def note(self) -> str:
        return (
            f"{self.name} {self.action} at {self.place} {self.day}. {self.weather.capitalize()}, "
            f"and {self.name} felt {self.mood}. {self.results[0]} {self.results[1]}"
        )

    def summary(self, sentences: int) -> str:
        """A summary of 1 to 4 sentences; more sentences tell more of the note."""
        parts = [f"{self.name} {self.action} at {self.place}."]
        if sentences >= 2:
            parts.append(f"This happened {self.day} while {self.weather}.")
        if sentences >= 3:
            parts.append(f"{self.name} felt {self.mood}. {self.results[0]}")
        if sentences >= 4:
            parts.append(self.results[1])
        return " ".join(parts)


def _story(rng: random.Random) -> _Story:
    return _Story(
        rng.choice(NAMES),
        rng.choice(ACTIONS),
        rng.choice(PLACES),
        rng.choice(DAYS),
        rng.choice(MOODS),
        rng.choice(WEATHER),
        tuple(rng.sample(RESULTS, 2)),
    )


# Sentence counts a "medium" user prefers over any other: no pair is a tie for them.
MEDIUM_PAIRS = [(1, 2), (1, 3), (2, 4), (3, 4)]


def _triple(rng: random.Random, user: str, taste: str, group: str) -> dict[str, str]:
    """One triple for a user who prefers ``longer``, ``shorter`` or ``medium`` (2-3 sentences
    over 1 or 4) summaries."""
    story = _story(rng)
    short, long = rng.choice(MEDIUM_PAIRS) if taste == "medium" else sorted(rng.sample([1, 2, 3, 4], 2))
    short_text, long_text = story.summary(short), story.summary(long)
    if taste == "medium":
        prefers_longer = abs(long - 2.5) < abs(short - 2.5)
    else:
        prefers_longer = taste == "longer"
    chosen, rejected = (long_text, short_text) if prefers_longer else (short_text, long_text)
    prompt = f"{rng.choice(REQUESTS)}\nNote: {story.note()}\nSummary:"
    return {
        "user_id": user,
        "group": group,
        "prompt": prompt,
        "chosen": " " + chosen,
        "rejected": " " + rejected,
    }


def make_length_task(
    out: str = "data/synthetic",
    users: int = 8,
    unseen_users: int = 3,
    majority_share: float = 0.7,
    train_per_user: int = 250,
    validation_per_user: int = 25,
    test_per_user: int = 40,
    seed: int = 123,
    shares: dict[str, float] | None = None,
) -> dict[str, Counter]:
    """The synthetic length-preference task (the bundled data).

    Seen users are ``user_0 .. user_{n-1}``; ``round(majority_share * n)`` of them (chosen with the
    seed) prefer longer summaries. Unseen users ``new_0 ..`` appear only in the test split, with the
    same majority share. Returns the number of triples per user for each split.

    Args:
        out: output directory.
        users: seen users.
        unseen_users: users of the test split only.
        majority_share: share of users who prefer the longer summary.
        train_per_user: training triples per seen user.
        validation_per_user: validation triples per seen user.
        test_per_user: test triples per user.
        seed: seed of everything.
        shares: instead of two groups, the share of users of each taste among ``longer``,
            ``shorter`` and ``medium`` (2-3 sentences over 1 or 4), e.g. ``{longer: 0.6, shorter:
            0.25, medium: 0.15}``; the group label is the taste. Counts are rounded, the largest
            share taking the remainder.
    """
    rng = random.Random(seed)
    if shares is not None:
        unknown = set(shares) - {"longer", "shorter", "medium"}
        if unknown or abs(sum(shares.values()) - 1) > 1e-6:
            raise ValueError(f"shares must give longer/shorter/medium summing to 1, got {shares}")

    def assign(prefix: str, n: int) -> dict[str, tuple[str, str]]:
        """Each user's taste and group label."""
        names = [f"{prefix}_{i}" for i in range(n)]
        if shares is None:
            majority = set(rng.sample(names, round(majority_share * n)))
            return {u: ("longer", "majority") if u in majority else ("shorter", "minority") for u in names}
        order = sorted(shares, key=shares.get)  # smallest first; the largest takes the remainder
        counts = {t: round(shares[t] * n) for t in order[:-1]}
        counts[order[-1]] = n - sum(counts.values())
        shuffled = rng.sample(names, n)
        tastes = [t for t in order for _ in range(counts[t])]
        return {u: (tastes[shuffled.index(u)], tastes[shuffled.index(u)]) for u in names}

    seen, unseen = assign("user", users), assign("new", unseen_users)
    plan = {
        "train": (seen, train_per_user),
        "validation": (seen, validation_per_user),
        "test": ({**seen, **unseen}, test_per_user),
    }
    splits = {}
    for split, (pool, per_user) in plan.items():
        rows = [
            _triple(rng, user, taste, group) for user, (taste, group) in pool.items() for _ in range(per_user)
        ]
        rng.shuffle(rows)
        splits[split] = rows
    return write_splits(out, splits, Counter())


def write_new_user_preferences(
    path: str | Path, users: dict[str, bool], per_user: int = 8, seed: int = 321
) -> Counter:
    """Labelled triples of users who arrive after training (``{user: prefers_longer}``), for
    ``plrlhf adapt``; drawn with their own seed, so they differ from every split's triples."""
    rng = random.Random(seed)
    rows = [
        _triple(rng, user, "longer" if longer else "shorter", "majority" if longer else "minority")
        for user, longer in users.items()
        for _ in range(per_user)
    ]
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Counter(row["user_id"] for row in rows)
