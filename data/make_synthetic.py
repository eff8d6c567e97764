"""Regenerate the bundled length-preference data in data/synthetic/ (seeded, deterministic)."""

from pathlib import Path

from plrlhf.builders.length_task import make_length_task, write_new_user_preferences

if __name__ == "__main__":
    out = Path(__file__).parent / "synthetic"
    for split, counts in make_length_task(out).items():
        print(f"{split}: {sum(counts.values())} triples, {len(counts)} users")
    # Users of the test split never seen in training, with a few labelled preferences each:
    # the input of `plrlhf adapt` (README, "Users who arrive after training").
    new_users = {"new_0": True, "new_1": True, "new_2": False}
    counts = write_new_user_preferences(out / "new_users.jsonl", new_users)
    print(f"new_users: {sum(counts.values())} triples, {len(counts)} users")
