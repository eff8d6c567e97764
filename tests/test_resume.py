"""A run interrupted mid-epoch and resumed with ``--ckpt_path last`` finishes as if never
interrupted: same steps, same batches in the same order, same losses and weights. Checked for
every shipped method config and the quickstart, with their own learning-rate schedules (a schedule
that asks the trainer for the run's length must not reset the resumed epoch), after SIGKILL (no
handler runs) and after SIGTERM (the run saves itself and exits 143)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from plrlhf.cli import main
from tests.conftest import ROOT, synthetic_rows, write_jsonl

CONFIGS = ROOT / "configs"
METHODS = sorted(p.stem for p in (CONFIGS / "method").glob("*.yaml"))
SHIPPED = {
    "quickstart": [CONFIGS / "quickstart.yaml"],
    **{
        m: [CONFIGS / "trainer/cpu.yaml", CONFIGS / "data/synthetic.yaml", CONFIGS / f"method/{m}.yaml"]
        + [CONFIGS / "model/tiny-llama.yaml"]
        for m in METHODS
    },
}


def run_config(tmp_path, name, fault=None):
    """The shipped config's model and schedule on 44 triples (6 batches, the last short), 2 epochs,
    a checkpoint every 2 steps, every trained batch recorded."""
    run = tmp_path / name
    run.mkdir(exist_ok=True)
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            # Every 2 steps: a kill lands after a step that no checkpoint holds, so it is redone.
            "init_args": {"dirpath": str(run / "ckpt"), "every_n_train_steps": 2, "save_last": True},
        },
        {"class_path": "tests.faults.BatchLog", "init_args": {"path": str(run / "batches.jsonl")}},
    ]
    if fault is not None:
        callbacks.append({"class_path": f"tests.faults.{fault[0]}", "init_args": {"step": fault[1]}})
    override = {
        "seed_everything": 7,
        "trainer": {
            "max_epochs": 2,
            "max_steps": -1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "val_check_interval": None,
            "default_root_dir": str(run),
            "callbacks": callbacks,
        },
        # warm-up shorter than the run, so the cosine part (which needs the run's length) counts
        "model": {"init_args": {"lr_scheduler": {"init_args": {"warmup_steps": 3}}}},
        "data": {
            "init_args": {
                "train": str(tmp_path / "train.jsonl"),
                "validation": None,
                "test": None,
                "batch_size": 8,
                "group_by_length": True,
            }
        },
    }
    path = run / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    return run, path


def args(name, override, *extra):
    configs = [a for c in SHIPPED[name] for a in ("--config", str(c))]
    return ["fit", *configs, "--config", str(override), *extra]


def batches(run):
    rows = [json.loads(line) for line in (run / "batches.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}, len(rows)  # a redone step: the later record wins


def weights(run):
    checkpoint = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["global_step"], checkpoint["state_dict"]


def assert_same_run(clean_run, resumed_run):
    clean, clean_count = batches(clean_run)
    resumed, _ = batches(resumed_run)
    assert clean_count == len(clean) == 12
    assert sorted(resumed) == sorted(clean)  # same steps, none missing
    for step in clean:  # same triples in the same order, same loss
        assert resumed[step]["indices"] == clean[step]["indices"], step
        assert abs(resumed[step]["loss"] - clean[step]["loss"]) < 1e-5, step
    for epoch in (0, 1):  # each epoch trains on every triple exactly once
        seen = sorted(i for row in clean.values() if row["epoch"] == epoch for i in row["indices"])
        assert seen == list(range(44))
    clean_step, clean_weights = weights(clean_run)
    resumed_step, resumed_weights = weights(resumed_run)
    assert clean_step == resumed_step == 12
    for name, value in clean_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-5, rtol=0, msg=name)


@pytest.fixture
def in_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # shipped configs name data/ relative to the repository root
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows("train", 44))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_sigterm_mid_epoch_saves_exits_143_and_resumes_exactly(tmp_path, in_repo, name):
    clean_run, clean_override = run_config(tmp_path, "clean")
    main(args(name, clean_override))
    stopped_run, stopped_override = run_config(tmp_path, "stopped", fault=("SigtermAtStep", 9))
    with pytest.raises(SystemExit) as stopped:
        main(args(name, stopped_override))
    assert stopped.value.code == 143
    records, count = batches(stopped_run)
    assert count == 10 and max(records) == 10  # Lightning finishes the batch it was on
    saved = torch.load(stopped_run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 10  # saved at the stop, not at the last periodic checkpoint (8)
    _, resume_override = run_config(tmp_path, "stopped")
    main(args(name, resume_override, "--ckpt_path", "last"))
    assert_same_run(clean_run, stopped_run)


def test_sigterm_during_the_reference_pass_exits_143_at_once(tmp_path, in_repo, monkeypatch):
    """The reference pass runs before the first batch and can take an hour on CPU: a SIGTERM
    there ends the process then, not after the pass and a first batch."""
    import signal

    from plrlhf.methods.reference import PrecomputedReference

    original = PrecomputedReference.prepare

    def prepare(self, method, trainer):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, method, trainer)

    monkeypatch.setattr(PrecomputedReference, "prepare", prepare)
    stopped_run, stopped_override = run_config(tmp_path, "stopped")
    with pytest.raises(SystemExit) as stopped:
        main(args("quickstart", stopped_override, "--model.init_args.precompute_reference", "true"))
    assert stopped.value.code == 143
    assert not (stopped_run / "batches.jsonl").exists() or batches(stopped_run)[1] == 0


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, in_repo):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def fit(override, *extra):
        cmd = [sys.executable, "-m", "plrlhf.cli", *args("quickstart", override, *extra)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)

    clean_run, clean_override = run_config(tmp_path, "clean")
    assert fit(clean_override).returncode == 0
    crash_run, crash_override = run_config(tmp_path, "crash", fault=("KillAtStep", 9))
    killed = fit(crash_override)
    assert killed.returncode == -9, killed.stderr[-2000:]
    _, records_before_resume = batches(crash_run)
    assert records_before_resume == 9  # step 9 trained, never saved: resuming must redo it
    _, resume_override = run_config(tmp_path, "crash")  # the same run, without the kill
    resumed = fit(resume_override, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(clean_run, crash_run)


@pytest.mark.slow
def test_sigterm_under_ddp_saves_on_every_rank_exits_143_and_resumes_exactly(tmp_path, in_repo):
    """Two CPU processes (DDP, gloo), each sent SIGTERM: one decision, one checkpoint, exit 143."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]

    def fit(override, *extra):
        cmd = [sys.executable, "-m", "plrlhf.cli", *args("dpo", override, *ddp, *extra)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)

    clean_run, clean_override = run_config(tmp_path, "clean")
    assert fit(clean_override).returncode == 0
    stopped_run, stopped_override = run_config(tmp_path, "stopped", fault=("SigtermAtStep", 3))
    stopped = fit(stopped_override)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert torch.load(stopped_run / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 4
    _, resume_override = run_config(tmp_path, "stopped")
    assert fit(resume_override, "--ckpt_path", "last").returncode == 0

    def by_step(run):  # both ranks append to one file: the step's triples and losses of the two
        rows = [json.loads(line) for line in (run / "batches.jsonl").read_text().splitlines()]
        steps = {}
        for row in rows:
            entry = steps.setdefault(row["step"], ([], []))
            entry[0].extend(row["indices"])
            entry[1].append(round(row["loss"], 5))
        return {step: (sorted(ids), sorted(losses)) for step, (ids, losses) in steps.items()}

    clean, resumed = by_step(clean_run), by_step(stopped_run)
    assert sorted(resumed) == sorted(clean) == list(range(1, 7))  # 2 epochs of 3 global batches
    for step in clean:  # the same triples on the two ranks together, the same losses
        assert resumed[step][0] == clean[step][0], step
        assert resumed[step][1] == pytest.approx(clean[step][1], abs=1e-4), step


@pytest.mark.parametrize("name, lora", [("individual_pdpo", True), ("dpo", False)])
def test_a_model_directory_is_not_saved_again_in_every_checkpoint(tmp_path, in_repo, name, lora):
    """Weights still as the model directory holds them (LoRA's frozen base; full fine-tuning's
    reference copy) are left out of checkpoints: the resume is still exact, a load takes them from
    the directory again, and a directory with other weights is refused."""
    from plrlhf.adapt import load_checkpoint
    from plrlhf.policy import build_causal_lm
    from plrlhf.tokenizer import load_tokenizer
    from tests.conftest import TINY_MODELS, TOKENIZER

    model_dir = tmp_path / "model"
    base = build_causal_lm(TINY_MODELS["llama"], vocab_size=len(load_tokenizer(TOKENIZER)))
    base.save_pretrained(model_dir)
    runs = {}
    for run_name, fault in (("clean", None), ("stopped", ("SigtermAtStep", 9)), ("resumed", None)):
        run, override = run_config(tmp_path, "stopped" if run_name == "resumed" else run_name, fault)
        settings = yaml.safe_load(override.read_text())
        settings["model"]["init_args"]["model"] = str(model_dir)
        if lora:
            settings["model"]["init_args"]["lora"] = {
                "class_path": "peft.LoraConfig",
                "init_args": {"r": 4, "target_modules": "all-linear"},
            }
        override.write_text(yaml.safe_dump(settings))
        if fault is not None:
            with pytest.raises(SystemExit):
                main(args(name, override))
        else:
            main(args(name, override, *(["--ckpt_path", "last"] if run_name == "resumed" else [])))
        runs[run_name] = run
    assert_same_run(runs["clean"], runs["stopped"])

    _, saved = weights(runs["clean"])
    if lora:  # the adapters and the user model: nothing of the base
        assert saved and all("lora_" in key or key.startswith("user_model.") for key in saved)
    else:  # the trained weights, no reference copy
        assert not any(key.startswith("policy.reference.") for key in saved)
        assert "policy.lm.model.embed_tokens.weight" in saved
    method, _, _ = load_checkpoint(runs["clean"] / "ckpt" / "last.ckpt")
    loaded = method.state_dict()
    for key, value in base.state_dict().items():  # the frozen weights, from the directory again
        prefix = "policy.lm.base_model.model." if lora else "policy.reference."
        where = prefix + (key.replace(".weight", ".base_layer.weight") if lora else key)
        torch.testing.assert_close(loaded.get(where, loaded.get(prefix + key)), value, msg=key)
    for key, value in saved.items():  # the trained weights, from the checkpoint
        torch.testing.assert_close(loaded[key], value, msg=key)

    with torch.no_grad():
        base.model.norm.weight.add_(0.5)
    base.save_pretrained(model_dir)
    with pytest.raises(ValueError, match="has other weights"):
        load_checkpoint(runs["clean"] / "ckpt" / "last.ckpt")
