"""``TestReport``: every test metric to ``test_metrics.json`` and a readable per-user table."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

METRICS_FILE = "test_metrics.json"


class TestReport(Callback):
    """Writes the test metrics of a run as a flat JSON dict and prints a per-user table.

    Works with any module that logs ``test/...`` metrics; the table is built from names of the form
    ``test[/<condition>]/rewards/{accuracy,margins}/{user,group}/<name>`` and ``.../seen|unseen``.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, filename: str = METRICS_FILE, print_table: bool = True) -> None:
        """
        Args:
            filename: file in the run's log directory that receives the metrics.
            print_table: print the per-user table at the end of testing.
        """
        self.filename = filename
        self.print_table = print_table
        self.path: Path | None = None
        self._table: str | None = None

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {
            name: value.item() if hasattr(value, "item") else float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("test/")
        }
        metrics = dict(sorted(metrics.items()))
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / self.filename
        self.path.write_text(json.dumps(metrics, indent=1))
        self._table = format_table(metrics)

    @rank_zero_only
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # After Lightning's own results table, so that this one is what stays on screen.
        if stage == "test" and self.print_table and self._table is not None:
            print(self._table)
            print(f"test metrics written to {self.path}")
            self._table = None


def format_table(metrics: dict[str, float], stage: str = "test") -> str:
    """A plain-text table: one row per user, then per group, seen/unseen and overall.

    Columns are the reward accuracy and margin of each condition found (the method's own first,
    then e.g. ``generic`` for the generic user of a personalized method), and the pair count.
    """
    conditions = [""] + sorted(
        {n[len(stage) + 1 :].split("/rewards/")[0] for n in metrics if "/rewards/" in n[len(stage) + 1 :]}
    )

    def get(condition: str, name: str) -> float | None:
        key = f"{stage}/{condition + '/' if condition else ''}{name}"
        return metrics.get(key)

    def section(kind: str) -> list[str]:
        prefix = f"{stage}/rewards/accuracy/{kind}/"
        return [n[len(prefix) :] for n in metrics if n.startswith(prefix)]

    header = ["", "pairs"]
    for condition in conditions:
        label = condition or "accuracy"
        header += [label if condition == "" else f"{label} acc", "margin" if condition == "" else f"{label} margin"]
    rows: list[list[str]] = []

    def row(label: str, suffix: str, count: float | None) -> None:
        cells = [label, "" if count is None else str(int(count))]
        for condition in conditions:
            for kind in ("accuracy", "margins"):
                value = get(condition, f"rewards/{kind}{suffix}")
                cells.append("" if value is None else f"{value:.3f}")
        rows.append(cells)

    for user in section("user"):
        row(f"user {user}", f"/user/{user}", metrics.get(f"{stage}/count/user/{user}"))
    for group in section("group"):
        row(f"group {group}", f"/group/{group}", metrics.get(f"{stage}/count/group/{group}"))
    for split in ("seen", "unseen"):
        if get("", f"rewards/accuracy/{split}") is not None:
            row(f"{split} users", f"/{split}", None)
    row("all", "", None)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
