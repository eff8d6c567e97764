"""``plrlhf test|predict`` of a trained run: the run's own checkpoint, never untrained weights by
accident, and outputs below the run whatever the logger's version setting."""

import json

import pytest

from plrlhf.cli import main
from tests.conftest import ROOT, fit_args, synthetic_rows, write_jsonl

CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short IndividualPDPO run with the default logger: no fixed version (``version_0``)."""
    tmp = tmp_path_factory.mktemp("run")
    users = ("user_0", "user_1", "user_4")
    train = write_jsonl(
        tmp / "train.jsonl", [r for r in synthetic_rows("train") if r["user_id"] in users][:48]
    )
    test = write_jsonl(tmp / "test.jsonl", [r for r in synthetic_rows("test") if r["user_id"] in users][:24])
    main(
        fit_args(
            "individual_pdpo",
            train,
            test,
            6,
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(tmp),
            "--trainer.logger.name",
            "run",
        )  # fmt: skip
    )
    run = tmp / "run" / "version_0"
    assert (run / "checkpoints").is_dir() and (run / "config.yaml").is_file()
    return run, test


def metrics(run):
    return json.loads((run / "test" / "test_metrics.json").read_text())


def test_without_a_checkpoint_test_and_predict_refuse(trained, tmp_path, monkeypatch):
    run, test = trained
    monkeypatch.chdir(tmp_path)
    for command in ("test", "predict"):
        with pytest.raises(SystemExit) as refused:
            main([command, "--config", str(run / "config.yaml"), "--data.init_args.predict", str(test)])
        assert "no --ckpt_path given" in str(refused.value.code) and "--untrained true" in str(
            refused.value.code
        )
    assert not (run / "test").exists() and not (run / "predict").exists()


def test_ckpt_path_last_is_the_runs_own_checkpoint_and_outputs_go_below_the_run(
    trained, tmp_path, monkeypatch
):
    run, test = trained
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint)])
    explicit = metrics(run)
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", "last"])
    assert metrics(run) == explicit
    main(["test", "--config", str(run / "config.yaml"), "--untrained", "true"])
    untrained = metrics(run)
    assert untrained["test/rewards/margins"] != explicit["test/rewards/margins"]
    main(
        [
            "predict",
            "--config",
            str(run / "config.yaml"),
            "--ckpt_path",
            "last",
            "--data.init_args.predict",
            str(test),
        ]
    )
    assert len((run / "predict" / "predictions.jsonl").read_text().splitlines()) == 24
    assert not list(tmp_path.iterdir())  # no lightning_logs/ version_<n+1> beside
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


def test_ckpt_path_last_without_a_last_checkpoint_is_a_clear_error(trained, tmp_path):
    run, _ = trained
    config = tmp_path / "config.yaml"  # the run's config, elsewhere: no run directory is known
    config.write_text((run / "config.yaml").read_text())
    with pytest.raises(SystemExit, match="--ckpt_path last found no checkpoint"):
        main(["test", "--config", str(config), "--ckpt_path", "last"])


def test_command_line_model_options_win_over_the_checkpoint(trained, tmp_path, monkeypatch):
    """Lightning reads the checkpoint's hyperparameters into the config after the command line;
    an option the user typed (here the generation settings) must not be replaced by them."""
    run, _ = trained
    monkeypatch.chdir(tmp_path)
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [{"user_id": "user_0", "prompt": "Summarize the note.\nNote: Ana ran.\nSummary:"}] * 3,
    )
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", "last",
          "--data.init_args.predict", str(prompts),
          "--model.init_args.generation", '{"max_new_tokens": 3, "do_sample": false}',
          "--prediction_writer.filename", "short.jsonl"])  # fmt: skip
    rows = [json.loads(line) for line in (run / "predict" / "short.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["response_tokens"] <= 3 for r in rows)


def test_a_run_is_evaluated_from_any_working_directory(tmp_path, monkeypatch):
    """A run logged to a relative directory, evaluated from elsewhere with its config.yaml."""
    made = tmp_path / "project"
    made.mkdir()
    monkeypatch.chdir(made)
    rows = [r for r in synthetic_rows("train") if r["user_id"] in ("user_0", "user_4")][:16]
    data = write_jsonl(made / "t.jsonl", rows)
    main(
        fit_args(
            "dpo",
            data,
            data,
            1,
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            "runs",
            "--trainer.logger.name",
            "",
            "--trainer.logger.version",
            "mine",
        )  # fmt: skip
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    main(["test", "--config", str(made / "runs/mine/config.yaml"), "--ckpt_path", "last"])
    assert (made / "runs/mine/test/test_metrics.json").is_file() and not list(elsewhere.iterdir())
