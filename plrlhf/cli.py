"""``plrlhf fit|validate|test|predict``: the one place where data and methods meet."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from plrlhf.callbacks.final_checkpoint import SaveLastAtEnd
from plrlhf.callbacks.predictions import PredictionWriter
from plrlhf.callbacks.preemption import SaveOnSigterm
from plrlhf.callbacks.report import TestReport
from plrlhf.callbacks.resumed_logs import KeepMetricsOnResume
from plrlhf.checkpoint_io import AtomicCheckpointIO, check_checkpoint_file, load_checkpoint
from plrlhf.data.datamodule import PreferenceDataModule
from plrlhf.methods.lm import LanguageModelModule
from plrlhf.specs import check_class_paths, resolve_class


class SaveFitConfig(SaveConfigCallback):
    """Saves ``config.yaml`` for ``fit`` only: evaluating a run with its saved config must not
    replace that config with the evaluation's own (which ``fit`` could not read back)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


def _length_layout(model: Any) -> str:
    """The row layout of the method's training rows, for length grouping (SFT has none)."""
    init_args = getattr(model, "init_args", None)
    return "shared_prompt" if init_args is not None and init_args.get("shared_prompt") else "pair"


def model_options(argv: list[str]) -> dict[str, Any]:
    """The ``--model.<path> <value>`` (or ``=value``) options of a command line, as a nested dict
    (values read as YAML, as jsonargparse reads them)."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--model.") or token == "--model":
            if "=" in token:
                key, value = token[2:].split("=", 1)
            elif i + 1 < len(argv):
                key, value = token[2:], argv[i + 1]
                i += 1
            else:
                break
            node = options
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
        i += 1
    return options


class PlrlhfCLI(LightningCLI):
    """LightningCLI with the links that keep the YAML free of derived values.

    The tokenizer directory and the number of users are properties of the data; they are linked
    into the method's shared base arguments, so any method and any data module subclass compose.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        self._argv = list(given) if given is not None else sys.argv[1:]
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer")
        parser.link_arguments(
            "data",
            "model.init_args.num_users",
            compute_fn=lambda data: data.num_users,
            apply_on="instantiate",
        )
        # Length grouping follows the method's row layout (a scalar, from the shared base class).
        parser.link_arguments("model", "data.init_args.length_layout", compute_fn=_length_layout)
        parser.add_lightning_class_args(TestReport, "test_report")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(KeepMetricsOnResume, "keep_metrics_on_resume")
        parser.add_lightning_class_args(SaveOnSigterm, "sigterm")
        parser.add_lightning_class_args(SaveLastAtEnd, "save_last_at_end")

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "test":
            # plrlhf's own per-user table (TestReport) instead of Lightning's 80-row metric dump
            parser.set_defaults(verbose=False)
        if subcommand in EVALUATIONS:
            parser.add_argument(
                "--untrained",
                type=bool,
                default=False,
                help="evaluate the model as built (pretrained base, fresh adapters and user model) "
                "instead of refusing to run without --ckpt_path",
            )
        return parser

    def before_fit(self) -> None:
        if self.config.get(self.subcommand, {}).get("ckpt_path") is not None:
            for callback in self.trainer.callbacks:
                if isinstance(callback, KeepMetricsOnResume):
                    callback.stash(self.trainer)

    def _parse_ckpt_path(self) -> None:
        # Lightning's, with three changes: ``last`` is the evaluated run's own checkpoint; a
        # missing, empty or directory path is named; and the checkpoint's hyperparameters, which
        # are read into the config (building the classes they name), must name only plrlhf methods
        # and classes of modules already imported (read weights_only).
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        if subcommand in EVALUATIONS:
            config.ckpt_path = resolve_checkpoint(config, run_directory(config), subcommand)
            if config.ckpt_path is not None:
                check_checkpoint_file(config.ckpt_path)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None or not Path(ckpt_path).is_file():
            return  # (fit resolves "last" itself)
        hparams = load_checkpoint(ckpt_path).get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        check_class_paths(hparams, str(ckpt_path))
        if "_class_path" in hparams:
            resolve_class(hparams["_class_path"], LanguageModelModule, str(ckpt_path))
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
            # What the command line says about the model wins over the checkpoint (e.g. predict's
            # --model.init_args.generation): Lightning would let the checkpoint's values replace it.
            explicit = model_options(self._argv).get("model")
            if isinstance(explicit, dict):
                explicit.setdefault("class_path", self.config[subcommand].model.class_path)
                self.config = self.parser.parse_object({subcommand: {"model": explicit}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def before_instantiate_classes(self) -> None:
        if self.subcommand is not None:
            limit_records_for_fast_dev_run(self.config[self.subcommand])
        if self.subcommand in (None, "fit"):
            return
        config = self.config[self.subcommand]
        run = run_directory(config)
        # Evaluation writes no checkpoints: a ModelCheckpoint from the run's config would only
        # warn that its directory moved with the logs.
        callbacks = config.trainer.get("callbacks") or []
        config.trainer.callbacks = [
            c for c in callbacks if not str(getattr(c, "class_path", "")).endswith("ModelCheckpoint")
        ]
        config.trainer.enable_checkpointing = False
        # ... and Lightning, finding the checkpoint's ModelCheckpoint state without the callback,
        # would ask for it to be added back ("Please add the following callbacks").
        warnings.filterwarnings(
            "ignore", message="Be aware that when using `ckpt_path`, callbacks used to create"
        )
        # Evaluating a run from its saved config would reuse the run's logger version, and the
        # logger would replace the training metrics there: evaluation logs go one level down.
        logger = config.trainer.logger
        if logger in (None, True) and run is not None:
            # Lightning's default logger would start a new lightning_logs/version_<n+1>: log below
            # the run being evaluated instead.
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=Namespace(save_dir=str(run), name="", version=self.subcommand),
            )
            return
        init_args = getattr(logger, "init_args", None)
        if init_args is None:
            return
        if run is not None and hasattr(init_args, "save_dir"):
            # The evaluated run's own directory (the config's logger paths may be relative to
            # another working directory): logs go below it.
            init_args.save_dir, init_args.version = str(run), self.subcommand
            if hasattr(init_args, "name"):
                init_args.name = ""
            return
        version = getattr(init_args, "version", None)
        if version not in (None, ""):
            name = f"version_{version}" if isinstance(version, int) else version  # as the loggers name it
            init_args.version = f"{name}/{self.subcommand}"

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # atomic writes, safe loads
        return trainer


EVALUATIONS = ("validate", "test", "predict")


def limit_records_for_fast_dev_run(config: Any) -> None:
    """Read only the records that will be used, not whole large splits: under ``fast_dev_run``
    those of its batches (a smoke run of a million triples starts in seconds), and the first
    ``n`` batches of an unshuffled evaluation split for an integer ``limit_<split>_batches``. (An
    integer ``limit_train_batches`` still needs every triple: the epoch's order is shuffled.)"""
    data = getattr(config.get("data"), "init_args", None)
    if data is None or not hasattr(data, "max_records") or data.max_records is not None:
        return
    devices = config.trainer.get("devices")
    processes = devices if isinstance(devices, int) and devices > 0 else 1
    per_batch = max(data.batch_size, data.eval_batch_size or data.batch_size)
    runs = config.trainer.get("fast_dev_run")
    if runs:
        data.max_records = (1 if runs is True else int(runs)) * per_batch * processes
        return
    limits = {}
    for split, option in (("validation", "val"), ("test", "test"), ("predict", "predict")):
        batches = config.trainer.get(f"limit_{option}_batches")
        # Zero batches: the data module does not read the split at all.
        if isinstance(batches, int) and not isinstance(batches, bool) and batches > 0:
            limits[split] = batches * (data.eval_batch_size or data.batch_size) * processes
    data.max_records = limits or None


def run_directory(config: Any) -> Path | None:
    """The training run a ``validate/test/predict`` config belongs to: the directory of a
    ``--config <run>/config.yaml`` saved by ``fit`` (wherever the command runs from), else the
    logger's fixed version directory."""
    for path in reversed(config.get("config") or []):
        path = Path(str(path))
        if path.name == "config.yaml" and (path.parent / "checkpoints").is_dir():
            return path.parent
    init_args = getattr(config.trainer.logger, "init_args", None)
    version = getattr(init_args, "version", None)
    if version not in (None, "") and getattr(init_args, "save_dir", None) is not None:
        name = getattr(init_args, "name", None) or ""
        version = f"version_{version}" if isinstance(version, int) else str(version)
        return Path(init_args.save_dir) / name / version
    return None


def resolve_checkpoint(config: Any, run: Path | None, subcommand: str) -> str | None:
    """``--ckpt_path last`` as the evaluated run's own ``last.ckpt``; no checkpoint at all is
    refused unless ``--untrained true``."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is None:
        if config.get("untrained"):
            return None
        raise SystemExit(
            f"plrlhf {subcommand}: no --ckpt_path given, so the model would be evaluated with untrained "
            "weights. Give a checkpoint (--ckpt_path <run>/checkpoints/last.ckpt, or --ckpt_path last with "
            "the run's config.yaml), or pass --untrained true to evaluate the model as built."
        )
    if ckpt_path != "last":
        return ckpt_path
    directories = [
        Path(c.init_args.dirpath)
        for c in config.trainer.get("callbacks") or []
        if getattr(c, "class_path", "").endswith("ModelCheckpoint") and c.init_args.get("dirpath")
    ]
    if run is not None:
        directories.append(run / "checkpoints")
    name = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    for directory in directories:
        if (directory / name).is_file():
            return str(directory / name)
    # No save_last: the newest checkpoint of the run (not a failed run's non-finite dump).
    saved = [
        p for d in directories if d.is_dir() for p in d.glob("*.ckpt") if not p.name.startswith("nonfinite")
    ]
    if saved:
        newest = max(saved, key=lambda p: p.stat().st_mtime)
        print(f"plrlhf {subcommand}: --ckpt_path last is {newest} (the run's newest checkpoint)")
        return str(newest)
    looked = ", ".join(str(d) for d in directories) or "nowhere: no run directory is known"
    raise SystemExit(
        f"plrlhf {subcommand}: --ckpt_path last found no checkpoint (looked in {looked}). Give the run's "
        "config (--config <run>/config.yaml) or the checkpoint's path."
    )


COMMANDS = {
    "fit": "train a method on preference triples (LightningCLI: --config files compose)",
    "validate": "evaluate a trained run on its validation data",
    "test": "evaluate a trained run on test data: per-user table and test_metrics.json",
    "predict": "generate a response per (user, prompt), or score triples, to predictions.jsonl",
    "data": "build train/validation/test triples from a dataset's published files",
    "adapt": "add users who arrive after training, from a few of their preferences",
    "evaluate": "generate per (user, prompt) with a model and a baseline; a judge gives win rates",
    "convert-gguf": "convert a GGUF checkpoint (SmolLM2 offline) to a transformers directory",
}


OWN_PARSERS = {
    "data": "plrlhf.builders.cli",
    "adapt": "plrlhf.adapt",
    "evaluate": "plrlhf.evaluate",
    "convert-gguf": "plrlhf.gguf",
}


def overview() -> str:
    from plrlhf import __version__

    width = max(map(len, COMMANDS))
    lines = [
        f"usage: plrlhf <command> [options]        (plrlhf {__version__})",
        "",
        "Personalized preference optimization (P-DPO) of language models, on Lightning.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, summary in COMMANDS.items()),
        "",
        "plrlhf <command> --help shows a command's options; plrlhf --version its version.",
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """The ``plrlhf`` command (a console script: returns nothing, its exit status is 0 or an error)."""
    run(args)


def run(args: list[str] | None = None) -> Any:
    """:func:`main`, returning the LightningCLI object of a Trainer subcommand (for tests and
    notebooks)."""
    # Lightning's own deprecation notice about torch's pytree, printed on every run: not ours to fix.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    argv = sys.argv[1:] if args is None else args
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return None
    if argv[0] == "--version":
        from plrlhf import __version__

        print(f"plrlhf {__version__}")
        return None
    if not argv[0].startswith("-") and argv[0] not in COMMANDS:
        raise SystemExit(f"plrlhf: unknown command {argv[0]!r}\n\n{overview()}")
    if argv[0] in OWN_PARSERS:
        # Data preparation, adaptation of new users and model conversion are not Trainer entry
        # points: their own parsers, built from their functions' signatures.
        return importlib.import_module(OWN_PARSERS[argv[0]]).main(argv[1:])
    try:
        return PlrlhfCLI(
            LanguageModelModule,
            PreferenceDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_callback=SaveFitConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "plrlhf"},
            args=args,
        )
    except ValueError as error:
        # Errors raised while LightningCLI computes an argument link (e.g. building the user
        # registry from a bad file) arrive wrapped in jsonargparse's own message and traceback.
        cause = error.__cause__
        if "compute_fn of link" not in str(error) or cause is None or os.environ.get("PLRLHF_DEBUG"):
            raise
        raise SystemExit(f"error: {cause} (PLRLHF_DEBUG=1 shows the traceback)") from None


if __name__ == "__main__":
    main()
