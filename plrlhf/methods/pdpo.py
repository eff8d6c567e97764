"""Personalized DPO (P-DPO, Li, Lipton, Leqi 2024): a user model conditions the policy.

For each triple ``(u, x, y_c, y_r)`` the policy scores both responses as user ``u`` and as the
generic user 0, in one forward; the reference scores them once, without user tokens, and serves
both terms::

    L = alpha * mean l(u) + (1 - alpha) * mean l(0)          (method.md, "The objective: P-DPO")

The user model is given by class path with its own arguments (``user_model``); ``IndividualPDPO``
and ``ClusterPDPO`` are :class:`PDPO` with the paper's two user models as the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from plrlhf.losses import PairScores
from plrlhf.methods.lm import Batch, UserModelFactory, Values
from plrlhf.methods.preference import PreferenceModule
from plrlhf.policy import RowLayout
from plrlhf.user_models import ClusterUserModel, IndividualUserModel, UserModel


class PDPO(PreferenceModule):
    """P-DPO: a policy conditioned on soft user tokens, and the alpha objective.

    Metrics are reported for the user's own condition (``<stage>/...``) and for the generic user on
    the same triples (``<stage>/generic/...``): what an unknown user would get.
    """

    def __init__(
        self,
        *args: Any,
        user_model: UserModelFactory,
        alpha: float = 0.5,
        user_model_lr: float | None = None,
        user_model_weight_decay: float = 0.0,
        user_tokens: Literal["before_prompt", "after_prompt"] = "before_prompt",
        user_model_init: str | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            user_model: a :class:`plrlhf.UserModel` class and its arguments (``num_users`` and
                ``hidden_size`` are supplied), e.g. ``plrlhf.IndividualUserModel``.
            alpha: weight of the personalized term; ``1 - alpha`` weights the generic user's term.
            user_model_lr: learning rate of the user model (default: the optimizer's).
            user_model_weight_decay: weight decay of the user model (the paper: 0).
            user_tokens: where the soft tokens sit: ``before_prompt`` (the paper's model) or
                ``after_prompt`` (between prompt and response: one pass over the prompt serves
                both users and both responses, but the prompt no longer sees the user).
            user_model_init: an export directory (``plrlhf.callbacks.Export``), e.g. of a
                user-conditioned SFT stage, whose user model weights this one starts from: the same
                user model class and arguments, and the same users (the training data's registry
                must equal the export's ``users.json``: checked when fitting starts).
        """
        super().__init__(*args, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.user_tokens = user_tokens
        self.attach_user_model(user_model, user_model_lr, user_model_weight_decay)
        self.user_model_init = user_model_init
        self._init_registry: list[str] | None = None
        if user_model_init is not None:
            from plrlhf.export import load_user_model_weights

            self._init_registry = load_user_model_weights(self.user_model, user_model_init).users
        self.row_optimizer: torch.optim.Optimizer | None = None
        self._row_optimizer_state: dict[str, Any] | None = None

    @property
    def conditions(self) -> tuple[str, ...]:
        return ("user", "generic")

    @property
    def row_layout(self) -> RowLayout:
        return "after_prompt" if self.user_tokens == "after_prompt" else super().row_layout

    def score(
        self,
        batch: Batch,
        reference: tuple[Tensor, Tensor] | None = None,
        user_model: UserModel | None = None,
    ) -> dict[str, PairScores]:
        """See :meth:`PreferenceModule.score`; ``user_model`` scores with another user model of
        the same hidden size (adaptation trains a small one for new users)."""
        user_ids = batch["user_ids"]
        users = user_model if user_model is not None else self.user_model
        personal, generic = users(torch.cat([user_ids, torch.zeros_like(user_ids)])).chunk(2)
        # Both user conditions in one forward; one reference value serves both terms.
        scored = self.policy.pair_logps(
            batch["input_ids"],
            batch["attention_mask"],
            batch["response_mask"],
            self.pad_token_id,
            soft_tokens=[personal, generic],
            layout=self.row_layout,
        )
        ref_chosen, ref_rejected = reference if reference is not None else self.reference_logps(batch)
        return {
            name: PairScores(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected)
            for name, (chosen, rejected, n_chosen, n_rejected) in zip(self.conditions, scored)
        }

    def combine(self, values: Values) -> Tensor:
        return (
            self.alpha * values["user"]["loss"].mean() + (1 - self.alpha) * values["generic"]["loss"].mean()
        )

    # -- per-user tables with sparse gradients: a row-wise optimizer beside the main one ---------
    def _sparse_user_rows(self) -> list[Tensor]:
        tables = self.user_model.per_user_tables().values()
        return [t.weight for t in tables if t.sparse and t.weight.requires_grad]

    def dense_user_parameters(self) -> list[Tensor]:
        sparse = {id(p) for p in self._sparse_user_rows()}
        return [p for p in super().dense_user_parameters() if id(p) not in sparse]

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

    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = getattr(self.trainer, "datamodule", None)
        registry = getattr(datamodule, "registry", None)
        if self._init_registry is not None and registry is not None and registry.users != self._init_registry:
            raise ValueError(
                f"user_model_init {self.user_model_init}: its users.json lists {len(self._init_registry)} "
                f"users in another order or set than this run's training data ({len(registry.users)}); "
                "give the data module that file (`user_registry`) so that each index means the same user"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.row_optimizer is not None:
            checkpoint["user_rows_optimizer"] = self.row_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("user_rows_optimizer")
        if state is not None and self.row_optimizer is not None:
            self.row_optimizer.load_state_dict(state)
        else:  # restored before the optimizers exist: loaded when they are configured
            self._row_optimizer_state = state


class IndividualPDPO(PDPO):
    """P-DPO with the individual user model ``e_u = e_0 + o_u`` (the paper's Example 2)."""

    def __init__(
        self,
        *args: Any,
        user_model: Callable[[int, int], IndividualUserModel] = IndividualUserModel,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            user_model: :class:`plrlhf.IndividualUserModel` and its arguments (``n_tokens``,
                ``generic``, ``offset_init``, ``seed``).
        """
        super().__init__(*args, user_model=user_model, **kwargs)


class ClusterPDPO(PDPO):
    """P-DPO with the cluster user model: users mix ``K`` shared embeddings (Example 3)."""

    def __init__(
        self, *args: Any, user_model: Callable[[int, int], ClusterUserModel] = ClusterUserModel, **kwargs: Any
    ) -> None:
        """
        Args:
            user_model: :class:`plrlhf.ClusterUserModel` and its arguments (``n_clusters``,
                ``n_tokens``, ``weight_init``, ``temperature``: 0.1, ``seed``).
        """
        super().__init__(*args, user_model=user_model, **kwargs)
