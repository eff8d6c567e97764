"""``plrlhf data <name> ...``: build preference JSON lines from a dataset's published files."""

from __future__ import annotations

import argparse
from collections import Counter

from plrlhf.builders.hh_relabeled import build_hh_relabeled
from plrlhf.builders.length_task import make_length_task


def _print_report(report: dict[str, Counter], out: str) -> None:
    for split, counts in report.items():
        if split == "dropped":
            if counts:
                print("dropped: " + ", ".join(f"{n} {why}" for why, n in counts.items()))
            continue
        users = ", ".join(f"{u}: {n}" for u, n in sorted(counts.items()))
        print(f"{split}: {sum(counts.values())} triples, {len(counts)} users ({users})")
    print(f"written to {out}/{{train,validation,test}}.jsonl")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="plrlhf data", description=__doc__)
    builders = parser.add_subparsers(dest="name", required=True)
    hh = builders.add_parser("hh-relabeled", help="relabeled HH-RLHF: helpful and harmless annotators")
    hh.add_argument(
        "--source", default="../shared/data/hh_rlhf_relabeled", help="directory of the .jsonl.gz files"
    )
    hh.add_argument("--out", default="data/hh_relabeled")
    hh.add_argument("--seed", type=int, default=123)
    length = builders.add_parser("length", help="the synthetic length-preference task")
    length.add_argument("--out", default="data/synthetic")
    length.add_argument("--users", type=int, default=8)
    length.add_argument("--unseen-users", type=int, default=3)
    length.add_argument("--majority-share", type=float, default=0.7)
    length.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    if args.name == "hh-relabeled":
        report = build_hh_relabeled(args.source, args.out, seed=args.seed)
    else:
        report = make_length_task(
            args.out,
            n_users=args.users,
            n_unseen_users=args.unseen_users,
            majority_share=args.majority_share,
            seed=args.seed,
        )
    _print_report(report, args.out)
