"""Regenerate the bundled length-preference data in data/synthetic/ (seeded, deterministic)."""

from pathlib import Path

from plrlhf.builders.length_task import make_length_task

if __name__ == "__main__":
    out = Path(__file__).parent / "synthetic"
    for split, counts in make_length_task(out).items():
        print(f"{split}: {sum(counts.values())} triples, {len(counts)} users")
