"""Personalized DPO (P-DPO, Li, Lipton, Leqi 2024): a user model conditions the policy.

For each triple ``(u, x, y_c, y_r)`` the policy scores both responses as user ``u`` and as the
generic user 0, in one forward of ``4B`` rows; the reference scores them once, without user tokens,
and serves both terms::

    L = alpha * mean l(u) + (1 - alpha) * mean l(0)          (method.md, "The objective: P-DPO")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from plrlhf.losses import PairScores
from plrlhf.methods.base import Batch, PreferenceModule
from plrlhf.packing import USER_AFTER_PROMPT_PARENTS, USER_AFTER_PROMPT_SCORED, pack_user_after_prompt
from plrlhf.user_models import ClusterUserModel, IndividualUserModel, UserModel

UserModelFactory = Callable[[int, int], UserModel]


class PersonalizedPreferenceModule(PreferenceModule):
    """Base of P-DPO methods: a policy conditioned on soft user tokens, and the alpha objective.

    Subclasses say which user model to build (:meth:`build_user_model`). Metrics are reported for
    the user's own condition (``<stage>/...``) and for the generic user on the same triples
    (``<stage>/generic/...``): what an unknown user would get.
    """

    def __init__(
        self,
        *args: Any,
        alpha: float = 0.5,
        user_model_lr: float | None = None,
        user_model_weight_decay: float = 0.0,
        user_tokens: Literal["before_prompt", "after_prompt"] = "before_prompt",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            alpha: weight of the personalized term; ``1 - alpha`` weights the generic user's term.
            user_model_lr: learning rate of the user model (default: the optimizer's).
            user_model_weight_decay: weight decay of the user model (the paper: 0).
            user_tokens: where the soft tokens sit: ``before_prompt`` (the paper's model) or
                ``after_prompt`` (between prompt and response: one pass over the prompt serves
                both users and both responses, but the prompt no longer sees the user).
        """
        super().__init__(*args, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.user_model_lr = user_model_lr
        self.user_model_weight_decay = user_model_weight_decay
        self.user_tokens = user_tokens
        self.user_model = self.build_user_model(self.num_users, self.policy.hidden_size)
        self.user_model.initialize(self.policy.hf_model.get_input_embeddings().weight)
        self.row_optimizer: torch.optim.Optimizer | None = None
        self._row_optimizer_state: dict[str, Any] | None = None

    def build_user_model(self, num_users: int, hidden_size: int) -> UserModel:
        raise NotImplementedError

    def user_soft_tokens(self, user_ids: Tensor) -> Tensor:
        return self.user_model(user_ids)

    @property
    def conditions(self) -> tuple[str, ...]:
        return ("user", "generic")

    def score(self, batch: Batch) -> dict[str, PairScores]:
        user_ids = batch["user_ids"]
        personal, generic = self.user_model(torch.cat([user_ids, torch.zeros_like(user_ids)])).chunk(2)
        # Both user conditions in one forward; one reference value serves both terms.
        if self.user_tokens == "after_prompt":
            scored = self._after_prompt_logps(batch, personal, generic)
        else:
            scored = self.policy_logps(batch, soft_tokens=[personal, generic])
        ref_chosen, ref_rejected = self.reference_logps(batch)
        return {
            name: PairScores(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected)
            for name, (chosen, rejected, n_chosen, n_rejected) in zip(("user", "generic"), scored)
        }

    def _after_prompt_logps(
        self, batch: Batch, personal: Tensor, generic: Tensor
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        ids, segments, column = pack_user_after_prompt(
            batch["input_ids"],
            batch["attention_mask"],
            batch["response_mask"],
            personal.shape[1],
            self.pad_token_id,
        )
        sums, counts = self.policy.tree_logps(
            ids,
            segments,
            USER_AFTER_PROMPT_PARENTS,
            USER_AFTER_PROMPT_SCORED,
            soft_tokens=torch.cat([personal, generic], dim=1),
            soft_column=column,
        )
        return [(sums[:, i], sums[:, i + 1], counts[:, i], counts[:, i + 1]) for i in (0, 2)]

    def combine(self, values: dict[str, dict[str, Tensor]]) -> Tensor:
        return (
            self.alpha * values["user"]["loss"].mean() + (1 - self.alpha) * values["generic"]["loss"].mean()
        )

    def param_groups(self) -> list[dict[str, Any]]:
        sparse = {id(p) for p in self._sparse_user_rows()}
        group: dict[str, Any] = {
            "params": [p for p in self.user_model.parameters() if p.requires_grad and id(p) not in sparse],
            "weight_decay": self.user_model_weight_decay,
            "name": "user_model",
        }
        if self.user_model_lr is not None:
            group["lr"] = self.user_model_lr
        return [*super().param_groups(), group]

    # -- per-user tables with sparse gradients: a row-wise optimizer beside the main one ---------
    def _sparse_user_rows(self) -> list[Tensor]:
        tables = self.user_model.per_user_tables().values()
        return [t.weight for t in tables if t.sparse and t.weight.requires_grad]

    def configure_optimizers(self) -> Any:
        configured = super().configure_optimizers()
        self.row_optimizer = None
        rows = self._sparse_user_rows()
        if rows:
            main = configured["optimizer"] if isinstance(configured, dict) else configured
            lr = self.user_model_lr if self.user_model_lr is not None else main.defaults["lr"]
            # Lazy Adam: moments and weights of the rows in the batch only. Constant learning
            # rate (the main schedule does not drive it); no weight decay, as the paper's users.
            self.row_optimizer = torch.optim.SparseAdam(rows, lr=lr)
            if self._row_optimizer_state is not None:
                self.row_optimizer.load_state_dict(self._row_optimizer_state)
                self._row_optimizer_state = None
        return configured

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)  # runs forward and backward, then the main step
        if self.row_optimizer is not None:
            self.row_optimizer.step()
            self.row_optimizer.zero_grad(set_to_none=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.row_optimizer is not None:
            checkpoint["user_rows_optimizer"] = self.row_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("user_rows_optimizer")
        if state is not None and self.row_optimizer is not None:
            self.row_optimizer.load_state_dict(state)
        else:  # restored before the optimizers exist: loaded when they are configured
            self._row_optimizer_state = state


class PDPO(PersonalizedPreferenceModule):
    """P-DPO with any user model, given by class path in the YAML (``num_users`` and
    ``hidden_size`` are supplied at build time)."""

    def __init__(self, *args: Any, user_model: UserModelFactory, **kwargs: Any) -> None:
        """
        Args:
            user_model: a :class:`plrlhf.user_models.UserModel` class and its other arguments.
        """
        self._user_model_factory = user_model
        super().__init__(*args, **kwargs)

    def build_user_model(self, num_users: int, hidden_size: int) -> UserModel:
        return self._user_model_factory(num_users, hidden_size)


class IndividualPDPO(PersonalizedPreferenceModule):
    """P-DPO with the individual user model ``e_u = e_0 + o_u`` (the paper's Example 2)."""

    def __init__(
        self,
        *args: Any,
        n_user_tokens: int = 10,
        generic_embedding: bool = True,
        offset_init: Literal["zeros", "vocab"] = "zeros",
        user_model_seed: int = 123,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            n_user_tokens: soft tokens per user, T_u.
            generic_embedding: ``e_u = e_0 + o_u``; without it ``e_u = o_u``.
            offset_init: user offsets start at ``zeros`` or as random ``vocab`` embeddings.
            user_model_seed: seed of the vocabulary sampling.
        """
        self._user_model_args = dict(
            n_tokens=n_user_tokens, generic=generic_embedding, offset_init=offset_init, seed=user_model_seed
        )
        super().__init__(*args, **kwargs)

    def build_user_model(self, num_users: int, hidden_size: int) -> UserModel:
        return IndividualUserModel(num_users, hidden_size, **self._user_model_args)


class ClusterPDPO(PersonalizedPreferenceModule):
    """P-DPO with the cluster user model: users mix ``K`` shared embeddings (Example 3)."""

    def __init__(
        self,
        *args: Any,
        n_clusters: int = 5,
        n_user_tokens: int = 10,
        weight_init: Literal["normal", "zeros"] = "normal",
        user_model_seed: int = 123,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            n_clusters: number of cluster embeddings, K.
            n_user_tokens: soft tokens per cluster embedding, T_u.
            weight_init: user mixture logits start ``normal`` (the paper's code) or ``zeros``.
            user_model_seed: seed of the vocabulary sampling.
        """
        self._user_model_args = dict(
            n_tokens=n_user_tokens, n_clusters=n_clusters, weight_init=weight_init, seed=user_model_seed
        )
        super().__init__(*args, **kwargs)

    def build_user_model(self, num_users: int, hidden_size: int) -> UserModel:
        return ClusterUserModel(num_users, hidden_size, **self._user_model_args)
