"""The command line as users run it: every shipped config, fit then test from the saved config."""

import json

import pytest
import torch
from safetensors.torch import load_file

from plrlhf.cli import run as run_cli
from tests.conftest import ROOT, synthetic_rows, write_jsonl

CONFIGS = ROOT / "configs"
# Fragments compose into a runnable config; GPU presets only parse here (their run is `gpu`).
BASE = ["--config", str(CONFIGS / "trainer/cpu.yaml"), "--config", str(CONFIGS / "data/synthetic.yaml")]
TINY = ["--config", str(CONFIGS / "model/tiny-llama.yaml")]
FAST = ["--trainer.fast_dev_run", "2", "--trainer.logger", "false"]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # configs name data/ relative to the repository root


def run(args):
    return run_cli(args)


@pytest.mark.parametrize("method", sorted(p.name for p in (CONFIGS / "method").glob("*.yaml")))
def test_method_configs_run(method):
    run(["fit", *BASE, "--config", str(CONFIGS / "method" / method), *TINY, *FAST])


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_top_level_configs_run(config, tmp_path):
    run(["fit", "--config", str(CONFIGS / config), *FAST, "--trainer.default_root_dir", str(tmp_path)])


def fixture_data(experiment, directory):
    """Small data in the experiment's format, built from fixture files by its builder."""
    from plrlhf.builders.hh_relabeled import build_hh_relabeled
    from plrlhf.builders.prism import build_prism
    from plrlhf.builders.psoups import build_psoups
    from plrlhf.builders.tldr import build_tldr_length
    from tests import test_builders as fixtures

    out = directory / "data"
    if experiment == "tldr-length":
        build_tldr_length(fixtures.write_tldr_source(directory), out, users=2)
    elif experiment == "psoups":
        build_psoups(fixtures.write_psoups_source(directory), out)
    elif experiment == "prism":
        build_prism(fixtures.write_prism_source(directory), out)
    elif experiment in ("hh-smollm2", "hh-annotators-smollm2", "hh-annotators-smollm2-sft"):
        source = directory / "hh"
        source.mkdir()
        fixtures.write_gz(
            source / "helpful.test.jsonl.gz", [fixtures.hh_row(i, "helpful", i % 2) for i in range(20)]
        )
        fixtures.write_gz(
            source / "harmless.test.jsonl.gz", [fixtures.hh_row(i, "harmless", 0) for i in range(20, 40)]
        )
        build_hh_relabeled(source, out)
    elif experiment in ("hh-length-smollm2", "hh-length-smollm2-sft"):
        from plrlhf.builders.hh_length import build_hh_length

        source = directory / "hh"
        source.mkdir()
        rows = [fixtures.hh_row(i, "helpful", 0) for i in range(60)]
        for i, row in enumerate(rows):  # one response clearly longer than the other
            row["responses"] = [f"Answer {i}.", f"A much longer answer, number {i}, with many more words."]
        fixtures.write_gz(source / "helpful.test.jsonl.gz", rows[:30])
        fixtures.write_gz(source / "harmless.test.jsonl.gz", rows[30:])
        build_hh_length(source, out, users=4, unseen_users=2)
    else:
        return []
    return [f"--data.init_args.{split}={out / f'{split}.jsonl'}" for split in ("train", "validation", "test")]


# The method an experiment composes with, where it is not a P-DPO one (its header says which).
EXPERIMENT_METHOD = {"hh-length-smollm2-sft": "sft", "hh-annotators-smollm2-sft": "sft"}


