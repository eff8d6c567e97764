"""Two CPU processes (DDP over gloo) give the per-user metrics of one process on the same data."""

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, DistributedSampler

from plrlhf import IndividualPDPO, PreferenceDataModule
from tests.conftest import TINY_MODELS, TOKENIZER, synthetic_rows, write_jsonl


class InOrder(PreferenceDataModule):
    """Training data in file order under DDP too (Lightning's own distributed sampler always
    shuffles training data), so that one and two processes see the same triples in each step."""

    def _distributed(self, loader):
        if self.trainer.world_size == 1:
            return loader
        sampler = DistributedSampler(
            loader.dataset, self.trainer.world_size, self.trainer.global_rank, shuffle=False
        )
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn
        )

    def train_dataloader(self):
        return self._distributed(super().train_dataloader())

    def test_dataloader(self):
        return self._distributed(super().test_dataloader())


def run(tmp_path, devices: int):
    tmp_path.mkdir()
    seed_everything(0)
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows("train", 48))
    test = write_jsonl(tmp_path / "test.jsonl", synthetic_rows("test", 80))
    # Same global batch: 8 triples in one process, 4 per process in two. No shuffling, so both
    # runs see the same triples in every step (the distributed sampler interleaves them).
    dm = InOrder(
        TOKENIZER,
        train=str(train),
        test=str(test),
        batch_size=8 // devices,
        eval_batch_size=10,
        shuffle=False,
    )
    module = IndividualPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        n_user_tokens=2,
        precompute_reference=True,
        reference_cache_dir=None,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    (metrics,) = trainer.test(module, datamodule=dm, verbose=False)
    return metrics


def test_ddp_matches_one_process(tmp_path):
    single = run(tmp_path / "one", devices=1)
    ddp = run(tmp_path / "two", devices=2)
    per_user = [k for k in single if "/user/" in k or "/group/" in k or k.endswith(("seen", "unseen"))]
    assert len(per_user) > 20 and set(per_user) <= set(ddp)
    for key in per_user:
        assert ddp[key] == pytest.approx(single[key], abs=2e-3), key
    assert ddp["test/count/user/user_0"] == single["test/count/user/user_0"]  # nothing counted twice
    torch.testing.assert_close(
        torch.tensor(ddp["test/loss"]), torch.tensor(single["test/loss"]), atol=2e-3, rtol=0
    )
