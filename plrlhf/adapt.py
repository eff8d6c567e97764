"""Few-shot adaptation: users who arrive after training get their own parameters from a few
labelled preferences, with the LM and every trained user frozen.

A new user's parameters are the rows of the user model's per-user tables (individual model: the
offset ``o_u``; cluster model: the weights over the existing clusters; low-rank model: the
coefficients). A small user model of the new users only (:meth:`UserModel.for_new_users`: shared
parts frozen, each new user starting as the generic user) is trained with the method's own
objective on the new users' triples; its rows are then appended to the trained user model and the
users to the registry, so they are served and exported like users seen in training.

Python: :func:`adapt_users` (a method object and its registry) or :func:`adapt` (a checkpoint);
command line: ``plrlhf adapt --checkpoint ... --train new_users.jsonl [--test ...]``.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from tqdm.auto import tqdm

from plrlhf.checkpoint_io import load_checkpoint as load_checkpoint_file
from plrlhf.data.datamodule import PreferenceDataModule
from plrlhf.data.registry import UserRegistry
from plrlhf.export import export
from plrlhf.io import atomic_write_json
from plrlhf.methods.lm import Batch
from plrlhf.methods.pdpo import PDPO
from plrlhf.methods.preference import PreferenceModule
from plrlhf.methods.reference import PrecomputedReference
from plrlhf.specs import check_class_paths, resolve_class
from plrlhf.user_models import UserModel

NEW_USERS_FILE = "new_users.json"


@dataclass
class Adaptation:
    """What an adaptation produced."""

    new_users: list[str]
    """The users added, in their new order (user ``i`` of this list has index ``N + 1 + i``)."""
    registry: UserRegistry
    """The trained users followed by the new ones."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Test metrics on ``test`` (``test/...`` the adapted users, ``test/generic/...`` the generic
    user on the same triples), when a test file was given."""
    dropped_known: int = 0
    """Training triples of users the model already had (left out: they are trained already)."""
    started_from: list[str] = field(default_factory=list)
    """For each new user, the user whose parameters it started from (``<generic>`` or a trained
    user)."""
    export_dir: Path | None = None


class NewUsers(LightningModule):
    """Trains the rows of users who arrive after training, with a trained P-DPO method frozen.

    Holds the method (never changed: LM, trained users, settings) and owns only a small user model
    of the new users (:meth:`UserModel.for_new_users`). A step is the method's own scoring and
    loss on the new users' condition, with reference log-probs computed once for the new users'
    triples. Evaluation reports the method's metrics for the new users and for the generic user.
    """

    def __init__(self, method: PDPO, users: UserModel, lr: float) -> None:
        super().__init__()
        self.method = method.requires_grad_(False)
        self.users = users
        self.lr = lr
        self.reference = PrecomputedReference(cache_dir=None)

    def forward(self, batch: Batch, output: str = "values") -> Any:
        # Under a sharding wrapper everything reading the weights runs here.
        if output == "reference":
            return self.method._reference_forward(batch)
        reference = self.reference.lookup(batch["index"]) if self.training else None
        scores = self.method.score(batch, reference=reference, user_model=self.users)
        return self.method.pair_values(scores)

    def on_train_start(self) -> None:
        self.method.eval()  # the frozen model's layers never drop out
        self.reference.prepare(self, self.trainer)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        # The generic user's term has nothing trainable: the new users' term is the objective.
        loss = self(batch)["user"]["loss"].mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["user_ids"].shape[0])
        return loss

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.method.update_metrics("test", batch, self(batch))

    def on_test_epoch_end(self) -> None:
        for name, value in self.method.computed_metrics("test", self.trainer.datamodule).items():
            self.log(name, value, sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            [p for p in self.users.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.0
        )


def new_user_model(trained: UserModel, count: int, start: list[int]) -> UserModel:
    """``trained.for_new_users(count, start)``, checked: each new user must start exactly as the
    user it starts from (a user model written elsewhere that grows another way is refused)."""
    grow = getattr(trained, "for_new_users", None)
    if not callable(grow) or not callable(getattr(trained, "append_users", None)):
        raise TypeError(
            f"{type(trained).__name__} does not say how it grows: it needs for_new_users and append_users"
        )
    small = grow(count, start=start)
    with torch.no_grad():
        device = next(trained.parameters()).device
        got = small(torch.arange(1, count + 1, device=device))
        expected = trained(torch.tensor(start, device=device))
    if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
        raise TypeError(
            f"{type(trained).__name__}.for_new_users does not start new users as the users they start from "
            "(the generic user, or the chosen trained user): override new_user_row or for_new_users"
        )
    return small


def adapt_users(
    method: PDPO,
    registry: UserRegistry,
    train: str | list[str],
    test: str | list[str] | None = None,
    output: str | Path = "runs/adapt",
    steps: int = 100,
    batch_size: int = 8,
    lr: float | None = None,
    start: Literal["closest", "generic"] = "closest",
    candidates: int = 256,
    seed: int = 0,
    trainer: dict[str, Any] | None = None,
    data_args: dict[str, Any] | None = None,
    export_model: bool = True,
) -> Adaptation:
    """Learns the parameters of the users in ``train`` that ``registry`` does not know.

    Args:
        method: a trained personalized method (its user model gains the new users).
        registry: the users it was trained on (gains the new users).
        train: the new users' labelled triples (JSON lines, as for training).
        test: held-out triples to evaluate on (new users' and others').
        output: directory of the logs, ``new_users.json``, ``users.json`` and ``export/``.
        steps: optimizer steps.
        batch_size: triples per step.
        lr: learning rate of the new users' parameters (AdamW, no weight decay); default: the
            user model's learning rate in training.
        start: ``closest``: each new user starts from the trained user (or the generic user)
            whose parameters give its triples the lowest loss, then is fine-tuned; ``generic``:
            every new user starts as the generic user.
        candidates: with ``closest``, how many trained users are tried (a seeded sample).
        seed: seed of the data order.
        trainer: Lightning ``Trainer`` arguments (the trainer presets' ``trainer`` section:
            accelerator, precision, devices, ...); ``max_steps`` is ``steps``.
        data_args: further :class:`PreferenceDataModule` arguments (length limits, field names);
            default: those of the training run when the method came from a checkpoint.
        export_model: export the adapted model to ``<output>/export``.
    """
    if not isinstance(method, PDPO):
        raise TypeError(f"{type(method).__name__} has no user model: adaptation needs a P-DPO method")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    args = {**(data_args or {}), "tokenizer": method.tokenizer_path, "batch_size": batch_size}
    new_users = _new_users(train, registry, args)
    if not new_users:
        raise ValueError(f"no new users in {train}: every user there is already trained")
    UserRegistry(new_users).save(out / NEW_USERS_FILE)
    datamodule = PreferenceDataModule(
        **{**args, "train": train, "test": test, "validation": None, "predict": None},
        user_registry=str(out / NEW_USERS_FILE),
        seed=seed,
    )
    datamodule.setup("fit")
    everyone = datamodule.datasets["train"]
    kept = everyone.select(np.flatnonzero(everyone.user_id_array() != 0))
    dropped = len(everyone) - len(kept)
    datamodule.datasets["train"] = kept
    rank_zero_info(
        f"adapt: {len(new_users)} new users, {len(kept)} training triples"
        + (f" ({dropped} of already trained users left out)" if dropped else "")
    )
    seed_everything(seed)
    settings = {
        "accelerator": "auto",
        "devices": 1,
        "logger": CSVLogger(out, name="", version="logs"),
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "log_every_n_steps": min(10, steps),
        "default_root_dir": str(out),
        **(trainer or {}),
        "max_steps": steps,
        "max_epochs": -1,
    }
    settings.setdefault("precision", "bf16-mixed" if _on_gpu(settings["accelerator"]) else "32-true")
    run = Trainer(**settings)
    starts = [0] * len(new_users)
    if start == "closest":
        starts = closest_users(
            method, datamodule.train_dataloader(), len(new_users), candidates, seed, run.strategy.root_device
        )
    names = [registry.name(i) for i in starts]  # before the registry has the new users
    rank_zero_info(
        "adapt: new users start from " + ", ".join(f"{u} <- {n}" for u, n in zip(new_users, names))
    )
    if lr is None:
        probe = torch.nn.Parameter(torch.zeros(1))
        lr = method.user_model_lr or method.optimizer_factory([probe]).defaults["lr"]
    module = NewUsers(method, new_user_model(method.user_model, len(new_users), starts), lr)
    run.fit(module, datamodule=datamodule)
    metrics: dict[str, float] = {}
    if test is not None:
        (results,) = run.test(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in results.items()}
    trained = method.user_model
    trained.append_users(module.users.to(next(trained.parameters()).device))
    for user in new_users:
        registry.add(user)
    method.num_users = len(registry)
    registry.save(out / "users.json")
    if metrics:
        atomic_write_json(out / "test_metrics.json", dict(sorted(metrics.items())))
    result = Adaptation(new_users, registry, metrics, dropped, names)
    if export_model:
        result.export_dir = export(method, out / "export", registry)
        rank_zero_info(f"adapt: exported to {result.export_dir} (load with plrlhf.export.load)")
    return result


def _on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


@torch.no_grad()
def closest_users(
    method: PDPO,
    batches: Iterable[Batch],
    num_new: int,
    candidates: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[int]:
    """For each new user (``user_ids`` 1..num_new in ``batches``), the trained user (or 0, the
    generic user) under whose parameters the new user's triples have the lowest mean loss (the
    method's own loss; one reference pass per batch serves every candidate)."""
    trained = list(range(1, method.num_users + 1))
    if len(trained) > candidates:
        trained = sorted(random.Random(seed).sample(trained, candidates))
    pool = [0, *trained]
    was_training = method.training
    method.eval().to(device)
    totals = torch.zeros(num_new + 1, len(pool), device=device)
    counts = torch.zeros(num_new + 1, device=device)
    for batch in tqdm(batches, desc="adapt: closest trained users", leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        counts.index_add_(0, batch["user_ids"], torch.ones_like(batch["user_ids"], dtype=counts.dtype))
        reference = method._reference_forward(batch)
        for j, candidate in enumerate(pool):
            as_candidate = {**batch, "user_ids": torch.full_like(batch["user_ids"], candidate)}
            values = method.pair_values(method.score(as_candidate, reference=reference))
            totals[:, j].index_add_(0, batch["user_ids"], values["user"]["loss"].float())
    method.train(was_training)
    best = (totals[1:] / counts[1:, None].clamp(min=1)).argmin(dim=1)
    return [pool[int(i)] for i in best]


def _new_users(train: str | list[str], registry: UserRegistry, data_args: dict[str, Any]) -> list[str]:
    """Users of the training files that the registry does not know, in order of appearance."""
    reader = PreferenceDataModule(**{**data_args, "train": train})
    return [u for u in reader.registry.users if u not in registry]


def load_checkpoint(
    checkpoint: str | Path, trust_checkpoint: bool = False
) -> tuple[PreferenceModule, UserRegistry, dict[str, Any]]:
    """The method, the user registry and the data module arguments of a training checkpoint.

    The file is read as plain data (``weights_only``); the method class it names must be a plrlhf
    method of a module already imported. ``trust_checkpoint`` reads legacy checkpoints that hold
    pickled Python objects: that runs code from the file, so only for files you made yourself.
    """
    state = load_checkpoint_file(checkpoint, weights_only=not trust_checkpoint)
    # The data module's state (under its class name) holds the registry it trained with.
    registry_state = next(
        (
            v["user_registry"]
            for v in state.values()
            if isinstance(v, dict) and isinstance(v.get("user_registry"), dict)
        ),
        None,
    )
    if registry_state is None:
        raise ValueError(f"{checkpoint}: no user registry in the checkpoint (not a plrlhf training run?)")
    class_path = state.get("hyper_parameters", {}).get("_class_path")  # written by the CLI
    if class_path is None:
        raise ValueError(
            f"{checkpoint}: the method class is not recorded (not trained with `plrlhf fit`); load the "
            "method yourself and call plrlhf.adapt.adapt_users"
        )
    cls = resolve_class(class_path, PreferenceModule, str(checkpoint))
    check_class_paths(state.get("hyper_parameters", {}), str(checkpoint))
    method = cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=not trust_checkpoint)
    # The run's data settings (length limits, field names), not its files or batching.
    settings = set(inspect.signature(PreferenceDataModule).parameters) - {
        "train",
        "validation",
        "test",
        "predict",
        "user_registry",
        "batch_size",
        "seed",
    }
    saved = state.get("datamodule_hyper_parameters")
    if saved is None:  # older checkpoints: the run's saved config, <run>/config.yaml
        config = Path(checkpoint).resolve().parents[1] / "config.yaml"
        saved = yaml.safe_load(config.read_text())["data"]["init_args"] if config.is_file() else {}
    data_args = {k: v for k, v in saved.items() if k in settings}
    return method, UserRegistry.from_state_dict(registry_state), data_args


