"""Per-user reports and user-embedding plots. PNGs need the ``plots`` extra (matplotlib).

Both callbacks work in any Lightning Trainer. They read what they need by name: the per-user
metrics a module logs (``<stage>/rewards/accuracy/user/<id>``, ``.../group/<g>``), a
``user_model`` attribute on the module, and ``registry``/``user_groups`` on the data module when
it has them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        rank_zero_warn("plots need matplotlib: pip install 'plrlhf[plots]'; writing no PNG")
        return None
    return plt


def _run_dir(trainer: Trainer, subdir: str) -> Path:
    path = Path(trainer.log_dir or trainer.default_root_dir) / subdir
    path.mkdir(parents=True, exist_ok=True)
    return path


class PerUserReport(Callback):
    """Per-user and per-group reward accuracy after each validation and after testing: a JSON and
    a CSV of the values and a PNG bar chart, in ``<log dir>/<subdir>/<stage>_epoch<N>.*``."""

    def __init__(self, subdir: str = "reports", plot: bool = True) -> None:
        """
        Args:
            subdir: directory inside the run's log directory.
            plot: also draw the bar chart (needs matplotlib).
        """
        self.subdir = subdir
        self.plot = plot
        self.written: list[Path] = []

    # The *_end hooks: callbacks' epoch-end hooks run before the module's, which logs the metrics.
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, "test")

    @rank_zero_only
    def _report(self, trainer: Trainer, stage: str) -> None:
        rows = []
        groups = getattr(trainer.datamodule, "user_groups", {}) if trainer.datamodule is not None else {}
        for kind in ("user", "group"):
            prefix = f"{stage}/rewards/accuracy/{kind}/"
            for name, value in trainer.callback_metrics.items():
                if name.startswith(prefix):
                    key = name[len(prefix) :]
                    margin = trainer.callback_metrics.get(f"{stage}/rewards/margins/{kind}/{key}")
                    rows.append(
                        {
                            "kind": kind,
                            "name": key,
                            "group": groups.get(key, "") if kind == "user" else key,
                            "accuracy": float(value),
                            "margin": None if margin is None else float(margin),
                        }
                    )
        if not rows:
            return
        stem = _run_dir(trainer, self.subdir) / f"{stage}_epoch{trainer.current_epoch}"
        stem.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        with stem.with_suffix(".csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        self.written += [stem.with_suffix(".json"), stem.with_suffix(".csv")]
        plt = _pyplot() if self.plot else None
        if plt is not None:
            self.written.append(
                _bar_chart(plt, rows, stem.with_suffix(".png"), f"{stage}, epoch {trainer.current_epoch}")
            )


def _bar_chart(plt: Any, rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    palette = plt.get_cmap("tab10")
    group_names = sorted({r["group"] for r in rows})
    colours = {g: palette(i % 10) for i, g in enumerate(group_names)}
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), [r["accuracy"] for r in rows], color=[colours[r["group"]] for r in rows])
    ax.set_xticks(range(len(rows)), [f"{r['kind'][0]}:{r['name']}" for r in rows], rotation=60, ha="right")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_ylabel("reward accuracy")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in group_names if g]
    if handles:
        ax.legend(handles, [g for g in group_names if g], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class UserEmbeddingMap(Callback):
    """A 2D PCA map of the users' soft-token embeddings, coloured by group, after each validation
    (and at the end of fitting); for a cluster user model also a heatmap of the users' cluster
    weights. PNGs in ``<log dir>/<subdir>/``."""

    def __init__(self, subdir: str = "user_embeddings", every_n_epochs: int = 1) -> None:
        """
        Args:
            subdir: directory inside the run's log directory.
            every_n_epochs: draw after every n-th validation epoch.
        """
        self.subdir = subdir
        self.every_n_epochs = every_n_epochs
        self.written: list[Path] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self._draw(trainer, pl_module, f"epoch{trainer.current_epoch}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, pl_module, "final")

    @rank_zero_only
    def _draw(self, trainer: Trainer, pl_module: LightningModule, tag: str) -> None:
        user_model = getattr(pl_module, "user_model", None)
        plt = _pyplot()
        if user_model is None or plt is None:
            return
        datamodule = trainer.datamodule
        registry = getattr(datamodule, "registry", None)
        groups = getattr(datamodule, "user_groups", {}) if datamodule is not None else {}
        n_users = len(registry) if registry is not None else user_model_size(user_model)
        names = ["<generic>"] + (
            registry.users if registry is not None else [str(i) for i in range(1, n_users + 1)]
        )
        ids = torch.arange(n_users + 1, device=pl_module.device)
        with torch.no_grad():
            points = pca_2d(user_model(ids).flatten(1).float().cpu())
        out = _run_dir(trainer, self.subdir)
        labels = [groups.get(name, "generic" if i == 0 else "") for i, name in enumerate(names)]
        palette = plt.get_cmap("tab10")
        kinds = sorted(set(labels))
        fig, ax = plt.subplots(figsize=(5, 4))
        for k, kind in enumerate(kinds):
            idx = [i for i, label in enumerate(labels) if label == kind]
            ax.scatter(points[idx, 0], points[idx, 1], color=palette(k % 10), label=kind or "no group", s=30)
        if len(names) <= 40:
            for i, name in enumerate(names):
                ax.annotate(name, points[i].tolist(), fontsize=7)
        ax.set_title(f"user embeddings (PCA), {tag}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"pca_{tag}.png", dpi=100)
        plt.close(fig)
        self.written.append(out / f"pca_{tag}.png")
        if hasattr(user_model, "weights"):
            with torch.no_grad():
                weights = user_model.weights(ids).float().cpu()
            fig, ax = plt.subplots(figsize=(4, max(3, 0.25 * len(names))))
            image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_xlabel("cluster")
            ax.set_title(f"cluster weights, {tag}")
            fig.colorbar(image)
            fig.tight_layout()
            fig.savefig(out / f"cluster_weights_{tag}.png", dpi=100)
            plt.close(fig)
            self.written.append(out / f"cluster_weights_{tag}.png")


def user_model_size(user_model: torch.nn.Module) -> int:
    """Number of users of a user model without a registry at hand (its ``num_users`` attribute)."""
    return int(getattr(user_model, "num_users", 0))


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` projected on their first two principal components (zeros if degenerate)."""
    centred = x - x.mean(0, keepdim=True)
    if centred.abs().max() == 0 or len(x) < 2:
        return torch.zeros(len(x), 2)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ v[:2].T
    return torch.nn.functional.pad(projected, (0, 2 - projected.shape[1]))
