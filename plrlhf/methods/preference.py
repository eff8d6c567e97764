"""The base of the preference methods: pairs scored under the policy and a reference, a loss over
them, and the DPO-standard metrics per user, group and seen/unseen.

A subclass implements :meth:`PreferenceModule.score` (log-probs per *condition*: DPO has one, P-DPO
adds the generic user) and may override :meth:`PreferenceModule.combine`.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from plrlhf.losses import PairScores, PreferenceLoss, as_loss, chosen_nll
from plrlhf.methods.lm import Batch, LanguageModelModule, Values
from plrlhf.methods.metrics import PreferenceMetrics
from plrlhf.methods.reference import PrecomputedReference
from plrlhf.objective import preference_values
from plrlhf.policy import RowLayout

PREDICTED = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


class PreferenceModule(LanguageModelModule):
    """Preference optimization on ``(user, prompt, chosen, rejected)`` triples."""

    def __init__(
        self,
        *args: Any,
        loss: PreferenceLoss | list[PreferenceLoss] | None = None,
        beta: float = 0.1,
        nll_weight: float = 0.0,
        nll_average: Literal["token", "response"] = "token",
        nll_condition: str | None = None,
        reference_free: bool = False,
        precompute_reference: bool = False,
        reference_cache_dir: str | None = ".cache/plrlhf/reference",
        shared_prompt: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            loss: the preference loss (``plrlhf.losses.Sigmoid`` = DPO by default), or a list of
                losses to add (``plrlhf.losses.WeightedSum`` weights them). A loss that needs no
                reference (SimPO) runs none.
            beta: inverse temperature of the implicit reward.
            nll_weight: weight of an NLL term on the chosen response (0 = none).
            nll_average: the NLL term's mean: over every chosen token of the batch (``token``, as
                TRL's ``rpo_alpha``: long responses weigh more), or each response's per-token
                NLL averaged over responses (``response``, the RPO paper's formula: users whose
                chosen responses are short count as much as the others).
            nll_condition: the condition whose log-probs the NLL term takes (default: the method's
                own, e.g. P-DPO's ``user``). P-DPO's ``generic`` keeps the shared weights fluent
                while each user's tokens learn from that user's preferences alone.
            reference_free: use no reference model (reference log-probs are 0).
            precompute_reference: score the training data under the reference once, before
                training, so that training steps run no reference forward.
            reference_cache_dir: where precomputed reference log-probs are kept, keyed by the
                training triples' token ids and the reference weights (``null``: recompute).
            shared_prompt: run each prompt once for both responses (one row ``[prompt, chosen,
                rejected]`` with a block attention mask) instead of once per response. Same
                values, fewer tokens; needs a model that honours a 4D attention mask.
        """
        super().__init__(*args, **kwargs)
        if beta <= 0:
            raise ValueError(f"beta must be > 0 (the implicit reward's scale), got {beta}")
        if nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0, got {nll_weight}")
        if nll_average not in ("token", "response"):
            raise ValueError(f"nll_average must be 'token' or 'response', got {nll_average!r}")
        if nll_condition is not None and nll_condition not in self.conditions:
            raise ValueError(
                f"nll_condition must be one of {self.conditions} for {type(self).__name__}, "
                f"got {nll_condition!r}"
            )
        self.beta = beta
        self.nll_weight = nll_weight
        self.nll_average = nll_average
        self.nll_condition = nll_condition or self.conditions[0]
        self.loss_fn = as_loss(loss)
        if not (reference_free or not self.loss_fn.needs_reference):
            self.policy.use_reference()
        self.precomputed = (
            PrecomputedReference(reference_cache_dir)
            if precompute_reference and not self.policy.reference_free
            else None
        )
        self.shared_prompt = shared_prompt
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({c: PreferenceMetrics() for c in self.conditions})
                for stage in ("val", "test")
            }
        )

    # -- what subclasses define ------------------------------------------------------------------
    @property
    def conditions(self) -> tuple[str, ...]:
        """Names of the conditions :meth:`score` returns; the first is the method's own."""
        return ("policy",)

    def score(self, batch: Batch, reference: tuple[Tensor, Tensor] | None = None) -> dict[str, PairScores]:
        """Log-probs of the batch's pairs per condition; ``reference``: the reference log-probs
        (chosen, rejected) when the caller has them, else :meth:`reference_logps`."""
        raise NotImplementedError

    def combine(self, values: Values) -> Tensor:
        """The training objective from per-condition, per-pair values (default: mean loss)."""
        return values[self.conditions[0]]["loss"].mean()

    # -- the objective ---------------------------------------------------------------------------
    @property
    def row_layout(self) -> RowLayout:
        return "shared_prompt" if self.shared_prompt else "pair"

    def reference_logps(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Reference log-probs of the triples (chosen, rejected): looked up for training batches
        when precomputed, else from a reference forward."""
        if self.training and self.precomputed is not None and self.precomputed.table is not None:
            return self.precomputed.lookup(batch["index"])
        return self._reference_forward(batch)

    def _reference_forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.policy.reference_pair_logps(
            batch["input_ids"],
            batch["attention_mask"],
            batch["response_mask"],
            self.pad_token_id,
            self.shared_prompt,
        )

    def pair_values(self, scores: dict[str, PairScores]) -> Values:
        """Per-pair loss, rewards and log-probs of every condition."""
        return {c: preference_values(s, self.loss_fn, self.beta) for c, s in scores.items()}

    def objective(self, batch: Batch) -> tuple[Tensor, Values]:
        scores = self.score(batch)
        values = self.pair_values(scores)
        objective = self.combine(values)
        if self.nll_weight:
            nll = chosen_nll(scores[self.nll_condition], per_response=self.nll_average == "response")
            objective = objective + self.nll_weight * nll
        return objective, values

    def forward(self, batch: Batch, output: str = "objective", **settings: Any) -> Any:
        if output == "reference":  # under FSDP2, the reference reads the gathered weights too
            return self._reference_forward(batch)
        return super().forward(batch, output, **settings)

    def on_fit_start(self) -> None:
        if self.policy.reference is not None:
            # Lightning warns about modules in eval mode; here that is the frozen reference copy,
            # on purpose (it never drops out): say so once instead.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")
            count = sum(1 for _ in self.policy.reference.modules())
            rank_zero_info(
                f"the frozen reference model ({count} modules) runs in eval mode: it never drops out"
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.precomputed is not None:
            self.precomputed.prepare(self, self.trainer)

    # -- evaluation and prediction ---------------------------------------------------------------
    def evaluate(self, stage: str, batch: Batch) -> None:
        _, values = self(batch)
        self.update_metrics(stage, batch, values)

    def update_metrics(self, stage: str, batch: Batch, values: Values) -> None:
        for condition, v in values.items():
            self.metrics[stage][condition].update(
                v, batch["user_ids"], batch["user_keys"], batch["group_keys"]
            )

    def computed_metrics(self, stage: str, datamodule: Any) -> dict[str, Tensor]:
        """The accumulated metrics of ``stage`` as ``{<stage>[/<condition>]/<name>: value}`` (reset
        after), per-user names from ``datamodule``. Per-key values are already reduced across
        processes by the metric."""
        user_names = getattr(datamodule, "user_names", None)
        group_names = getattr(datamodule, "group_names", None)
        computed = {}
        for i, condition in enumerate(self.conditions):
            prefix = stage if i == 0 else f"{stage}/{condition}"
            metrics = self.metrics[stage][condition]
            computed.update({f"{prefix}/{k}": v for k, v in metrics.compute(user_names, group_names).items()})
            metrics.reset()
        return computed

    def log_evaluation(self, stage: str) -> None:
        main = f"{stage}/rewards/accuracy"
        for name, value in self.computed_metrics(stage, self._datamodule()).items():
            self.log(name, value, prog_bar=name == main, sync_dist=False, rank_zero_only=False)

    def predict_pairs(self, batch: Batch) -> list[dict[str, Any]]:
        """The implicit rewards and log-probs of every triple under every condition."""
        _, values = self(batch)
        rows = []
        for i in range(batch["user_ids"].shape[0]):
            row: dict[str, Any] = {
                "user_key": int(batch["user_keys"][i]),
                "user_index": int(batch["user_ids"][i]),
            }
            for condition, v in values.items():
                prefix = "" if condition == self.conditions[0] else f"{condition}/"
                row.update({prefix + name: float(v[name][i]) for name in PREDICTED})
            rows.append(row)
        return rows
