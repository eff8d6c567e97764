"""Evaluation metrics for preference methods: the DPO-standard set, per user, per group, seen/unseen.

Built on torchmetrics so that values are reduced across processes correctly: per-key results are
kept as per-example (key, value) lists and aggregated after the gather.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.utilities import dim_zero_cat

from plrlhf.objective import VALUES

# Names under which the DPO-standard values are logged, ``<stage>/<name>``.
SCALARS = VALUES


class KeyedMean(Metric):
    """Mean of values grouped by an integer key; ``compute`` returns ``{key: (mean, count)}``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, keys: Tensor, values: Tensor) -> None:
        self.keys.append(keys.detach().long().flatten())
        self.values.append(values.detach().float().flatten())

    def compute(self) -> dict[int, tuple[float, int]]:
        if isinstance(self.keys, list) and not self.keys:
            return {}
        keys, values = dim_zero_cat(self.keys), dim_zero_cat(self.values)
        if keys.numel() == 0:
            return {}
        unique, inverse = torch.unique(keys, return_inverse=True)
        counts = torch.bincount(inverse, minlength=len(unique))
        sums = torch.zeros(len(unique), dtype=values.dtype, device=values.device).index_add(
            0, inverse, values
        )
        return {int(k): (float(s / c), int(c)) for k, s, c in zip(unique, sums, counts)}


class PreferenceMetrics(nn.Module):
    """Everything reported for one stage (and one user condition) of a preference method.

    ``update`` takes per-pair tensors; ``compute`` returns a flat ``{name: value}`` dict with the
    names of :data:`SCALARS` plus ``rewards/{accuracy,margins}/{user,group}/<name>``,
    ``rewards/{accuracy,margins}/{seen,unseen}`` and ``count/{user,group}/<name>``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.ModuleDict({_key(name): MeanMetric() for name in SCALARS})
        self.by_user = nn.ModuleDict({"accuracy": KeyedMean(), "margins": KeyedMean()})
        self.by_group = nn.ModuleDict({"accuracy": KeyedMean(), "margins": KeyedMean()})
        self.by_seen = nn.ModuleDict({"accuracy": KeyedMean(), "margins": KeyedMean()})

    def update(
        self,
        values: dict[str, Tensor],
        user_ids: Tensor,
        user_keys: Tensor,
        group_keys: Tensor,
    ) -> None:
        """
        Args:
            values: per-pair tensors under the names of :data:`SCALARS` (``loss`` may be a scalar).
            user_ids: model user index per pair (0 = generic).
            user_keys: data-module user key per pair (names unseen users too).
            group_keys: data-module group key per pair (0 = no group).
        """
        for name in SCALARS:
            self.means[_key(name)].update(values[name])
        # seen: trained user (index > 0); unseen: a named user the model does not know.
        seen = torch.where(user_ids > 0, 1, torch.where(user_keys > 0, 0, -1))
        for kind in ("accuracy", "margins"):
            v = values[f"rewards/{kind}"]
            self.by_user[kind].update(user_keys, v)
            self.by_group[kind].update(group_keys, v)
            self.by_seen[kind].update(seen, v)

    def compute(
        self, user_names: list[str] | None = None, group_names: list[str] | None = None
    ) -> dict[str, float]:
        out = {name: float(self.means[_key(name)].compute()) for name in SCALARS}
        for kind in ("accuracy", "margins"):
            for key, (mean, count) in self.by_user[kind].compute().items():
                name = _name(user_names, key)
                out[f"rewards/{kind}/user/{name}"] = mean
                if kind == "accuracy":
                    out[f"count/user/{name}"] = count
            for key, (mean, count) in self.by_group[kind].compute().items():
                if key == 0:
                    continue  # no group label
                name = _name(group_names, key)
                out[f"rewards/{kind}/group/{name}"] = mean
                if kind == "accuracy":
                    out[f"count/group/{name}"] = count
            for key, (mean, _) in self.by_seen[kind].compute().items():
                if key >= 0:
                    out[f"rewards/{kind}/{'seen' if key else 'unseen'}"] = mean
        return out

    def reset(self) -> None:
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()


def _key(name: str) -> str:
    return name.replace("/", "_")


def _name(names: list[str] | None, key: int) -> str:
    return names[key] if names is not None and key < len(names) else str(key)
