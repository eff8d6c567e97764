"""``plrlhf data <name> ...``: build preference JSON lines from a dataset's published files.

Each subcommand is a builder function: its signature and docstring are the command's options and
help (jsonargparse), so a new builder is one function added to :data:`BUILDERS`.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from pathlib import Path

from jsonargparse import ArgumentParser

from plrlhf.builders.hh_length import build_hh_length
from plrlhf.builders.hh_relabeled import build_hh_relabeled
from plrlhf.builders.length_task import make_length_task
from plrlhf.builders.prism import build_prism
from plrlhf.builders.psoups import build_psoups
from plrlhf.builders.tldr import build_tldr_length
from plrlhf.io import atomic_write_json

BUILDERS = {
    "hh-relabeled": build_hh_relabeled,
    "hh-length": build_hh_length,
    "tldr-length": build_tldr_length,
    "psoups": build_psoups,
    "prism": build_prism,
    "length": make_length_task,
}


def print_report(report: dict[str, Counter], out: str) -> None:
    for split, counts in report.items():
        if split == "dropped":
            if counts:
                print("dropped: " + ", ".join(f"{n} {why}" for why, n in counts.items()))
            continue
        users = ", ".join(f"{u}: {n}" for u, n in sorted(counts.items()))
        print(f"{split}: {sum(counts.values())} triples, {len(counts)} users ({users})")
    print(f"written to {out}/{{train,validation,test}}.jsonl (how: {out}/{BUILD_RECORD})")


# What a data directory was built from: a run that needs other settings can tell a stale directory
# from its own (benchmarks/real_model.py rebuilds on a mismatch) and a reader sees the command.
BUILD_RECORD = "build.json"


def write_build_record(out: str, name: str, arguments: dict, report: dict[str, Counter]) -> None:
    record = {
        "builder": name,
        "arguments": arguments,
        "dropped": dict(report.get("dropped", {})),
        "triples": {split: dict(sorted(n.items())) for split, n in report.items() if split != "dropped"},
    }
    atomic_write_json(Path(out) / BUILD_RECORD, record)  # the parsed arguments are JSON values


def read_build_record(out: str | Path) -> dict | None:
    """The record of how ``out`` was built; None for a directory without one (built elsewhere)."""
    path = Path(out) / BUILD_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def parser() -> ArgumentParser:
    root = ArgumentParser(
        prog="plrlhf data",
        description="Build train/validation/test JSON lines of personalized preference triples from a "
        "dataset's published files (read locally, never downloaded).",
    )
    subcommands = root.add_subcommands(dest="name")
    for name, builder in BUILDERS.items():
        text = inspect.getdoc(builder).split("\nArgs:")[0].strip()
        sub = ArgumentParser(prog=f"plrlhf data {name}", description=text)
        sub.add_function_arguments(builder, as_positional=True)
        subcommands.add_subcommand(name, sub, help=text.splitlines()[0])
    return root


def recorded_arguments(argv: list[str] | None = None) -> tuple[str, dict]:
    """The builder ``plrlhf data <argv>`` runs and every argument it records in ``build.json``,
    defaults included, as the JSON values a record read back holds: one definition for the command
    and for whoever checks whether a directory already holds that build."""
    config = parser().parse_args(argv)
    return config.name, json.loads(json.dumps(config[config.name].as_dict()))


def main(argv: list[str] | None = None) -> None:
    name, arguments = recorded_arguments(argv)
    try:
        report = BUILDERS[name](**arguments)
    except (ValueError, FileNotFoundError) as error:  # bad sources: the message, not a traceback
        raise SystemExit(f"plrlhf data {name}: error: {error}") from None
    write_build_record(arguments["out"], name, arguments, report)
    print_report(report, arguments["out"])
