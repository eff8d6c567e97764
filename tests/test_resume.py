"""A run killed with SIGKILL mid-epoch and resumed with ``--ckpt_path last`` finishes as if never
interrupted: same steps, same batches in the same order, same losses and weights."""

import json
import os
import subprocess
import sys

import torch
import yaml

from tests.conftest import ROOT, TINY_MODELS, TOKENIZER, synthetic_rows, write_jsonl


def config(tmp_path, name, kill_at=None):
    run = tmp_path / name
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            # Every 2 steps: the kill lands after a step that no checkpoint holds, so it is redone.
            "init_args": {"dirpath": str(run / "ckpt"), "every_n_train_steps": 2, "save_last": True},
        },
        {"class_path": "tests.faults.BatchLog", "init_args": {"path": str(run / "batches.jsonl")}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "tests.faults.KillAtStep", "init_args": {"step": kill_at}})
    cfg = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(run),
            "callbacks": callbacks,
        },
        "model": {
            "class_path": "plrlhf.IndividualPDPO",
            "init_args": {
                "model": TINY_MODELS["llama"],
                "n_user_tokens": 2,
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
                "lr_scheduler": {
                    "class_path": "torch.optim.lr_scheduler.StepLR",
                    "init_args": {"step_size": 3},
                },
            },
        },
        "data": {
            "class_path": "plrlhf.PreferenceDataModule",
            "init_args": {
                "tokenizer": TOKENIZER,
                "train": str(tmp_path / "train.jsonl"),
                "batch_size": 8,
                "group_by_length": True,
            },
        },
    }
    run.mkdir(exist_ok=True)
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run, path


def fit(config_path, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "plrlhf.cli", "fit", "--config", str(config_path), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def batches(run):
    rows = [json.loads(line) for line in (run / "batches.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}, len(rows)  # a redone step: the later record wins


def weights(run):
    checkpoint = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    return checkpoint["global_step"], checkpoint["state_dict"]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows("train", 44))  # 6 batches, the last short
    clean_run, clean_cfg = config(tmp_path, "clean")
    assert fit(clean_cfg).returncode == 0
    crash_run, crash_cfg = config(tmp_path, "crash", kill_at=9)  # mid epoch 1; last checkpoint: step 8
    killed = fit(crash_cfg)
    assert killed.returncode == -9, killed.stderr[-2000:]
    _, records_before_resume = batches(crash_run)
    assert records_before_resume == 9  # step 9 trained, never saved: resuming must redo it
    _, crash_cfg = config(tmp_path, "crash")  # the same run, without the kill
    resumed = fit(crash_cfg, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    clean, clean_count = batches(clean_run)
    crash, _ = batches(crash_run)
    assert clean_count == len(clean) == 12
    assert sorted(crash) == sorted(clean)  # same steps, none missing
    for step in clean:  # same triples in the same order, same loss
        assert crash[step]["indices"] == clean[step]["indices"], step
        assert abs(crash[step]["loss"] - clean[step]["loss"]) < 1e-5, step
    for epoch in (0, 1):  # each epoch trains on every triple exactly once
        seen = sorted(i for row in clean.values() if row["epoch"] == epoch for i in row["indices"])
        assert seen == list(range(44))
    clean_step, clean_weights = weights(clean_run)
    crash_step, crash_weights = weights(crash_run)
    assert clean_step == crash_step == 12
    for name, value in clean_weights.items():
        torch.testing.assert_close(crash_weights[name], value, atol=1e-5, rtol=0, msg=name)
