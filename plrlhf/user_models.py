"""User models: integer user ids ``(B,)`` to soft tokens ``(B, T_u, d)`` (method.md, "User models").

Plain ``nn.Module``s with no knowledge of the LM beyond its hidden size. User 0 is the generic user,
which serves every user not seen in training.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Literal

import torch
from torch import Tensor, nn


def check_sizes(**sizes: int) -> None:
    """Refuse, by argument name, a size that builds an empty or negative table."""
    for name, value in sizes.items():
        least = 0 if name == "num_users" else 1
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


class UserModel(nn.Module):
    """Interface: ``forward(user_ids) -> (B, n_tokens, hidden_size)`` soft tokens.

    A user model written elsewhere plugs in by class path when its ``__init__`` takes
    ``num_users`` and ``hidden_size`` first; :meth:`initialize` receives the LM's token embedding
    table once, before training, for initialisations that copy vocabulary embeddings.
    """

    n_tokens: int
    init_args: dict[str, Any]
    """The arguments the model was built with (recorded automatically): export rebuilds it from
    these, so they should be JSON values."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        original = cls.__dict__.get("__init__")
        if original is None:
            return
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self: UserModel, *args: Any, **kw: Any) -> None:
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            original(self, *args, **kw)
            recorded: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is not inspect.Parameter.VAR_POSITIONAL:
                    recorded[name] = value
            # Set after the subclass body ran: the most derived class's arguments win.
            object.__setattr__(self, "init_args", recorded)

        cls.__init__ = __init__

    def forward(self, user_ids: Tensor) -> Tensor:
        raise NotImplementedError

    def initialize(self, token_embeddings: Tensor) -> None:
        """Called once with the LM's ``(V, d)`` input embedding table (default: nothing to do)."""

    # -- users after training: few-shot adaptation ------------------------------------------------
    def fill_legacy_state(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Add to ``state_dict`` (in place) what older versions of this model did not save, with
        the values they behaved with, so that their checkpoints and exports load as trained."""

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        self.fill_legacy_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def per_user_tables(self) -> dict[str, nn.Embedding]:
        """The tables holding one row per user (row 0: the generic user), by submodule name: by
        convention every ``nn.Embedding`` of a user model. All other parameters are shared."""
        return {name: m for name, m in self.named_modules() if isinstance(m, nn.Embedding)}

    def for_new_users(self, count: int, start: list[int] | None = None) -> UserModel:
        """A model of ``count`` new users (indices ``1..count``) that shares this one's other
        parameters, frozen; only the new users' rows are trainable. This model is not changed
        (its tables are not even copied).

        Args:
            count: number of new users.
            start: for each new user, the trained user whose rows it starts from; 0 (the default
                for all) starts it as the generic user.
        """
        tables = self.per_user_tables()
        if not tables:
            raise TypeError(f"{type(self).__name__} has no per-user tables (nn.Embedding) to add users to")
        start = start if start is not None else [0] * count
        if len(start) != count:
            raise ValueError(f"start names {len(start)} users, expected {count}")
        small: dict[int, nn.Module] = {}
        for name, table in tables.items():
            generic = self.new_user_row(name, table)
            rows = [generic] + [table.weight.detach()[i : i + 1] if i > 0 else generic for i in start]
            small[id(table)] = nn.Embedding.from_pretrained(torch.cat(rows).clone(), freeze=False)
        new = copy.deepcopy(self, memo=dict(small))
        new.requires_grad_(False)
        for module in small.values():
            module.requires_grad_(True)
        new._set_num_users(count)
        return new

    def new_user_row(self, name: str, table: nn.Embedding) -> Tensor:
        """The ``(1, dim)`` row of table ``name`` that makes a user the generic user (default: row
        0, the generic user's own row; models whose generic user ignores its row override this)."""
        return table.weight.detach()[:1]

    def append_users(self, new: UserModel) -> None:
        """Adds the users of ``new`` (made by :meth:`for_new_users`) after this model's users, in
        their order: new user ``i`` becomes user ``num_users + i``."""
        for name, table in self.per_user_tables().items():
            rows = new.get_submodule(name).weight.detach()[1:].to(table.weight)
            grown = nn.Embedding(table.num_embeddings + len(rows), table.embedding_dim, sparse=table.sparse)
            with torch.no_grad():
                grown.weight.copy_(torch.cat([table.weight.detach(), rows]))
            grown.weight.requires_grad_(table.weight.requires_grad)
            parent, _, attribute = name.rpartition(".")
            setattr(self.get_submodule(parent) if parent else self, attribute, grown)
        self._set_num_users(next(iter(self.per_user_tables().values())).num_embeddings - 1)

    def _set_num_users(self, count: int) -> None:
        if hasattr(self, "num_users"):
            self.num_users = count
        if "num_users" in self.init_args:
            self.init_args = {**self.init_args, "num_users": count}


def sample_vocabulary_rows(token_embeddings: Tensor, shape: tuple[int, ...], seed: int) -> Tensor:
    """Rows of ``token_embeddings`` picked at random (seeded), reshaped to ``(*shape, d)``.

    The paper's initialisation: soft tokens start as embeddings of real tokens, so they begin on
    the scale the LM expects.
    """
    generator = torch.Generator().manual_seed(seed)
    count = 1
    for n in shape:
        count *= n
    index = torch.randint(0, token_embeddings.shape[0], (count,), generator=generator)
    rows = token_embeddings.detach().float().cpu()[index]
    return rows.reshape(*shape, token_embeddings.shape[1])


class IndividualUserModel(UserModel):
    """One embedding per user: ``e_u = e_0 + o_u`` (``e_0`` for the generic user).

    With ``generic=False`` the generic part is dropped: ``e_u = o_u``, and the generic user 0 has a
    learned row of its own.
    """

    def __init__(
        self,
        num_users: int,
        hidden_size: int,
        n_tokens: int = 10,
        generic: bool = True,
        offset_init: Literal["zeros", "vocab"] = "zeros",
        seed: int = 123,
    ) -> None:
        """
        Args:
            num_users: users seen in training, N (rows 1..N; row 0 is the generic user).
            hidden_size: the LM's embedding size, d.
            n_tokens: soft tokens per user, T_u (the paper: 10).
            generic: use a shared generic embedding plus per-user offsets.
            offset_init: ``zeros`` (every user starts as the generic user) or ``vocab``
                (random vocabulary embeddings, as the paper's code).
            seed: seed of the vocabulary sampling.
        """
        super().__init__()
        check_sizes(num_users=num_users, hidden_size=hidden_size, n_tokens=n_tokens)
        self.num_users = num_users
        self.n_tokens = n_tokens
        self.generic = generic
        self.offset_init = offset_init
        self.seed = seed
        self.generic_tokens = nn.Parameter(torch.zeros(n_tokens, hidden_size)) if generic else None
        self.offsets = nn.Embedding(num_users + 1, n_tokens * hidden_size)
        nn.init.zeros_(self.offsets.weight)

    def initialize(self, token_embeddings: Tensor) -> None:
        with torch.no_grad():
            if self.generic_tokens is not None:
                self.generic_tokens.copy_(
                    sample_vocabulary_rows(token_embeddings, (self.n_tokens,), self.seed)
                )
            if self.offset_init == "vocab" or self.generic_tokens is None:
                rows = sample_vocabulary_rows(
                    token_embeddings, (self.num_users + 1, self.n_tokens), self.seed + 1
                )
                self.offsets.weight.copy_(rows.flatten(1))

    def new_user_row(self, name: str, table: nn.Embedding) -> Tensor:
        if self.generic_tokens is None:
            return super().new_user_row(name, table)
        return torch.zeros_like(table.weight[:1]).detach()  # no offset: e_u = e_0

    def forward(self, user_ids: Tensor) -> Tensor:
        offsets = self.offsets(user_ids).view(user_ids.shape[0], self.n_tokens, -1)
        if self.generic_tokens is None:
            return offsets
        # Row 0 is the generic user: no offset, and so no gradient into row 0.
        is_user = (user_ids > 0).to(offsets.dtype)[:, None, None]
        return self.generic_tokens + offsets * is_user


class ClusterUserModel(UserModel):
    """``K`` cluster embeddings mixed per user: ``e_u = sum_k softmax(w_u / tau)_k V_k``.

    The generic user 0 has its own weight row, learned like any user's. ``tau`` (temperature)
    leaves the starting mixtures as they are (the stored ``w`` start at ``N(0, tau^2)``) and
    multiplies by ``1 / tau`` how fast an optimizer step moves them (Adam's step on ``w`` is about
    the learning rate whatever the gradient's scale).
    """

    def __init__(
        self,
        num_users: int,
        hidden_size: int,
        n_tokens: int = 10,
        n_clusters: int = 5,
        weight_init: Literal["normal", "zeros"] = "normal",
        temperature: float = 0.1,
        generic_tokens: bool = False,
        population_generic: bool = False,
        seed: int = 123,
    ) -> None:
        """
        Args:
            num_users: users seen in training, N.
            hidden_size: the LM's embedding size, d.
            n_tokens: soft tokens per cluster embedding, T_u.
            n_clusters: number of clusters, K (the paper: 10 for PRISM; code default 5).
            weight_init: user logits start at PyTorch's default ``normal`` (the paper's code) or at
                ``zeros`` (every user an even mixture).
            temperature: of the mixture's softmax (the paper's code: 1). Users move between
                clusters ``1 / temperature`` times faster at the same learning rate, from the same
                starting mixtures: at 1 they barely leave their random start, and a small type
                whose users start among a larger type's is not served (``docs/results.md``).
            generic_tokens: the generic user 0 has soft tokens of its own instead of a mixture
                (the paper's code: a mixture), so that the generic user's loss (the ``alpha``
                term, every pair) shapes no cluster the users live in. Measured on two
                three-type tasks it helped the smaller minority and hurt the larger one
                (``docs/results.md``), so the default stays the paper's.
            population_generic: the generic user's mixture is the mean of the seen users'
                mixtures (detached; users adapted or added later do not move it), not a learned
                row that can settle on a small type's cluster. On the 70/20/10 three-type task
                it served the two-user type at 0.83 mean over four seeds (learned row: 0.69);
                not yet the default (``docs/results.md``).
            seed: seed of the vocabulary sampling of the cluster embeddings.
        """
        super().__init__()
        check_sizes(num_users=num_users, hidden_size=hidden_size, n_tokens=n_tokens, n_clusters=n_clusters)
        self.n_tokens = n_tokens
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.n_clusters = n_clusters
        self.seed = seed
        # In the state dict, so that a checkpoint or export scores with the temperature it was
        # trained with, whatever the default of the code that loads it.
        self.register_buffer("temperature", torch.tensor([float(temperature)]))
        self.clusters = nn.Parameter(torch.zeros(n_clusters, n_tokens, hidden_size))
        self.generic_tokens = nn.Parameter(torch.zeros(n_tokens, hidden_size)) if generic_tokens else None
        self.user_logits = nn.Embedding(num_users + 1, n_clusters)
        with torch.no_grad():
            if weight_init == "zeros":
                self.user_logits.weight.zero_()
            else:
                self.user_logits.weight.mul_(temperature)
        if generic_tokens and population_generic:
            raise ValueError("generic_tokens and population_generic both define the generic user: choose one")
        self.population: Tensor | None
        if population_generic:  # in the state dict: a checkpoint's generic user is as trained
            self.register_buffer("population", torch.zeros(n_clusters))
            # Off once users are adapted or appended (they must not move the generic user); in
            # the state dict, so that it stays off after a checkpoint is reloaded.
            self.register_buffer("follows_population", torch.tensor(True))
            # The flag's host-side copy: a forward reads it without a device sync. The population
            # itself is recomputed on every forward while it follows (users x K floats, small
            # beside the LM's forward): parameters swapped by FSDP leave no cheap sign of change.
            self._follows = True
            self.register_load_state_dict_post_hook(_reread_population_flag)
            self._follow_population()
        else:
            self.population = None

    def _follow_population(self) -> None:
        assert self.population is not None
        with torch.no_grad():
            everyone = self.user_logits.weight[1:].float() / self.temperature.float()
            self.population.copy_(torch.softmax(everyone, dim=-1).mean(0))

    def _stop_following(self) -> None:
        """The generic user stays the population it is now (users adapted or added later)."""
        if self.population is not None:
            self.follows_population.fill_(False)
            self._follows = False

    def initialize(self, token_embeddings: Tensor) -> None:
        with torch.no_grad():
            self.clusters.copy_(
                sample_vocabulary_rows(token_embeddings, (self.n_clusters, self.n_tokens), self.seed)
            )
            if self.generic_tokens is not None:
                self.generic_tokens.copy_(
                    sample_vocabulary_rows(token_embeddings, (self.n_tokens,), self.seed + 1)
                )

    def weights(self, user_ids: Tensor) -> Tensor:
        """``(B, K)`` mixture weights of the users (rows sum to 1)."""
        weights = torch.softmax(self.user_logits(user_ids).float() / self.temperature.float(), dim=-1)
        if self.population is None:
            return weights
        if self._follows:
            self._follow_population()
        return torch.where((user_ids == 0)[:, None], self.population.float()[None], weights)

    def new_user_row(self, name: str, table: nn.Embedding) -> Tensor:
        # With generic tokens no mixture is the generic user: a new user starts as the even one.
        if self.generic_tokens is not None:
            return torch.zeros_like(table.weight[:1]).detach()
        if self.population is not None:  # the logits whose mixture is the population's
            row = self.temperature.float() * self.population.float().clamp(min=1e-12).log()
            return row[None].to(table.weight).detach()
        return super().new_user_row(name, table)

    def for_new_users(self, count: int, start: list[int] | None = None) -> UserModel:
        new = super().for_new_users(count, start)
        assert isinstance(new, ClusterUserModel)
        new._stop_following()  # the generic user stays the trained population's
        return new

    def append_users(self, new: UserModel) -> None:
        super().append_users(new)
        self._stop_following()  # adapted users do not move the generic user

    def fill_legacy_state(self, state_dict: dict[str, Any], prefix: str) -> None:
        # Saved by plrlhf <= 0.3.0, which had no temperature: its mixtures were softmax(w).
        state_dict.setdefault(prefix + "temperature", torch.tensor([1.0]))

    def forward(self, user_ids: Tensor) -> Tensor:
        weights = self.weights(user_ids).to(self.clusters.dtype)
        tokens = torch.einsum("bk,ktd->btd", weights, self.clusters)
        if self.generic_tokens is None:
            return tokens
        return torch.where((user_ids == 0)[:, None, None], self.generic_tokens.to(tokens.dtype), tokens)


def _reread_population_flag(model: ClusterUserModel, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: the checkpoint's flag (read once here, not on every forward)."""
    model._follows = bool(model.follows_population)


class LowRankUserModel(UserModel):
    """Per-user coefficients over shared basis soft tokens: ``e_u = e_0 + sum_j a_uj B_j``.

    A user costs ``rank`` floats instead of ``n_tokens * hidden_size`` (10 x 4096 for a 7B model),
    so millions of users fit. The generic user 0 has no coefficients (``e_0``). With ``sparse``
    the coefficient table gets sparse gradients and its own row-wise optimizer (``SparseAdam``,
    set up by the P-DPO methods): a step reads and writes only the rows of the batch's users, so
    step time does not grow with the number of users.
    """

    def __init__(
        self,
        num_users: int,
        hidden_size: int,
        n_tokens: int = 10,
        rank: int = 16,
        sparse: bool = False,
        seed: int = 123,
    ) -> None:
        """
        Args:
            num_users: users seen in training, N.
            hidden_size: the LM's embedding size, d.
            n_tokens: soft tokens per user, T_u.
            rank: coefficients per user, r.
            sparse: sparse gradients and row-wise updates of the coefficients (for many users;
                one process or DDP over gloo: NCCL and FSDP2 take no sparse gradients).
            seed: seed of the vocabulary sampling of ``e_0`` and the basis.
        """
        super().__init__()
        check_sizes(num_users=num_users, hidden_size=hidden_size, n_tokens=n_tokens, rank=rank)
        self.num_users = num_users
        self.n_tokens = n_tokens
        self.rank = rank
        self.seed = seed
        self.generic_tokens = nn.Parameter(torch.zeros(n_tokens, hidden_size))
        self.basis = nn.Parameter(torch.zeros(rank, n_tokens, hidden_size))
        self.coefficients = nn.Embedding(num_users + 1, rank, sparse=sparse)
        nn.init.zeros_(self.coefficients.weight)  # every user starts as the generic user

    def initialize(self, token_embeddings: Tensor) -> None:
        with torch.no_grad():
            self.generic_tokens.copy_(sample_vocabulary_rows(token_embeddings, (self.n_tokens,), self.seed))
            rows = sample_vocabulary_rows(token_embeddings, (self.rank, self.n_tokens), self.seed + 1)
            # Directions the size of one token embedding, spread over the basis.
            self.basis.copy_(rows / self.rank**0.5)

    def new_user_row(self, name: str, table: nn.Embedding) -> Tensor:
        return torch.zeros_like(table.weight[:1]).detach()  # no coefficients: e_u = e_0

    def forward(self, user_ids: Tensor) -> Tensor:
        is_user = (user_ids > 0).to(self.basis.dtype)[:, None]
        coefficients = self.coefficients(user_ids) * is_user
        return self.generic_tokens + torch.einsum("br,rtd->btd", coefficients, self.basis)
