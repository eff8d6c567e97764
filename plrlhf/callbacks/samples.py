"""``GenerationSamples``: what the model writes for each user, at the end of validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from plrlhf.tokenizer import load_tokenizer


class GenerationSamples(Callback):
    """Generates a response to each prompt for each user after validation and logs them as a
    table: to Weights & Biases (``log_text``), TensorBoard (``add_text``), and always as
    ``<log dir>/<subdir>/epoch<N>.jsonl``.

    The module must offer ``generate(input_ids, attention_mask, user_ids, **settings)`` (every
    plrlhf method does) and a ``tokenizer_path``; users are raw ids, mapped through the data
    module's ``registry`` (unknown users are the generic user).
    """

    def __init__(
        self,
        prompts: list[str],
        users: list[str] | None = None,
        max_new_tokens: int = 64,
        every_n_epochs: int = 1,
        subdir: str = "samples",
    ) -> None:
        """
        Args:
            prompts: prompts to answer.
            users: raw user ids to answer for (default: the generic user and every trained user).
            max_new_tokens: length limit of each sample (greedy decoding).
            every_n_epochs: sample after every n-th validation epoch.
            subdir: directory inside the run's log directory.
        """
        self.prompts = prompts
        self.users = users
        self.max_new_tokens = max_new_tokens
        self.every_n_epochs = every_n_epochs
        self.subdir = subdir
        self.rows: list[dict[str, Any]] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        self._sample(trainer, pl_module)

    @rank_zero_only
    def _sample(self, trainer: Trainer, pl_module: LightningModule) -> None:
        registry = getattr(trainer.datamodule, "registry", None)
        users = self.users if self.users is not None else ["<generic>", *(registry.users if registry else [])]
        tokenizer = load_tokenizer(pl_module.tokenizer_path)  # shared: never changed in place
        self.rows = []
        for user in users:
            index = registry.index(user) if registry is not None and user != "<generic>" else 0
            encoded = tokenizer(self.prompts, return_tensors="pt", padding=True, padding_side="left")
            encoded = encoded.to(pl_module.device)
            user_ids = torch.full((len(self.prompts),), index, dtype=torch.long, device=pl_module.device)
            tokens = pl_module.generate(
                encoded["input_ids"],
                encoded["attention_mask"],
                user_ids,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
            )
            for prompt, text in zip(self.prompts, tokenizer.batch_decode(tokens, skip_special_tokens=True)):
                self.rows.append(
                    {
                        "epoch": trainer.current_epoch,
                        "user_id": user,
                        "user_index": index,
                        "prompt": prompt,
                        "response": text,
                    }
                )
        out = Path(trainer.log_dir or trainer.default_root_dir) / self.subdir
        out.mkdir(parents=True, exist_ok=True)
        (out / f"epoch{trainer.current_epoch}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in self.rows)
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                columns = ["user_id", "prompt", "response"]
                logger.log_text("samples", columns=columns, data=[[r[c] for c in columns] for r in self.rows])
            elif isinstance(logger, TensorBoardLogger):
                table = "\n".join(
                    f"| {r['user_id']} | {r['prompt']!r} | {r['response']!r} |" for r in self.rows
                )
                logger.experiment.add_text(
                    "samples", "| user | prompt | response |\n|---|---|---|\n" + table, trainer.global_step
                )
