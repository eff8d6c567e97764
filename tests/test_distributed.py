"""Two CPU processes (DDP, FSDP2; gloo) give the per-user metrics of one process on the same data,
and an FSDP2 checkpoint tests on one process."""

import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import yaml
from lightning.pytorch import Trainer, seed_everything
from peft import LoraConfig

import plrlhf
from plrlhf import PreferenceDataModule
from plrlhf.cli import main
from plrlhf.user_models import IndividualUserModel
from tests.conftest import ROOT, TINY_MODELS, TOKENIZER, synthetic_rows, write_jsonl

STEPS = 4


def data_files(directory):
    directory.mkdir(exist_ok=True)
    train = write_jsonl(directory / "train.jsonl", synthetic_rows("train", 48))
    test = write_jsonl(directory / "test.jsonl", synthetic_rows("test", 80))
    return train, test


# The reference paths under test: a frozen copy, precomputed; and LoRA's adapter-disabled
# reference computed every step, in the shared-prompt layout.
VARIANTS = {
    "full": {"precompute_reference": True, "reference_cache_dir": None},
    "lora": {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}, "shared_prompt": True},
}


def run(tmp_path, devices: int, variant: str = "full", method: str = "IndividualPDPO"):
    tmp_path.mkdir()
    seed_everything(0)
    train, test = data_files(tmp_path)
    # Same global batch: 8 triples in one process, 4 per process in two; the training order is
    # made of global batches, so both runs train on the same triples in every step.
    dm = PreferenceDataModule(
        TOKENIZER,
        train=str(train),
        test=str(test),
        batch_size=8 // devices,
        eval_batch_size=10,
    )
    settings = dict(VARIANTS[variant])
    if "lora" in settings:
        settings["lora"] = LoraConfig(**settings["lora"])
    if method != "IndividualPDPO":
        settings.pop("precompute_reference", None)  # a reward model has no reference
        settings.pop("reference_cache_dir", None)
    module = getattr(plrlhf, method)(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        user_model=partial(IndividualUserModel, n_tokens=2),
        **settings,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    (metrics,) = trainer.test(module, datamodule=dm, verbose=False)
    return metrics


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return run(tmp_path_factory.mktemp("single") / "one", devices=1)


def assert_same_per_user_metrics(single, ddp):
    per_user = [k for k in single if "/user/" in k or "/group/" in k or k.endswith(("seen", "unseen"))]
    assert len(per_user) > 20 and set(per_user) <= set(ddp)
    for key in per_user:
        assert ddp[key] == pytest.approx(single[key], abs=2e-3), key
    assert ddp["test/count/user/user_0"] == single["test/count/user/user_0"]  # nothing counted twice
    torch.testing.assert_close(
        torch.tensor(ddp["test/loss"]), torch.tensor(single["test/loss"]), atol=2e-3, rtol=0
    )


def test_ddp_matches_one_process(single, tmp_path):
    assert_same_per_user_metrics(single, run(tmp_path / "two", devices=2))


@pytest.mark.slow
def test_a_reward_model_under_ddp_matches_one_process(tmp_path):
    single = run(tmp_path / "one", devices=1, method="PersonalizedRewardModel")
    assert_same_per_user_metrics(single, run(tmp_path / "two", devices=2, method="PersonalizedRewardModel"))


@pytest.mark.parametrize(
    "variant,method",
    [(v, "IndividualPDPO") for v in sorted(VARIANTS)]
    + [pytest.param("full", "PersonalizedRewardModel", marks=pytest.mark.slow)],
)
def test_fsdp2_matches_one_process_and_its_checkpoint_tests_on_one(variant, method, single, tmp_path):
    """FSDP2 on two CPU processes with the preset (a subprocess: the strategy launches its
    processes by running the command again), then ``plrlhf test`` of its checkpoint in this one."""
    if variant != "full" or method != "IndividualPDPO":
        single = run(tmp_path / "one", devices=1, variant=variant, method=method)
    train, test = data_files(tmp_path)
    settings = dict(VARIANTS[variant])
    if method != "IndividualPDPO":
        settings = {}
    if "lora" in settings:
        settings["lora"] = {"class_path": "peft.LoraConfig", "init_args": settings["lora"]}
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": STEPS,
            "logger": False,
            "enable_progress_bar": False,
            "gradient_clip_val": None,
            "default_root_dir": str(tmp_path / "run"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "filename": "final"},
                }
            ],
        },
        "model": {
            "class_path": f"plrlhf.{method}",
            "init_args": {
                "model": TINY_MODELS["llama"],
                "user_model": {"class_path": "plrlhf.IndividualUserModel", "init_args": {"n_tokens": 2}},
                **settings,
            },
        },
        "data": {
            "class_path": "plrlhf.PreferenceDataModule",
            "init_args": {"tokenizer": TOKENIZER, "train": str(train), "test": str(test), "batch_size": 4},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    preset = str(ROOT / "configs" / "trainer" / "fsdp2-cpu.yaml")
    cmd = [sys.executable, "-m", "plrlhf.cli", "fit", "--config", preset, "--config", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "ckpt" / "final.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == STEPS
    # a full (gathered) checkpoint: plain tensors of the full shapes, loadable without the strategy
    embedding = checkpoint["state_dict"]["user_model.offsets.weight"]
    assert type(embedding) is torch.Tensor and embedding.shape == (dm_users(train) + 1, 2 * 32)
    if method == "PersonalizedRewardModel":
        assert checkpoint["state_dict"]["policy.value_head.weight"].shape == (1, 32)

    main(
        [
            "test",
            "--config",
            str(path),
            "--data.init_args.batch_size",
            "8",
            "--data.init_args.eval_batch_size",
            "10",
            "--trainer.devices",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path / "test"),
            "--ckpt_path",
            str(tmp_path / "ckpt" / "final.ckpt"),
        ]
    )
    fsdp2 = json.loads((tmp_path / "test" / "test_metrics.json").read_text())
    assert_same_per_user_metrics(single, fsdp2)


def dm_users(train):
    return PreferenceDataModule(TOKENIZER, train=str(train)).num_users