def adapt(
    checkpoint: str,
    train: str,
    test: str | None = None,
    output: str = "runs/adapt",
    steps: int = 100,
    batch_size: int = 8,
    lr: float | None = None,
    start: Literal["closest", "generic"] = "closest",
    seed: int = 0,
    accelerator: str = "auto",
    precision: str | None = None,
    trust_checkpoint: bool = False,
    trainer: dict[str, Any] | None = None,
) -> Adaptation:
    """Adds the users of ``train`` to a trained personalized model and exports it.

    Only the new users' parameters are learned (individual user model: their offsets; cluster:
    their weights over the trained clusters; low-rank: their coefficients); the LM and the users
    of the checkpoint stay as they were. The result is exported to ``<output>/export`` (load with
    ``plrlhf.export.load``) with the registry of old and new users in ``<output>/users.json``.

    Args:
        checkpoint: a checkpoint of a P-DPO training run.
        train: the new users' labelled triples (JSON lines, the training format).
        test: held-out triples to report accuracy on (per new user, and the generic user's).
        output: where logs, registry, metrics and the export go.
        steps: optimizer steps.
        batch_size: triples per step.
        lr: learning rate of the new users' parameters (default: the user model's in training).
        start: ``closest``: start each new user from the trained user (or generic user) that
            explains its triples best, then fine-tune; ``generic``: start from the generic user.
        seed: seed of the data order.
        accelerator: ``cpu``, ``gpu`` or ``auto`` (short for ``--trainer.accelerator``).
        precision: Lightning precision (default: fp32 on CPU, bf16-mixed on GPU).
        trust_checkpoint: read a legacy checkpoint holding pickled Python objects (this runs code
            from the file: only for checkpoints you made yourself).
        trainer: further ``Trainer`` arguments, as in the trainer presets (``--config
            configs/trainer/<preset>.yaml`` or ``--trainer.<name>``).
    """
    method, registry, data_args = load_checkpoint(checkpoint, trust_checkpoint)
    settings = {
        "accelerator": accelerator,
        **({"precision": precision} if precision else {}),
        **(trainer or {}),
    }
    result = adapt_users(
        method,
        registry,
        train,
        test,
        output=output,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        start=start,
        seed=seed,
        trainer=settings,
        data_args=data_args,
    )
    names = ", ".join(result.new_users[:10]) + (" ..." if len(result.new_users) > 10 else "")
    print(f"added {len(result.new_users)} users ({names}); registry: {len(result.registry)} users")
    for user, origin in zip(result.new_users, result.started_from):
        line = f"  {user}: started from {origin}"
        key = f"test/rewards/accuracy/user/{user}"
        if key in result.metrics:
            generic = result.metrics.get(f"test/generic/rewards/accuracy/user/{user}", float("nan"))
            line += f", held-out accuracy {result.metrics[key]:.3f} (generic user {generic:.3f})"
        print(line)
    return result