def experiment_fit(experiment, tmp_path, *extra, method=None):
    """``fit`` of an experiment as shipped after its method file (by default the one its header
    names), on a tiny model, CPU and fixture data in its source's format."""
    method = method or EXPERIMENT_METHOD.get(experiment, "individual_pdpo")
    no_reference = [] if method == "sft" else ["--model.init_args.reference_cache_dir", "null"]
    return run(
        [
            "fit",
            "--config",
            str(CONFIGS / f"method/{method}.yaml"),
            "--config",
            str(CONFIGS / "experiment" / f"{experiment}.yaml"),
            *TINY,
            "--data.init_args.tokenizer",
            "data/tokenizer",
            "--trainer.accelerator",
            "cpu",
            "--trainer.precision",
            "32-true",
            *fixture_data(experiment, tmp_path),
            "--trainer.default_root_dir",
            str(tmp_path),
            *no_reference,
            *extra,
        ]
    )


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_experiment_configs_run(experiment, tmp_path):
    experiment_fit(experiment, tmp_path, *FAST)


def real_model():
    """``benchmarks/real_model.py`` as a module."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import real_model
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return real_model


def warm_starts():
    """Every part's warm-started methods as ``benchmarks/real_model.py`` defines them (read while
    the tests are collected, so that a new one is tested without being named here)."""
    script = real_model()
    return [
        pytest.param(
            config,
            part["methods"][method],
            experiment,
            part["experiment"],
            script.sft_user_model(config, part["methods"][method]),
            id=f"part{number}-{method}",
        )
        for number, part in ((1, script.PART1), (2, script.PART2))
        for method, (config, experiment) in part["warm_starts"].items()
    ]


def policy_weight(module, name):
    """The frozen base weight ``name`` (e.g. ``layers.0.self_attn.q_proj.weight``) of a method's
    policy (under LoRA it is the wrapped layer's ``base_layer``)."""
    wanted = (name, name.replace(".weight", ".base_layer.weight"))
    (weight,) = (p for n, p in module.policy.named_parameters() if n.endswith(wanted))
    return weight.detach()


@pytest.mark.parametrize(
    ("config", "method_args", "experiment", "method_experiment", "sft_user_model"), warm_starts()
)
def test_warm_start_chains_its_two_stages(
    config, method_args, experiment, method_experiment, sft_user_model, tmp_path
):
    """Each warm-started method of a part as ``benchmarks/real_model.py`` runs it: the shipped SFT
    stage with the method's user model (or none), then the method from its export: the model, and
    the user model where the method has one (the stages' user models must agree, or the second
    stage refuses to start)."""
    log = ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    stage = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", *log]
    (tmp_path / "sft").mkdir(), (tmp_path / "pdpo").mkdir()  # each stage builds the same fixture data
    sft = experiment_fit(
        experiment.stem,
        tmp_path / "sft",
        *stage,
        *sft_user_model,
        "--trainer.logger.init_args.version",
        "sft",
    )
    export = tmp_path / "runs/sft/export"
    cli = experiment_fit(
        method_experiment.stem,
        tmp_path / "pdpo",
        *stage,
        "--trainer.logger.init_args.version",
        "pdpo",
        *real_model().started_from(config, export),
        "--trainer.max_steps",
        "0",
        *method_args,
        method=config,
    )
    # The same seed, no step: the SFT stage's own start, which its step must have moved (else the
    # equalities below could hold with nothing passed on).
    # (Not ``FAST``: ``fast_dev_run`` overrides ``max_steps``.)
    (tmp_path / "sft0").mkdir()
    sft0 = experiment_fit(
        experiment.stem, tmp_path / "sft0", *stage, *sft_user_model, "--trainer.max_steps", "0",
        "--trainer.logger.init_args.version", "sft0",
    )  # fmt: skip
    assert sft0.trainer.global_step == 0
    exported = load_file(str(export / "model/model.safetensors"))
    name = next(k for k in exported if k.endswith("layers.0.self_attn.q_proj.weight"))
    start = policy_weight(cli.model, name.removeprefix("model."))
    assert torch.equal(start, exported[name])
    assert not torch.equal(start, policy_weight(sft0.model, name.removeprefix("model.")))
    if sft.model.user_model is None:
        assert cli.model.user_model is None
        return
    assert sft.model.hparams.user_model_lr == cli.model.hparams.user_model_lr
    sft_weights = load_file(str(export / "user_model.safetensors"))
    started = cli.model.user_model.state_dict()
    assert sft_weights.keys() == started.keys()
    assert all(torch.equal(sft_weights[k], started[k]) for k in sft_weights)
    initial = sft0.model.user_model.state_dict()
    assert any(not torch.equal(sft_weights[k], initial[k]) for k in sft_weights)


def flattened(tree, prefix=""):
    """A parsed YAML file as ``{"a.b.c": leaf}`` (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    paths = (f"{prefix}.{key}".lstrip(".") for key in tree)
    return {k: v for path, sub in zip(paths, tree.values()) for k, v in flattened(sub, path).items()}


# What a part's SFT stage may set that its experiment file does not: the stage's own arguments
# (its user model and rate, its generation length) and its validation (part 2's stage has none).
SFT_STAGE_ONLY = ("model.init_args.user_model", "model.init_args.generation", "trainer.limit_val_batches")


@pytest.mark.parametrize(
    ("experiment", "method_experiment"),
    sorted({p.values[2:4] for p in warm_starts()}),
    ids=lambda path: path.stem,
)
def test_sft_stage_configs_follow_their_part(experiment, method_experiment):
    """A part's SFT stage file repeats its experiment file's data, model, LoRA, optimizer, schedule,
    seed and trainer (a stage of the same run; one YAML cannot drop the P-DPO arguments that
    ``plrlhf.SFT`` refuses, so the stage is a file of its own). Every setting the two share must
    be equal; the part's own are P-DPO arguments, its checkpoints are the stage's first callbacks."""
    import inspect

    import yaml

    from plrlhf import SFT

    stage, part = (flattened(yaml.safe_load(f.read_text())) for f in (experiment, method_experiment))
    stage_callbacks, part_callbacks = stage.pop("trainer.callbacks"), part.pop("trainer.callbacks")
    assert stage_callbacks[: len(part_callbacks)] == part_callbacks
    assert [c["class_path"] for c in stage_callbacks[len(part_callbacks) :]] == ["plrlhf.callbacks.Export"]
    stage_only = {k for k in stage.keys() - part.keys() if not k.startswith(SFT_STAGE_ONLY)}
    assert not stage_only, f"{experiment.name} sets what {method_experiment.name} does not: {stage_only}"
    sft_arguments = {n for c in SFT.__mro__ for n in inspect.signature(c.__init__).parameters}
    part_only = {k for k in part.keys() - stage.keys() if k != "trainer.val_check_interval"}
    init_args = "model.init_args."
    sft_ones = {k for k in part_only if not k.startswith(init_args) or k.split(".")[2] in sft_arguments}
    assert not sft_ones, f"{experiment.name} lacks settings of {method_experiment.name}: {sft_ones}"
    differ = {k for k in stage.keys() & part.keys() if stage[k] != part[k]}
    assert not differ, f"{experiment.name} and {method_experiment.name} differ in {differ}"


def test_readme_custom_data_command_runs():
    """The README's "Your data" command, with the bundled files standing in for the user's."""
    run(
        [
            "fit",
            "--config",
            str(CONFIGS / "trainer/cpu.yaml"),
            "--config",
            str(CONFIGS / "method/individual_pdpo.yaml"),
            *TINY,
            "--data",
            "plrlhf.PreferenceDataModule",
            "--data.init_args.tokenizer",
            "data/tokenizer",
            "--data.init_args.train",
            "data/synthetic/train.jsonl",
            "--data.init_args.validation",
            "data/synthetic/validation.jsonl",
            "--trainer.fast_dev_run",
            "1",
        ]
    )


def test_lora_from_the_command_line():
    cli = run(
        [
            "fit",
            *BASE,
            "--config",
            str(CONFIGS / "method/individual_pdpo.yaml"),
            *TINY,
            *FAST,
            "--model.init_args.lora",
            "peft.LoraConfig",
            "--model.init_args.lora.r",
            "4",
            "--model.init_args.lora.target_modules",
            "all-linear",
        ]
    )
    policy = cli.model.policy
    assert policy.uses_lora and policy.lm.peft_config["default"].r == 4
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert policy.reference is None and not policy.reference_free  # the adapters disabled are the reference


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_preset_runs():
    run(
        [
            "fit",
            "--config",
            str(CONFIGS / "trainer/gpu-bf16.yaml"),
            "--config",
            str(CONFIGS / "data/synthetic.yaml"),
            "--config",
            str(CONFIGS / "method/individual_pdpo.yaml"),
            *TINY,
            *FAST,
        ]
    )


@pytest.mark.parametrize("trainer", sorted(p.name for p in (CONFIGS / "trainer").glob("*.yaml")))
def test_trainer_presets_parse(trainer, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(
            [
                "fit",
                "--config",
                str(CONFIGS / "trainer" / trainer),
                "--config",
                str(CONFIGS / "data/synthetic.yaml"),
                "--config",
                str(CONFIGS / "method/dpo.yaml"),
                *TINY,
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    assert "class_path: plrlhf.DPO" in capsys.readouterr().out


def test_unknown_key_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        run(
            [
                "fit",
                *BASE,
                "--config",
                str(CONFIGS / "method/dpo.yaml"),
                *TINY,
                "--model.init_args.betta",
                "0.2",
            ]
        )
    assert "betta" in capsys.readouterr().err


def test_fit_then_test_from_the_saved_config(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    users = ("user_0", "user_1", "user_4")
    rows = [r for r in synthetic_rows("train") if r["user_id"] in users][:48]
    train = write_jsonl(data / "train.jsonl", [*rows, {**rows[0], "chosen": ""}])
    test = write_jsonl(
        data / "test.jsonl", [r for r in synthetic_rows("test") if r["user_id"] in users + ("new_0",)][:40]
    )
    fit_args = [
        "fit",
        *BASE,
        "--config",
        str(CONFIGS / "method/individual_pdpo.yaml"),
        *TINY,
        "--data.init_args.train",
        str(train),
        "--data.init_args.validation",
        "null",
        "--data.init_args.test",
        str(test),
        "--trainer.max_steps",
        "3",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(tmp_path),
        "--trainer.logger.name",
        "run",
        "--trainer.logger.version",
        "0",
    ]
    run(fit_args)
    log_dir = tmp_path / "run" / "version_0"
    assert sorted(json.loads((log_dir / "users.json").read_text())["users"]) == sorted(users)
    (kept,) = json.loads((log_dir / "data.json").read_text()).items()  # no validation split
    assert kept[0] == "train"
    assert {k: kept[1][k] for k in ("read", "kept", "dropped")} == {
        "read": 49,
        "kept": 48,
        "dropped": {"empty response": 1},
    }
    (checkpoint,) = (log_dir / "checkpoints").glob("*.ckpt")
    capsys.readouterr()
    run(["test", "--config", str(log_dir / "config.yaml"), "--ckpt_path", str(checkpoint)])
    metrics = json.loads((log_dir / "test" / "test_metrics.json").read_text())
    for name in (
        "test/loss",
        "test/rewards/accuracy",
        "test/rewards/margins",
        "test/rewards/chosen",
        "test/rewards/rejected",
        "test/logps/chosen",
        "test/logps/rejected",
        "test/rewards/accuracy/user/user_0",
        "test/rewards/accuracy/user/new_0",
        "test/rewards/accuracy/group/minority",
        "test/rewards/accuracy/seen",
        "test/rewards/accuracy/unseen",
        "test/generic/rewards/accuracy",
    ):
        assert name in metrics, name
    table = capsys.readouterr().out
    assert "user user_4" in table and "generic acc" in table

    run(
        [
            "predict",
            "--config",
            str(log_dir / "config.yaml"),
            "--ckpt_path",
            str(checkpoint),
            "--data.init_args.predict",
            str(test),
        ]
    )
    predictions = [
        json.loads(line) for line in (log_dir / "predict" / "predictions.jsonl").read_text().splitlines()
    ]
    assert (
        len(predictions) == 40
        and predictions[0]["user_id"] == json.loads(test.read_text().splitlines()[0])["user_id"]
    )
    assert {"rewards/margins", "generic/rewards/margins", "logps/chosen"} <= set(predictions[0])

    # The same number of users under other names would silently mix users up: refused.
    other = tmp_path / "other-users.json"
    other.write_text(json.dumps({"users": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="another user registry"):
        run(
            [
                "test",
                "--config",
                str(log_dir / "config.yaml"),
                "--ckpt_path",
                str(checkpoint),
                "--data.init_args.user_registry",
                str(other),
            ]
        )

    # A user who arrives later: `plrlhf adapt` from the checkpoint adds and exports them.
    new = write_jsonl(
        tmp_path / "new.jsonl", [r for r in synthetic_rows("test") if r["user_id"] == "new_2"][:4]
    )
    out = tmp_path / "adapt"
    run(["adapt", "--checkpoint", str(checkpoint), "--train", str(new), "--test", str(test), "--steps", "2",
         "--output", str(out), "--accelerator", "cpu"])  # fmt: skip
    assert json.loads((out / "users.json").read_text())["users"][-1] == "new_2"
    assert json.loads((out / "export" / "users.json").read_text())["users"][-1] == "new_2"
    assert "test/rewards/accuracy" in json.loads((out / "test_metrics.json").read_text())
    assert "started from" in capsys.readouterr().out


def test_external_user_model_by_class_path():
    from tests.test_methods import MeanUserModel

    cli = run(
        [
            "fit",
            *BASE,
            "--model",
            "plrlhf.PDPO",
            "--model.init_args.user_model",
            "tests.test_methods.MeanUserModel",
            "--model.init_args.user_model.init_args.n_tokens",
            "3",
            *TINY,
            *FAST,
        ]
    )
    users = cli.model.user_model
    assert type(users) is MeanUserModel and users.n_tokens == 3
    (group,) = [g for g in cli.trainer.optimizers[0].param_groups if g["name"] == "user_model"]
    assert any(p is users.table.weight for p in group["params"])  # trained with the method


def test_a_resumed_fit_keeps_the_metrics_logged_before_it(tmp_path):
    """Lightning's CSVLogger deletes metrics.csv when its directory is not empty; a fit resumed
    with --ckpt_path last into its own directory must still hold every step once, and the
    validation of the first part."""
    import csv

    def fit(max_steps, *extra):
        run(
            ["fit", *BASE, "--config", str(CONFIGS / "method/dpo.yaml"), *TINY]
            + ["--trainer.max_steps", str(max_steps), "--trainer.log_every_n_steps", "1"]
            + ["--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1"]
            + ["--data.init_args.max_records", '{"train": 64, "validation": 8}']
            + ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
            + ["--trainer.logger.save_dir", str(tmp_path), "--trainer.logger.name", "run"]
            + ["--trainer.logger.version", "0", *extra]
        )

    fit(4)
    log_dir = tmp_path / "run" / "version_0"
    (checkpoint,) = (log_dir / "checkpoints").glob("*.ckpt")
    fit(7, "--ckpt_path", str(checkpoint))
    with (log_dir / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert train_steps == list(range(7))  # steps 0-3 from the first fit, once each
    validated = sorted(int(r["step"]) for r in rows if r.get("val/loss"))
    # the first fit's validation (after 3 steps, logged at 2, before its checkpoint) and the
    # resumed fit's own, once each
    assert len(validated) == 2 and validated[0] == 2 and validated[1] > 3
