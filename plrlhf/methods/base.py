"""The shared base of every preference method: model, reference, objective plumbing, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from peft import LoraConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader

from plrlhf.generation import generate
from plrlhf.losses import PairScores, PreferenceLoss, as_loss
from plrlhf.methods.metrics import SCALARS, PreferenceMetrics
from plrlhf.methods.nonfinite import NonFiniteGuard
from plrlhf.methods.reference_cache import cache_key, compute_reference_table, load_or_compute
from plrlhf.objective import preference_values
from plrlhf.packing import SHARED_PROMPT_PARENTS, pack_shared_prompt
from plrlhf.policy import ModelSource, Policy, build_causal_lm
from plrlhf.specs import class_path, to_plain
from plrlhf.tokenizer import load_tokenizer

Batch = dict[str, Tensor]
STAGES = ("train", "val", "test")
INSTANTIATOR_KEY = "_instantiator"


def _record_as_plain_data(module: LightningModule) -> None:
    """Checkpoints hold the method's arguments as plain data, so they load with
    ``weights_only=True``. The CLI records its config this way already; arguments given in Python
    (a ``LoraConfig``, a ``functools.partial`` optimizer, a loss object) become class paths with
    init arguments, and Lightning rebuilds them through the same type-checked instantiator."""
    if INSTANTIATOR_KEY in module.hparams:
        return
    plain = {}
    for name, value in module.hparams.items():
        try:
            plain[name] = to_plain(value)
        except TypeError as error:
            rank_zero_warn(
                f"{name}: {error}; checkpoints of this module will not load with weights_only=True"
            )
            return
    module.hparams.update(plain)
    module.hparams["_class_path"] = class_path(type(module))
    module.hparams[INSTANTIATOR_KEY] = "lightning.pytorch.cli.instantiate_module"


class PreferenceModule(LightningModule):
    """Base of the preference methods: subclasses say how a batch is scored and how terms combine.

    A subclass implements :meth:`score`, returning :class:`PairScores` per *condition* (the first is
    the one the method is judged by; DPO has one, P-DPO adds the generic user), and may override
    :meth:`combine` and :meth:`param_groups`.
    """

    def __init__(
        self,
        model: ModelSource,
        tokenizer: str,
        num_users: int = 0,
        lora: LoraConfig | None = None,
        loss: PreferenceLoss | list[PreferenceLoss] | None = None,
        beta: float = 0.1,
        nll_weight: float = 0.0,
        reference_free: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = False,
        dtype: str | None = None,
        precompute_reference: bool = False,
        reference_cache_dir: str | None = ".cache/plrlhf/reference",
        shared_prompt: bool = False,
        generation: dict[str, Any] | None = None,
        on_nonfinite: Literal["stop", "skip"] = "stop",
        max_consecutive_skips: int = 10,
    ) -> None:
        """
        Args:
            model: local Hugging Face model directory, or a transformers config dict with
                ``model_type`` for a randomly initialised model.
            tokenizer: local tokenizer directory (linked from the data module by the CLI).
            num_users: users seen in training (linked from the data module by the CLI).
            lora: a ``peft.LoraConfig`` to train adapters only; default: full fine-tuning.
            loss: the preference loss (``plrlhf.losses.Sigmoid`` = DPO by default), or a list of
                losses to add (``plrlhf.losses.WeightedSum`` weights them). A loss that needs no
                reference (SimPO) runs none.
            beta: inverse temperature of the implicit reward.
            nll_weight: weight of an NLL term on the chosen response (0 = none).
            reference_free: use no reference model (reference log-probs are 0).
            optimizer: optimizer class and settings; receives the parameter groups.
            lr_scheduler: learning-rate schedule, stepped every optimizer step.
            gradient_checkpointing: recompute activations in backward to save memory.
            dtype: parameter dtype of the loaded model (e.g. ``bfloat16``); default: float32.
            precompute_reference: score the training data under the reference once, before
                training, so that training steps run no reference forward.
            reference_cache_dir: where precomputed reference log-probs are kept, keyed by data,
                tokenization and reference weights (``null``: recompute every run).
            shared_prompt: run each prompt once for both responses (one row ``[prompt, chosen,
                rejected]`` with a block attention mask) instead of once per response. Same
                values, fewer tokens; needs a model that honours a 4D attention mask.
            generation: keyword arguments of transformers' ``generate`` for ``predict`` on prompts
                (e.g. ``{max_new_tokens: 64, do_sample: true, top_p: 0.9}``; default: greedy, 128).
            on_nonfinite: a NaN/inf training loss ``stop``s the run (after saving the state from
                before the update that diverged to ``<log dir>/checkpoints/nonfinite-last-good.ckpt``;
                this keeps a CPU copy of the trainable weights and optimizer state) or ``skip``s the
                batch (counted in ``train/skipped_batches``).
            max_consecutive_skips: with ``skip``, stop after this many non-finite batches in a row.
        """
        super().__init__()
        self.save_hyperparameters()
        _record_as_plain_data(self)
        if beta <= 0:
            raise ValueError(f"beta must be > 0 (the implicit reward's scale), got {beta}")
        if nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0, got {nll_weight}")
        self.tokenizer_path = tokenizer
        self.num_users = num_users
        self.beta = beta
        self.nll_weight = nll_weight
        self.loss_fn = as_loss(loss)
        reference_free = reference_free or not self.loss_fn.needs_reference
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        tok = load_tokenizer(tokenizer)
        hf_model = build_causal_lm(
            model,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            dtype=getattr(torch, dtype) if dtype else None,
        )
        if gradient_checkpointing:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy = Policy(hf_model, lora=lora, reference_free=reference_free)
        self.precompute_reference = precompute_reference and not reference_free
        self.reference_cache_dir = reference_cache_dir
        self.reference_table: Tensor | None = None
        self.shared_prompt = shared_prompt
        self.generation = {"max_new_tokens": 128, "do_sample": False, **(generation or {})}
        self.nonfinite = NonFiniteGuard(on_nonfinite, max_consecutive_skips)
        self.pad_token_id = tok.pad_token_id
        self.metrics = nn.ModuleDict({stage: self._new_metrics() for stage in ("val", "test")})
        self._sharded = False

    # -- what subclasses define ------------------------------------------------------------------
    @property
    def conditions(self) -> tuple[str, ...]:
        """Names of the conditions :meth:`score` returns; the first is the method's own."""
        return ("policy",)

    def score(self, batch: Batch) -> dict[str, PairScores]:
        raise NotImplementedError

    def combine(self, values: dict[str, dict[str, Tensor]]) -> Tensor:
        """The training objective from per-condition, per-pair values (default: mean loss)."""
        return values[self.conditions[0]]["loss"].mean()

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters as optimizer groups; subclasses add their own (e.g. user model)."""
        return [{"params": [p for p in self.policy.parameters() if p.requires_grad], "name": "policy"}]

    # -- shared machinery ------------------------------------------------------------------------
    def _new_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict({c: PreferenceMetrics() for c in self.conditions})

    def reference_logps(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Reference log-probs of the triples (chosen, rejected): precomputed for training batches
        when ``precompute_reference`` is on, else from a reference forward of the ``2B`` rows."""
        if self.training and self.reference_table is not None:
            values = self.reference_table[batch["index"]]
            return values[:, 0], values[:, 1]
        return self._reference_forward(batch)

    def _reference_forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if self.shared_prompt:
            ids, segments = self._shared_rows(batch)
            sums, _ = self.policy.reference_tree_logps(ids, segments, SHARED_PROMPT_PARENTS, (1, 2))
            return sums[:, 0], sums[:, 1]
        ref, _ = self.policy.reference_logps(
            batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        return ref.chunk(2)

    def _shared_rows(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return pack_shared_prompt(
            batch["input_ids"], batch["attention_mask"], batch["response_mask"], self.pad_token_id
        )

    def policy_logps(
        self, batch: Batch, soft_tokens: list[Tensor] | None = None
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Policy log-probs of every triple's (chosen, rejected) responses and their token counts.

        With ``soft_tokens`` (one ``(B, P, d)`` tensor per user condition) the responses are scored
        once per condition, all conditions in one forward; the token rows are embedded once.
        Returns one ``(chosen, rejected, n_chosen, n_rejected)`` tuple per condition.
        """
        conditions = len(soft_tokens) if soft_tokens else 1
        if self.shared_prompt:
            ids, segments = self._shared_rows(batch)
            rows_per_condition = 1
        else:
            ids, segments = batch["input_ids"], None
            rows_per_condition = 2  # chosen rows, then rejected rows, share the condition's tokens
        embeds = self.policy.embed(ids).repeat(conditions, 1, 1)
        soft = None
        if soft_tokens:
            soft = torch.cat([t.repeat(rows_per_condition, 1, 1) for t in soft_tokens])
        if segments is not None:
            sums, counts = self.policy.tree_logps(
                ids.repeat(conditions, 1),
                segments.repeat(conditions, 1),
                SHARED_PROMPT_PARENTS,
                (1, 2),
                soft_tokens=soft,
                embeds=embeds,
            )
            parts = zip(sums.chunk(conditions), counts.chunk(conditions))
            return [(s[:, 0], s[:, 1], n[:, 0], n[:, 1]) for s, n in parts]
        logps, counts = self.policy.response_logps(
            ids.repeat(conditions, 1),
            batch["attention_mask"].repeat(conditions, 1),
            batch["response_mask"].repeat(conditions, 1),
            soft_tokens=soft,
            embeds=embeds,
        )
        return [(*s.chunk(2), *n.chunk(2)) for s, n in zip(logps.chunk(conditions), counts.chunk(conditions))]

    def on_fit_start(self) -> None:
        if self.precompute_reference and self.reference_table is None:
            self.reference_table = self._precomputed_reference()

    def _precomputed_reference(self) -> Tensor:
        trainer = self.trainer
        datamodule = trainer.datamodule
        # Every triple once, in order, whatever sampler the training loader has (processes split
        # the batches between them below).
        train = datamodule.train_dataloader()
        loader = DataLoader(train.dataset, batch_size=train.batch_size, collate_fn=train.collate_fn)
        path, key = None, ""
        if self.reference_cache_dir is not None and hasattr(datamodule, "fingerprint"):
            key = cache_key(datamodule.fingerprint("train"), self.policy.reference_fingerprint())
            path = Path(self.reference_cache_dir) / f"{key[:32]}.safetensors"

        def compute() -> Tensor:
            return compute_reference_table(
                loader,
                len(loader.dataset),
                lambda batch: self(batch, output="reference"),
                self.device,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                reduce_sum=lambda t: trainer.strategy.reduce(t, reduce_op="sum"),
            )

        table, source = load_or_compute(path, key, len(loader.dataset), compute, trainer.is_global_zero)
        rank_zero_info(f"reference log-probs of {len(table)} training triples {source}")
        return table.to(self.device)

    def forward(
        self, batch: Batch, output: Literal["values", "reference", "generate"] = "values", **settings: Any
    ) -> Any:
        """Everything that reads the weights runs here: the objective and per-pair ``values``, the
        ``reference`` log-probs, or ``generate``d tokens for prompt batches. Wrappers that act around
        ``forward`` then see all of it: FSDP2's ``fully_shard`` gathers the root's parameters before
        and frees them after, and reduces their gradients in backward."""
        if output == "reference":
            return self._reference_forward(batch)
        if output == "generate":
            return self._generate(batch, **settings)
        return self._values(batch)

    def _values(self, batch: Batch) -> tuple[Tensor, dict[str, dict[str, Tensor]]]:
        scores = self.score(batch)
        values = {c: preference_values(s, self.loss_fn, self.beta) for c, s in scores.items()}
        objective = self.combine(values)
        if self.nll_weight:
            main = scores[self.conditions[0]]
            nll = -main.policy_chosen.sum() / main.n_chosen.sum().clamp(min=1)
            objective = objective + self.nll_weight * nll
        return objective, values

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        objective, values = self(batch)
        batch_size = batch["user_ids"].shape[0]
        # Logged whatever the value: a skipped batch must not leave the previous step's loss.
        self.log("train/loss", objective, prog_bar=True, batch_size=batch_size)
        main = values[self.conditions[0]]
        for name in SCALARS[1:]:  # the loss logged above is the full objective
            self.log(f"train/{name}", main[name].mean(), batch_size=batch_size)
        # Decided on all processes together: one rank alone skipping or stopping would hang DDP.
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(objective)), all=False):
            names = getattr(self._datamodule(), "user_names", None)
            users = sorted({names[k] if names else str(k) for k in batch["user_keys"].tolist()})
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx}), users {users}"
            self.nonfinite.handle(self, where, lambda: not bool(torch.isfinite(self(batch)[0])))
            self.log("train/skipped_batches", float(self.nonfinite.skipped))
            return None
        self.nonfinite.finite()
        return objective

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.nonfinite.before_update(self, optimizer)

    @property
    def skipped_batches(self) -> int:
        """Training batches left out for a non-finite loss (``on_nonfinite: skip``)."""
        return self.nonfinite.skipped

    def _eval_step(self, stage: str, batch: Batch) -> None:
        _, values = self(batch)
        for condition, v in values.items():
            self.metrics[stage][condition].update(
                v, batch["user_ids"], batch["user_keys"], batch["group_keys"]
            )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        user_names = getattr(self._datamodule(), "user_names", None)
        group_names = getattr(self._datamodule(), "group_names", None)
        for i, condition in enumerate(self.conditions):
            metrics = self.metrics[stage][condition]
            prefix = stage if i == 0 else f"{stage}/{condition}"
            computed = metrics.compute(user_names, group_names)
            for name, value in computed.items():
                # Per-key values are already reduced across processes by the metric.
                self.log(
                    f"{prefix}/{name}",
                    value,
                    prog_bar=(i == 0 and name == "rewards/accuracy"),
                    sync_dist=False,
                    rank_zero_only=False,
                )
            metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- generation --------------------------------------------------------------------------------
    user_tokens = "before_prompt"

    def user_soft_tokens(self, user_ids: Tensor) -> Tensor | None:
        """The soft tokens of these users (``None`` for methods without a user model)."""
        return None

    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, user_ids: Tensor, **settings: Any
    ) -> Tensor:
        """New tokens for left-padded prompts, each written for its user (``generation`` settings,
        overridden by ``settings``)."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "user_ids": user_ids}
        return self(batch, output="generate", **settings)

    def _generate(self, batch: Batch, **settings: Any) -> Tensor:
        settings = {**self.generation, **settings}
        if self._sharded:
            # Processes stop generating at different steps; the sharded layers gather their
            # weights collectively, so every process runs until all are done.
            settings.setdefault("synced_gpus", True)
        return generate(
            self.policy.hf_model,
            batch["input_ids"],
            batch["attention_mask"],
            soft_tokens=self.user_soft_tokens(batch["user_ids"]),
            user_tokens=self.user_tokens,
            **settings,
        )

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """For prompt batches, a generated response per prompt; for triples, the implicit rewards
        under every condition. One dict per example."""
        if "response_mask" not in batch:
            return self._generate_rows(batch)
        _, values = self(batch)
        rows = []
        for i in range(batch["user_ids"].shape[0]):
            row: dict[str, Any] = {
                "user_key": int(batch["user_keys"][i]),
                "user_index": int(batch["user_ids"][i]),
            }
            for condition, v in values.items():
                prefix = "" if condition == self.conditions[0] else f"{condition}/"
                for name in (
                    "rewards/chosen",
                    "rewards/rejected",
                    "rewards/margins",
                    "logps/chosen",
                    "logps/rejected",
                ):
                    row[prefix + name] = float(v[name][i])
            rows.append(row)
        return rows

    def _generate_rows(self, batch: Batch) -> list[dict[str, Any]]:
        tokens = self.generate(batch["input_ids"], batch["attention_mask"], batch["user_ids"])
        tokenizer = load_tokenizer(self.tokenizer_path)
        rows = []
        for i, row_tokens in enumerate(tokens.tolist()):
            if tokenizer.eos_token_id in row_tokens:
                row_tokens = row_tokens[: row_tokens.index(tokenizer.eos_token_id)]
            rows.append(
                {
                    "user_key": int(batch["user_keys"][i]),
                    "user_index": int(batch["user_ids"][i]),
                    "prompt": batch["prompts"][i],
                    "response": tokenizer.decode(row_tokens, skip_special_tokens=True),
                    "response_tokens": len(row_tokens),
                }
            )
        return rows

    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, with names and shapes, a checkpoint of another model (Lightning would raise a
        long state-dict error, or silently keep a reference table of other data)."""
        if "state_dict" not in checkpoint:
            return  # a sharding strategy loaded the weights itself (strictly) and took them out
        theirs = checkpoint["state_dict"]
        ours = self.state_dict()
        missing = sorted(ours.keys() - theirs.keys())
        unexpected = sorted(theirs.keys() - ours.keys())
        reshaped = [k for k in ours.keys() & theirs.keys() if tuple(ours[k].shape) != tuple(theirs[k].shape)]
        if missing or unexpected or reshaped:
            saved = checkpoint.get("hyper_parameters", {})
            details = [
                f"{len(missing)} weights missing (e.g. {missing[:2]})" if missing else "",
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})" if unexpected else "",
                f"{len(reshaped)} of another shape (e.g. {reshaped[0]}: checkpoint "
                f"{tuple(theirs[reshaped[0]].shape)}, this model {tuple(ours[reshaped[0]].shape)})"
                if reshaped
                else "",
            ]
            problems = "; ".join(d for d in details if d)
            raise ValueError(
                f"the checkpoint does not fit this model: {problems}. It was trained "
                f"with model={saved.get('model')!r}, num_users={saved.get('num_users')!r}; this run builds "
                f"model={self.hparams.get('model')!r}, num_users={self.num_users!r}"
            )

    def configure_model(self) -> None:
        """Shards the model with FSDP2 when the strategy provides a device mesh
        (:class:`plrlhf.strategies.FSDP2Strategy` or Lightning's ``ModelParallelStrategy``).

        Each decoder layer (the classes the model lists in ``_no_split_modules``, in the policy and
        in a frozen reference copy alike) is a sharding unit; everything else (embeddings, head,
        LoRA adapters outside the layers, the user model) belongs to the root unit, which is this
        module: its ``forward`` runs every computation that reads weights.
        """
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or self._sharded:
            return
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
            raise ValueError("plrlhf shards data-parallel only: set the strategy's tensor_parallel_size to 1")
        data_parallel = mesh["data_parallel"] if mesh.mesh_dim_names else mesh
        layer_classes = set(getattr(self.policy.hf_model, "_no_split_modules", None) or [])
        layers = [m for m in self.modules() if type(m).__name__ in layer_classes]
        if not layers:
            raise ValueError(
                f"{type(self.policy.hf_model).__name__} names no decoder layer classes (_no_split_modules)"
            )
        # Gradients are reduced in float32 whatever the compute dtype (bf16 sums lose precision).
        policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
        for layer in layers:
            fully_shard(layer, mesh=data_parallel, mp_policy=policy)
        fully_shard(self, mesh=data_parallel, mp_policy=policy)
        self._sharded = True

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # Schedules that need the run's length learn it here, not in configure_optimizers: asking
        # the trainer there builds the training loader before a resumed run restores its position.
        for config in self.trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "set_total_steps"):
                config.scheduler.set_total_steps(int(self.trainer.estimated_stepping_batches))