def parser() -> Any:
    """``plrlhf adapt``: :func:`adapt`'s arguments, a ``trainer`` section as in ``plrlhf fit``
    (the trainer presets compose with ``--config``), and ``--seed_everything`` as an alias of
    ``--seed`` (the presets set it)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    root = ArgumentParser(prog="plrlhf adapt", description=inspect.getdoc(adapt).split("\n\n")[0])
    root.add_argument("--config", action=ActionConfigFile, help="YAML files of these arguments")
    root.add_function_arguments(adapt, as_positional=False, skip={"trainer"})
    root.add_class_arguments(Trainer, "trainer", instantiate=False, fail_untyped=False, sub_configs=True)
    root.add_argument("--seed_everything", type=int | None, default=None, help="alias of --seed")
    return root


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    arguments = parser()
    config = arguments.parse_args(argv)
    defaults = arguments.get_defaults()
    instantiated = arguments.instantiate_classes(config)
    # Only what the command line or a preset changed: the rest keeps adapt's own defaults.
    trainer = {
        key: instantiated.trainer[key]
        for key in config.trainer.keys()
        if "." not in key and config.trainer[key] != defaults.trainer[key]
    }
    options = {k: v for k, v in config.as_dict().items() if k not in ("config", "trainer", "seed_everything")}
    if config.seed_everything is not None:
        options["seed"] = config.seed_everything
    adapt(**options, trainer=trainer)
