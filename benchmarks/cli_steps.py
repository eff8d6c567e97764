"""The experiment scripts' steps, through plrlhf's command line exactly as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plrlhf.cli import main

ROOT = Path(__file__).resolve().parents[1]


def fit(method: str, experiment: str | Path, save_dir: Path, version: str, *extra: str) -> Path:
    """``plrlhf fit`` of ``configs/method/<method>.yaml`` composed with ``experiment``; the run dir."""
    main(
        [
            "fit",
            "--config",
            str(ROOT / f"configs/method/{method}.yaml"),
            "--config",
            str(experiment),
            "--trainer.logger.init_args.save_dir",
            str(save_dir),
            "--trainer.logger.init_args.version",
            version,
            *extra,
        ]
    )
    return save_dir / version


def test(run: Path) -> dict[str, float]:
    """``plrlhf test`` of a run from its saved config and last checkpoint; its test metrics."""
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt")])
    return json.loads((run / "test" / "test_metrics.json").read_text())


def predict(run: Path, data: Path, *extra: str) -> list[dict[str, Any]]:
    """``plrlhf predict`` of a run on ``data``; the rows it wrote."""
    main(
        [
            "predict",
            "--config",
            str(run / "config.yaml"),
            "--ckpt_path",
            str(run / "checkpoints/last.ckpt"),
            "--data.init_args.predict",
            str(data),
            *extra,
        ]
    )
    return [json.loads(line) for line in (run / "predict" / "predictions.jsonl").read_text().splitlines()]
