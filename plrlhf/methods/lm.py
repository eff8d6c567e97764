"""What every method shares: a causal LM being trained, its tokenizer, an optional user model, the
optimizer and schedule, the training step, generation, sharding and checks on checkpoints.

A method subclasses :class:`LanguageModelModule` and says what it optimizes
(:meth:`~LanguageModelModule.objective`), how it evaluates and what it predicts for a triple.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from peft import LoraConfig
from torch import Tensor

from plrlhf.checkpoint_io import check_checkpoint_fits
from plrlhf.generation import generate
from plrlhf.methods.nonfinite import NonFiniteGuard
from plrlhf.policy import ModelSource, Policy, build_causal_lm, flex_attention_supported
from plrlhf.specs import record_as_plain_data
from plrlhf.strategies import fully_shard_layers
from plrlhf.tokenizer import load_tokenizer
from plrlhf.user_models import UserModel

Batch = dict[str, Tensor]
Values = dict[str, dict[str, Tensor]]
"""Per-example values of a batch, by condition (e.g. ``user``, ``generic``), then by name."""
UserModelFactory = Callable[[int, int], UserModel]
"""A user model class with its other arguments; called with ``(num_users, hidden_size)``."""
AS_LOADED = "weights_as_loaded"
"""The checkpoint entry of a checkpoint that leaves out the weights its model directory holds."""


class LanguageModelModule(LightningModule):
    """The base of every method: the LM being trained and everything around it but the objective.

    Subclasses implement :meth:`objective`, :meth:`evaluate`, :meth:`log_evaluation` and
    :meth:`predict_pairs`.
    """

    def __init__(
        self,
        model: ModelSource,
        tokenizer: str,
        num_users: int = 0,
        lora: LoraConfig | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = False,
        dtype: str | None = None,
        attention: Literal["auto", "sdpa", "flex_attention", "eager"] = "auto",
        disable_dropout: bool = True,
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
            optimizer: optimizer class and settings; receives the parameter groups.
            lr_scheduler: learning-rate schedule, stepped every optimizer step.
            gradient_checkpointing: recompute activations in backward to save memory.
            dtype: parameter dtype of the loaded model (e.g. ``bfloat16``); default: float32.
            attention: the attention kernels (transformers' ``attn_implementation``). ``auto``:
                FlexAttention on CUDA for architectures that have it (the shared-prompt and
                after-prompt layouts then run block-sparse instead of with a dense mask); the
                model's own choice (SDPA) elsewhere. FlexAttention has no backward on CPU.
            disable_dropout: set every dropout of the model (LoRA's included) to 0, as TRL's
                ``disable_dropout``: log-ratios are then deterministic and resumes exact; false
                keeps the model's own dropout in training.
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
        record_as_plain_data(self)
        self.tokenizer_path = tokenizer
        self.num_users = num_users
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        tok = load_tokenizer(tokenizer)
        self.pad_token_id = tok.pad_token_id
        self.eos_token_id = tok.eos_token_id
        hf_model = build_causal_lm(
            model,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            dtype=getattr(torch, dtype) if dtype else None,
        )
        if gradient_checkpointing:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy = Policy(hf_model, lora=lora, reference_free=True)  # methods add a reference
        self.attention = attention
        if attention != "auto":
            self.policy.set_attention(attention)
        if disable_dropout:
            for module in self.policy.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        self.policy.train()  # from_pretrained returns eval mode; only a frozen reference stays so
        self.generation = {"max_new_tokens": 128, "do_sample": False, **(generation or {})}
        self.nonfinite = NonFiniteGuard(on_nonfinite, max_consecutive_skips)
        self.user_model: UserModel | None = None
        self.user_tokens: Literal["before_prompt", "after_prompt"] = "before_prompt"
        self.user_model_lr: float | None = None
        self.user_model_weight_decay = 0.0
        self._sharded = False

    # -- what subclasses define ---------------------------------------------------------------
    def objective(self, batch: Batch) -> tuple[Tensor, Values]:
        """The training objective of a batch, and its per-example values by condition (the first
        condition's are logged in training)."""
        raise NotImplementedError

    def evaluate(self, stage: str, batch: Batch) -> None:
        """Accumulate the evaluation metrics of a ``val``/``test`` batch."""
        raise NotImplementedError

    def log_evaluation(self, stage: str) -> None:
        """Log (and reset) the metrics accumulated for ``stage``."""
        raise NotImplementedError

    def predict_pairs(self, batch: Batch) -> list[dict[str, Any]]:
        """One dict per triple of a predict batch."""
        raise NotImplementedError

    # -- the user model ---------------------------------------------------------------------------
    def attach_user_model(
        self, factory: UserModelFactory, lr: float | None = None, weight_decay: float = 0.0
    ) -> None:
        """Build the user model (``factory(num_users, hidden_size)``) and let it see the LM's
        token embeddings once; it trains at learning rate ``lr`` (default: the optimizer's) with
        ``weight_decay``."""
        if lr is not None and lr <= 0:
            raise ValueError(f"user_model_lr must be > 0, got {lr}")
        self.user_model_lr, self.user_model_weight_decay = lr, weight_decay
        user_model = factory(self.num_users, self.policy.hidden_size)
        if not isinstance(user_model, UserModel):
            raise TypeError(f"user_model must build a plrlhf.UserModel, got {type(user_model).__name__}")
        user_model.initialize(self.policy.hf_model.get_input_embeddings().weight)
        self.user_model = user_model

    def user_soft_tokens(self, user_ids: Tensor) -> Tensor | None:
        """The soft tokens of these users (``None`` without a user model)."""
        return None if self.user_model is None else self.user_model(user_ids)

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters as optimizer groups: the LM's, and the user model's (own learning
        rate and weight decay)."""
        groups = [{"params": [p for p in self.policy.parameters() if p.requires_grad], "name": "policy"}]
        if self.user_model is not None:
            group: dict[str, Any] = {
                "params": self.dense_user_parameters(),
                "weight_decay": self.user_model_weight_decay,
                "name": "user_model",
            }
            if self.user_model_lr is not None:
                group["lr"] = self.user_model_lr
            groups.append(group)
        return groups

    def dense_user_parameters(self) -> list[Tensor]:
        assert self.user_model is not None
        return [p for p in self.user_model.parameters() if p.requires_grad]

    # -- training ---------------------------------------------------------------------------------
    def forward(self, batch: Batch, output: str = "objective", **settings: Any) -> Any:
        """Everything that reads the weights runs here (the ``objective`` and its values, or
        ``generate``d tokens for prompt batches), so that wrappers acting around ``forward`` see
        all of it: FSDP2's ``fully_shard`` gathers the root's parameters before and frees them
        after, and reduces their gradients in backward."""
        if output == "generate":
            return self._generate(batch, **settings)
        if output != "objective":
            raise ValueError(f"unknown output {output!r}")
        return self.objective(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        objective, values = self(batch)
        batch_size = batch["user_ids"].shape[0]
        # Logged whatever the value: a skipped batch must not leave the previous step's loss.
        self.log("train/loss", objective, prog_bar=True, batch_size=batch_size)
        main = next(iter(values.values()))
        for name, value in main.items():
            if name != "loss":  # the loss logged above is the full objective
                self.log(f"train/{name}", value.float().mean(), batch_size=batch_size)
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

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluate("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.evaluate("test", batch)

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

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

    # -- generation and prediction ---------------------------------------------------------------
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
        """For prompt batches, the token ids of a response per prompt (up to EOS; the prediction
        writer decodes them); for triples, :meth:`predict_pairs`. One dict per example."""
        if "response_mask" in batch:
            return self.predict_pairs(batch)
        tokens = self.generate(batch["input_ids"], batch["attention_mask"], batch["user_ids"])
        rows = []
        for i, ids in enumerate(tokens.tolist()):
            if self.eos_token_id in ids:
                ids = ids[: ids.index(self.eos_token_id)]
            rows.append(
                {
                    "user_key": int(batch["user_keys"][i]),
                    "user_index": int(batch["user_ids"][i]),
                    "prompt": batch["prompts"][i],
                    "response_ids": ids,
                }
            )
        return rows

    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    # -- checkpoints and sharding -----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave out the weights still as the model directory holds them (LoRA's frozen base, a
        full fine-tuning's reference copy): a LoRA run of SmolLM2-135M saves 30 MB instead of
        570, of a 7B model some hundred MB instead of tens of GB, at every checkpoint. Loading
        takes them from the model directory again, after checking it is the same model."""
        state = checkpoint.get("state_dict")
        # Kept in full: a model built from a config (its random weights are in no file) and
        # sharded weights (the strategy saves and loads them itself).
        if state is None or not isinstance(self.hparams.get("model"), str) or self._sharded:
            return
        omitted = [key for key in (f"policy.{name}" for name in self.policy.as_loaded) if key in state]
        for key in omitted:
            del state[key]
        checkpoint[AS_LOADED] = {
            "model": self.hparams["model"],
            "digest": self.policy.loaded_digest,
            "omitted": len(omitted),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" in checkpoint:  # (a sharding strategy loads the weights itself, strictly)
            self._fill_weights_as_loaded(checkpoint)
            check_checkpoint_fits(self, checkpoint)

    def _fill_weights_as_loaded(self, checkpoint: dict[str, Any]) -> None:
        """Put back the weights a checkpoint left out (:meth:`on_save_checkpoint`) from this
        module, which has just loaded them from its model directory."""
        saved = checkpoint.get(AS_LOADED)
        if saved is None:
            return
        if saved["digest"] != self.policy.loaded_digest:
            raise ValueError(
                f"the checkpoint holds only the weights its run trained ({saved['omitted']} others were "
                f"read from model {saved['model']!r}), and the model this run loaded "
                f"({self.hparams.get('model')!r}) has other weights: load it with the model it was "
                "trained from"
            )
        state, ours = checkpoint["state_dict"], self.state_dict()
        for name in self.policy.as_loaded:
            state.setdefault(f"policy.{name}", ours[f"policy.{name}"])

    def configure_model(self) -> None:
        """Chooses the attention kernels for the device (``attention: auto``) and shards the model
        with FSDP2 when the strategy provides a device mesh
        (:class:`plrlhf.strategies.FSDP2Strategy` or Lightning's ``ModelParallelStrategy``)."""
        trainer = self._trainer
        if self.attention == "auto" and trainer is not None:
            if flex_attention_supported(self.policy.hf_model, trainer.strategy.root_device):
                self.policy.set_attention("flex_attention")
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or self._sharded:
            return
        fully_shard_layers(self, self.policy.hf_model, mesh)
        self._sharded = True
