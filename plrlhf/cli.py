"""``plrlhf fit|validate|test|predict``: the one place where data and methods meet."""

from __future__ import annotations

import sys

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from plrlhf.callbacks.predictions import PredictionWriter
from plrlhf.callbacks.report import TestReport
from plrlhf.data.datamodule import PreferenceDataModule
from plrlhf.methods.base import PreferenceModule


class SaveFitConfig(SaveConfigCallback):
    """Saves ``config.yaml`` for ``fit`` only: evaluating a run with its saved config must not
    replace that config with the evaluation's own (which ``fit`` could not read back)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class PlrlhfCLI(LightningCLI):
    """LightningCLI with the links that keep the YAML free of derived values.

    The tokenizer directory and the number of users are properties of the data; they are linked
    into the method's shared base arguments, so any method and any data module subclass compose.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer")
        parser.link_arguments(
            "data",
            "model.init_args.num_users",
            compute_fn=lambda data: data.num_users,
            apply_on="instantiate",
        )
        # Length grouping follows the method's row layout (a scalar, from the shared base class).
        parser.link_arguments(
            "model.init_args.shared_prompt",
            "data.init_args.length_layout",
            compute_fn=lambda shared: "shared_prompt" if shared else "pair",
        )
        parser.add_lightning_class_args(TestReport, "test_report")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")

    def before_instantiate_classes(self) -> None:
        # Evaluating a run from its saved config would reuse the run's logger version, and the
        # logger would replace the training metrics there: evaluation logs go one level down.
        if self.subcommand in (None, "fit"):
            return
        logger = self.config[self.subcommand].trainer.logger
        init_args = getattr(logger, "init_args", None)
        version = getattr(init_args, "version", None)
        if init_args is not None and version not in (None, ""):
            run = f"version_{version}" if isinstance(version, int) else version  # as the loggers name it
            init_args.version = f"{run}/{self.subcommand}"


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    # Data preparation, adaptation of new users and model conversion are not Trainer entry points:
    # their own parsers, not LightningCLI.
    if argv[:1] == ["data"]:
        from plrlhf.builders.cli import main as data_main

        return data_main(argv[1:])
    if argv[:1] == ["adapt"]:
        from plrlhf.adapt import main as adapt_main

        return adapt_main(argv[1:])
    if argv[:1] == ["convert-gguf"]:
        from plrlhf.gguf import main as convert_main

        return convert_main(argv[1:])
    PlrlhfCLI(
        PreferenceModule,
        PreferenceDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_callback=SaveFitConfig,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
