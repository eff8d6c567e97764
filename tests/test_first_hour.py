"""What a new user meets first: one help for every command, its own usage line per command, a
version, readable test output, outputs where the README says, no warning that reads like a bug."""

import json
import warnings

import pytest

from plrlhf import __version__
from plrlhf.cli import COMMANDS, main
from tests.conftest import ROOT, fit_args, synthetic_rows, write_jsonl

CONFIGS = ROOT / "configs"


def test_the_top_level_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "data", "adapt", "evaluate", "convert-gguf"):
        assert f"  {command} " in out, command
    assert set(COMMANDS) == {
        "fit",
        "validate",
        "test",
        "predict",
        "data",
        "adapt",
        "evaluate",
        "convert-gguf",
    }
    main([])
    assert capsys.readouterr().out == out
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"plrlhf {__version__}"
    with pytest.raises(SystemExit, match="unknown command 'trian'"):
        main(["trian"])


@pytest.mark.parametrize("command", ["fit", "test", "predict", "data", "adapt", "convert-gguf"])
def test_each_command_names_itself_in_its_usage(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    usage = capsys.readouterr().out.split("\n", 1)[0].split()
    # "usage: plrlhf data ..." or, for the Trainer commands, "usage: plrlhf [options] fit ..."
    assert usage[1] == "plrlhf" and command in usage[2:4], usage


@pytest.fixture(scope="module")
def run_with_default_logger(tmp_path_factory):
    """cpu.yaml + a method + a model: no logger configured, so Lightning's default logger."""
    tmp = tmp_path_factory.mktemp("default-logger")
    users = ("user_0", "user_1", "user_4")
    train = write_jsonl(
        tmp / "train.jsonl", [r for r in synthetic_rows("train") if r["user_id"] in users][:32]
    )
    test = write_jsonl(tmp / "test.jsonl", [r for r in synthetic_rows("test") if r["user_id"] in users][:16])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(fit_args("dpo", train, test, 2, "--trainer.default_root_dir", str(tmp)))
    (run,) = (tmp / "lightning_logs").iterdir()
    return run, [str(w.message) for w in caught]


def test_no_eval_mode_warning_but_a_line_of_plrlhf(run_with_default_logger):
    _, caught = run_with_default_logger
    assert not [m for m in caught if "in eval mode" in m]


def test_no_warning_that_the_absent_validation_split_is_empty(run_with_default_logger):
    """The run has no validation split, on purpose: Lightning's "Total length of `list` across
    ranks is zero. Please make sure this was your intention" only worries a new user."""
    _, caught = run_with_default_logger
    assert not [m for m in caught if "Total length of" in m]


def test_test_prints_the_readable_table_and_writes_below_the_run(
    run_with_default_logger, capsys, monkeypatch, tmp_path
):
    run, _ = run_with_default_logger
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", "last"])
    # Evaluation drops the run's ModelCheckpoint on purpose (it writes nothing): Lightning's "Please
    # add the following callbacks: [ModelCheckpoint...]" would send a new user looking for it.
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
    out = capsys.readouterr().out
    assert "user user_0" in out and "test metrics written to" in out
    assert "test/rewards/accuracy/user/user_0" not in out  # Lightning's metric dump is off
    metrics = json.loads((run / "test" / "test_metrics.json").read_text())
    assert "test/rewards/accuracy/user/user_0" in metrics  # everything is still in the JSON
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", "last",
          "--data.init_args.predict", str(run.parents[1] / "test.jsonl")])  # fmt: skip
    assert (run / "predict" / "predictions.jsonl").is_file()
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]  # no version_<n+1>


def test_the_console_script_exits_0_and_prints_no_object(tmp_path):
    """``plrlhf`` is ``sys.exit(main())``: a returned object would be printed and exit 1."""
    import os
    import subprocess
    import sys

    script = [sys.executable, "-c", "import sys; from plrlhf.cli import main; sys.exit(main())"]
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.fast_dev_run", "1"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    done = subprocess.run(
        script + args,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PlrlhfCLI object" not in done.stdout + done.stderr
