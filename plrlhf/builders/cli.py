"""``plrlhf data <name> ...``: build preference JSON lines from a dataset's published files."""

from __future__ import annotations

import argparse
from collections import Counter

from plrlhf.builders.hh_relabeled import build_hh_relabeled
from plrlhf.builders.length_task import make_length_task
from plrlhf.builders.prism import build_prism
from plrlhf.builders.psoups import build_psoups
from plrlhf.builders.tldr import build_tldr_length


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
    tldr = builders.add_parser("tldr-length", help="TL;DR comparisons with synthetic length preferences")
    tldr.add_argument("files", nargs="+", help="comparison files (batch*.json, JSON lines)")
    tldr.add_argument("--out", default="data/tldr_length")
    tldr.add_argument("--users", type=int, default=10)
    tldr.add_argument("--longer-share", type=float, default=0.7)
    tldr.add_argument("--seed", type=int, default=3456)
    psoups = builders.add_parser("psoups", help="P-SOUPS: six preference profiles as users")
    psoups.add_argument("--source", required=True, help="directory with P1A.json .. P3B.json")
    psoups.add_argument("--out", default="data/psoups")
    psoups.add_argument("--seed", type=int, default=123)
    prism = builders.add_parser("prism", help="PRISM: real users, conversations, stated preferences")
    prism.add_argument("--source", required=True, help="directory with conversations.jsonl and survey.jsonl")
    prism.add_argument("--out", default="data/prism")
    prism.add_argument("--seed", type=int, default=123)
    prism.add_argument("--no-user-text", action="store_true", help="leave out the users' explicit text")
    length = builders.add_parser("length", help="the synthetic length-preference task")
    length.add_argument("--out", default="data/synthetic")
    length.add_argument("--users", type=int, default=8)
    length.add_argument("--unseen-users", type=int, default=3)
    length.add_argument("--majority-share", type=float, default=0.7)
    length.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    if args.name == "hh-relabeled":
        report = build_hh_relabeled(args.source, args.out, seed=args.seed)
    elif args.name == "tldr-length":
        report = build_tldr_length(
            args.files, args.out, n_users=args.users, longer_share=args.longer_share, seed=args.seed
        )
    elif args.name == "psoups":
        report = build_psoups(args.source, args.out, seed=args.seed)
    elif args.name == "prism":
        report = build_prism(args.source, args.out, seed=args.seed, with_user_text=not args.no_user_text)
    else:
        report = make_length_task(
            args.out,
            n_users=args.users,
            n_unseen_users=args.unseen_users,
            majority_share=args.majority_share,
            seed=args.seed,
        )
    _print_report(report, args.out)
