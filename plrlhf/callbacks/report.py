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
    A stored ``test_metrics.json`` of another run (say, vanilla DPO on the same data) can be shown
    beside it.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        filename: str = METRICS_FILE,
        print_table: bool = True,
        compare_with: str | None = None,
        compare_label: str = "reference",
    ) -> None:
        """
        Args:
            filename: file in the run's log directory that receives the metrics.
            print_table: print the per-user table at the end of testing.
            compare_with: a ``test_metrics.json`` of another run to show beside this one.
            compare_label: column label of that run.
        """
        self.filename = filename
        self.print_table = print_table
        self.compare_with = compare_with
        self.compare_label = compare_label
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
        reference = None
        if self.compare_with is not None:
            reference = (self.compare_label, json.loads(Path(self.compare_with).read_text()))
        self._table = format_table(metrics, reference)

    @rank_zero_only
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # After Lightning's own results table, so that this one is what stays on screen.
        if stage == "test" and self.print_table and self._table is not None:
            print(self._table)
            print(f"test metrics written to {self.path}")
            self._table = None


def format_table(
    metrics: dict[str, float],
    reference: tuple[str, dict[str, float]] | None = None,
    stage: str = "test",
) -> str:
    """A plain-text table: one row per user, then per group, seen/unseen and overall.

    Columns: pairs, then accuracy and margin of each condition found (the method's own first, then
    e.g. ``generic``: the generic user on the same triples), then the reference run's accuracy.
    """
    own = sorted({n.split("/rewards/")[0] for n in metrics if "/rewards/" in n})
    columns = [(c[len(stage) + 1 :] if c != stage else "", metrics, c + "/") for c in own]
    columns.sort(key=lambda c: c[0] != "")
    if reference is not None:
        columns.append((reference[0], reference[1], f"{stage}/"))

    header = ["", "pairs"]
    for label, _, _ in columns:
        header += [
            f"{label} acc".strip() if label else "accuracy",
            f"{label} margin".strip() if label else "margin",
        ]
    rows: list[list[str]] = []
    for label, suffix, count in _row_keys(metrics, stage):
        cells = [label, "" if count is None else str(int(count))]
        for _, source, prefix in columns:
            for kind in ("accuracy", "margins"):
                value = source.get(f"{prefix}rewards/{kind}{suffix}")
                cells.append("" if value is None else f"{value:.3f}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _row_keys(metrics: dict[str, float], stage: str) -> list[tuple[str, str, float | None]]:
    """(label, metric-name suffix, pair count) for each row of the table."""
    rows = []
    for kind in ("user", "group"):
        prefix = f"{stage}/rewards/accuracy/{kind}/"
        for name in (n[len(prefix) :] for n in metrics if n.startswith(prefix)):
            rows.append((f"{kind} {name}", f"/{kind}/{name}", metrics.get(f"{stage}/count/{kind}/{name}")))
    for split in ("seen", "unseen"):
        if f"{stage}/rewards/accuracy/{split}" in metrics:
            rows.append((f"{split} users", f"/{split}", None))
    rows.append(("all", "", None))
    return rows
