"""The intervals ``benchmarks/real_model.py`` writes into docs/results.md, on inputs whose
resampling distribution is known by hand."""

import json

import pytest

from tests.conftest import ROOT


@pytest.fixture
def real_model(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import real_model

    return real_model


def test_the_length_ratio_and_its_interval(real_model):
    assert real_model.ratio_interval([300.0, 300.0], [150.0, 150.0, 150.0]) == (2.0, 2.0, 2.0)
    # A numerator of {1, 3} resamples to a mean of 1, 2 or 3 (chances 1/4, 1/2, 1/4): the 2.5% and
    # 97.5% points are the extremes; the denominator is constant.
    assert real_model.ratio_interval([1.0, 3.0], [1.0, 1.0]) == (2.0, 1.0, 3.0)
    assert real_model.ratio_interval([2.0, 2.0], [1.0, 3.0]) == (1.0, pytest.approx(2 / 3), 2.0)


def test_accuracy_and_paired_difference_intervals(real_model):
    assert real_model.bootstrap([0.0, 1.0]) == (0.5, 0.0, 1.0)
    # the same pairs: a difference of 1 on every pair is certain
    assert real_model.paired_difference([1.0, 1.0, 0.0], [0.0, 0.0, -1.0]) == (1.0, 1.0, 1.0)


def test_a_finished_method_is_archived_and_restored_on_a_fresh_machine(real_model, tmp_path):
    part = real_model.PART1
    assert real_model.settings_of(part, None, [])["archive"] == ROOT / "benchmarks/results/hh-length"
    assert (
        real_model.settings_of(part, "runs/hh-length", [])["archive"] == ROOT / "benchmarks/results/hh-length"
    )
    # smoke runs (other settings, or somewhere else) neither read nor replace the documented results
    assert real_model.settings_of(part, None, ["--trainer.max_steps", "2"])["archive"] is None
    assert real_model.settings_of(part, str(tmp_path), [])["archive"] is None

    run, archive, fresh = tmp_path / "run", tmp_path / "archive", tmp_path / "fresh"
    for name, text in {
        "config.yaml": "model: {}\n",
        "done": "12 s\n",
        "predict/test-pairs.jsonl": '{"user_id": "u"}\n',
        "checkpoints/last.ckpt": "weights",  # too large for git: stays behind
    }.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    real_model.restore(fresh, archive)  # nothing archived yet
    assert not fresh.exists()
    real_model.keep(run, archive)
    assert sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file()) == [
        "config.yaml",
        "done",
        "kept",
        "predict/test-pairs.jsonl",
    ]
    real_model.restore(fresh, archive)
    assert (fresh / "predict/test-pairs.jsonl").read_text() == '{"user_id": "u"}\n'
    assert (fresh / "done").read_text() == "12 s\n" and not (fresh / "checkpoints").exists()

    # an archive cut short before its `kept` mark is not restored: its steps would need the weights
    (archive / "kept").unlink()
    real_model.restore(tmp_path / "other", archive)
    assert not (tmp_path / "other").exists()

    # the steps of an `archived` block: archived only if they finish
    settings = {"out": tmp_path / "runs", "archive": tmp_path / "results"}
    with pytest.raises(KeyboardInterrupt), real_model.archived(settings, "dpo") as run:
        (run / "done").parent.mkdir(parents=True)
        (run / "done").write_text("1 s\n")
        raise KeyboardInterrupt
    assert not (tmp_path / "results").exists()
    with real_model.archived(settings, "dpo") as run:
        assert run == tmp_path / "runs/dpo"
    assert (tmp_path / "results/dpo/done").read_text() == "1 s\n" and (
        tmp_path / "results/dpo/kept"
    ).is_file()


def test_a_warm_started_method_is_archived_and_restored_with_its_sft_stage(real_model, tmp_path):
    settings = {"out": tmp_path / "runs", "archive": tmp_path / "results", "warm_starts": {"p": ()}}
    with real_model.archived(settings, "p") as run:
        for stage in (run, run.parent / "p-sft"):
            (stage / "checkpoints").mkdir(parents=True)
            (stage / "config.yaml").write_text(f"stage: {stage.name}\n")
    assert (tmp_path / "results/p-sft/config.yaml").read_text() == "stage: p-sft\n"
    fresh = {**settings, "out": tmp_path / "fresh"}
    with real_model.archived(fresh, "p") as run:
        assert (run.parent / "p-sft/config.yaml").read_text() == "stage: p-sft\n"  # its settings: docs


