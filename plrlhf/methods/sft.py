"""Supervised fine-tuning on the chosen responses: the warm start of the paper's pipeline.

SFT, then DPO or P-DPO from the SFT model (export it with ``plrlhf.callbacks.Export`` and give the
exported ``model/`` directory as the next method's ``model``). It reads the same preference data;
only the chosen response of each triple is trained on.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics import MeanMetric

from plrlhf.methods.lm import Batch, LanguageModelModule, UserModelFactory, Values


class SFT(LanguageModelModule):
    """Maximum likelihood of the chosen responses (token-averaged NLL); no reference model;
    optionally conditioned on the user through a user model's soft tokens.

    Logged: ``<stage>/loss`` (NLL per token) and ``<stage>/logps/chosen`` (per response).
    ``predict`` on triples gives each response's log-prob (for the user, with a user model).
    """

    def __init__(
        self,
        *args: Any,
        user_model: UserModelFactory | None = None,
        user_model_lr: float | None = None,
        user_model_weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            user_model: condition on the user with this :class:`plrlhf.UserModel` (class path
                and arguments; trained jointly, exported with the model); default: plain SFT.
            user_model_lr: learning rate of the user model (default: the optimizer's).
            user_model_weight_decay: weight decay of the user model.
        """
        super().__init__(*args, **kwargs)
        self.eval_nll = MeanMetric()
        self.eval_logps = MeanMetric()
        if user_model is not None:
            self.attach_user_model(user_model, user_model_lr, user_model_weight_decay)
        elif user_model_lr is not None:
            raise ValueError("user_model_lr is set but there is no user_model")

    def _logps(self, batch: Batch, rows: slice) -> tuple[Tensor, Tensor]:
        return self.policy.response_logps(
            batch["input_ids"][rows],
            batch["attention_mask"][rows],
            batch["response_mask"][rows],
            soft_tokens=self.user_soft_tokens(batch["user_ids"]),
        )

    def objective(self, batch: Batch) -> tuple[Tensor, Values]:
        """The token-averaged NLL of the chosen responses (the first ``B`` rows)."""
        chosen, n_chosen = self._logps(batch, slice(0, batch["user_ids"].shape[0]))
        return -chosen.sum() / n_chosen.sum().clamp(min=1), {
            "policy": {"logps/chosen": chosen, "tokens": n_chosen}
        }

    def evaluate(self, stage: str, batch: Batch) -> None:
        loss, values = self(batch)
        self.eval_nll.update(loss, weight=values["policy"]["tokens"].sum())
        self.eval_logps.update(values["policy"]["logps/chosen"])

    def log_evaluation(self, stage: str) -> None:
        self.log(f"{stage}/loss", self.eval_nll.compute(), prog_bar=True)
        self.log(f"{stage}/logps/chosen", self.eval_logps.compute())
        self.eval_nll.reset()
        self.eval_logps.reset()

    def predict_pairs(self, batch: Batch) -> list[dict[str, Any]]:
        n = batch["user_ids"].shape[0]
        chosen, _ = self._logps(batch, slice(0, n))
        rejected, _ = self._logps(batch, slice(n, 2 * n))
        return [
            {
                "user_key": int(batch["user_keys"][i]),
                "user_index": int(batch["user_ids"][i]),
                "logps/chosen": float(chosen[i]),
                "logps/rejected": float(rejected[i]),
            }
            for i in range(n)
        ]
