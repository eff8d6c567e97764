"""``plrlhf fit|validate|test|predict``: the one place where data and methods meet."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from plrlhf.callbacks.report import TestReport
from plrlhf.data.datamodule import PreferenceDataModule
from plrlhf.methods.base import PreferenceModule


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
        parser.add_lightning_class_args(TestReport, "test_report")


def main(args: list[str] | None = None) -> None:
    PlrlhfCLI(
        PreferenceModule,
        PreferenceDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