def test_a_run_of_one_method_keeps_the_archived_ones_in_the_tables(real_model, tmp_path):
    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo" / "kept").write_text("")
    (tmp_path / "reward_model").mkdir()  # an archive being written: no `kept` yet
    methods = {"reward_model": [], "dpo": [], "individual_pdpo": [], "personalized_reward_model": []}
    settings = {"methods": methods, "archive": tmp_path}
    assert real_model.with_archived(["individual_pdpo"], settings) == ["dpo", "individual_pdpo"]
    # A smoke run (no archive) runs what it is asked for only.
    assert real_model.with_archived(["individual_pdpo"], {**settings, "archive": None}) == ["individual_pdpo"]


def test_reference_tables_travel_with_the_archive(real_model, tmp_path):
    archive, out = tmp_path / "archive", tmp_path / "runs"
    (archive / "reference").mkdir(parents=True)
    (archive / "reference" / "old.safetensors").write_bytes(b"old")
    settings = {"out": out, "archive": archive}
    assert real_model.reference_tables(settings) == out / "reference"
    assert (out / "reference" / "old.safetensors").read_bytes() == b"old"  # restored for the runs
    (out / "reference" / "new.safetensors").write_bytes(b"new")  # a run's reference pass
    (out / "dpo").mkdir()
    real_model.keep(out / "dpo", archive / "dpo")
    assert (archive / "reference" / "new.safetensors").read_bytes() == b"new"
    # A smoke run (no archive) neither reads nor writes the archive.
    assert (
        real_model.reference_tables({"out": tmp_path / "smoke", "archive": None})
        == tmp_path / "smoke" / "reference"
    )


def test_a_data_directory_built_with_other_settings_is_rebuilt(real_model, tmp_path, capsys):
    out = tmp_path / "task"
    real_model.build_data("length", out, ["--users", "4", "--unseen_users", "1"])
    assert "written to" in capsys.readouterr().out
    first = (out / "train.jsonl").stat().st_mtime_ns
    real_model.build_data("length", out, ["--users", "4", "--unseen_users", "1"])
    assert capsys.readouterr().out == "" and (out / "train.jsonl").stat().st_mtime_ns == first
    # another budget: the old directory must not be trained on
    real_model.build_data("length", out, ["--users", "6", "--unseen_users", "1"])
    assert "built with other settings" in capsys.readouterr().out
    assert len({json.loads(row)["user_id"] for row in (out / "train.jsonl").open()}) == 6
    # an option these options leave at its default was set: another build, though every option
    # given matches the record
    real_model.build_data("length", out, ["--users", "6", "--unseen_users", "1", "--seed", "7"])
    assert "built with other settings" in capsys.readouterr().out
    real_model.build_data("length", out, ["--users", "6", "--unseen_users", "1"])
    assert "built with other settings" in capsys.readouterr().out
    assert json.loads((out / "build.json").read_text())["arguments"]["seed"] == 123
    # a directory without a record (built by hand or by an older version) is rebuilt too
    (out / "build.json").unlink()
    real_model.build_data("length", out, ["--users", "6", "--unseen_users", "1"])
    assert "built with other settings" in capsys.readouterr().out


def test_which_archived_methods_have_users(real_model):
    """Read from each run's saved config, not its name: DPO has no user to condition on."""
    archive = ROOT / "benchmarks/results/hh-length"
    runs = {m: archive / m for m in ("dpo", "cluster_pdpo", "individual_pdpo_sft", "individual_pdpo_sft-sft")}
    runs["dpo as named otherwise"] = archive / "dpo"
    users = ["cluster_pdpo", "individual_pdpo_sft", "individual_pdpo_sft-sft"]  # the SFT stage's too
    assert list(real_model.with_users(runs)) == users
