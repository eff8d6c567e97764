"""Each callback in a plain Lightning Trainer, with a module written here (not a plrlhf method)."""

import json
from functools import partial

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from plrlhf import PreferenceDataModule
from plrlhf.callbacks import Export, GenerationSamples, PerUserReport, UserEmbeddingMap
from plrlhf.generation import generate
from plrlhf.policy import build_causal_lm
from plrlhf.user_models import ClusterUserModel, IndividualUserModel
from tests.conftest import TINY_MODELS, TOKENIZER, synthetic_rows, write_jsonl


class ExternalModule(LightningModule):
    """Somebody else's personalized module: an LM, a user model, and per-user metrics it logs."""

    def __init__(self, num_users: int, cluster: bool = False) -> None:
        super().__init__()
        self.tokenizer_path = TOKENIZER
        self.lm = build_causal_lm(TINY_MODELS["llama"], vocab_size=728)
        user_model = ClusterUserModel if cluster else IndividualUserModel
        self.user_model = user_model(num_users, 32, n_tokens=2)
        self.user_model.initialize(self.lm.get_input_embeddings().weight)

    def training_step(self, batch, batch_idx):
        soft = self.user_model(batch["user_ids"])
        return self.lm(input_ids=batch["input_ids"][:2]).logits.mean() + soft.pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        names = self.trainer.datamodule.registry.users
        for i, name in enumerate(names):
            self.log(f"val/rewards/accuracy/user/{name}", 0.5 + 0.1 * i)
            self.log(f"val/rewards/margins/user/{name}", float(i))
        self.log("val/rewards/accuracy/group/majority", 0.9)

    def generate(self, input_ids, attention_mask, user_ids, **settings):
        return generate(self.lm, input_ids, attention_mask, self.user_model(user_ids), **settings)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture
def datamodule(tmp_path):
    rows = synthetic_rows("train", 60)
    path = str(write_jsonl(tmp_path / "train.jsonl", rows))
    dm = PreferenceDataModule(TOKENIZER, train=path, validation=path, batch_size=8)
    return dm


def fit(tmp_path, dm, module, callback):
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[callback],
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def test_generation_samples(tmp_path, datamodule):
    callback = GenerationSamples(prompts=["Summarize the note.\nNote: Ana ran.\nSummary:"], max_new_tokens=4)
    fit(tmp_path, datamodule, ExternalModule(datamodule.num_users), callback)
    users = ["<generic>", *datamodule.registry.users]
    assert [r["user_id"] for r in callback.rows] == users
    saved = [json.loads(line) for line in (tmp_path / "samples/epoch0.jsonl").read_text().splitlines()]
    assert saved == callback.rows and all(isinstance(r["response"], str) for r in saved)


def test_per_user_report(tmp_path, datamodule):
    pytest.importorskip("matplotlib")
    callback = PerUserReport()
    fit(tmp_path, datamodule, ExternalModule(datamodule.num_users), callback)
    rows = json.loads((tmp_path / "reports/val_epoch0.json").read_text())
    user_rows = [r for r in rows if r["kind"] == "user"]
    assert len(user_rows) == datamodule.num_users and {r["group"] for r in user_rows} == {
        "majority",
        "minority",
    }
    assert (tmp_path / "reports/val_epoch0.csv").read_text().startswith("kind,name,group,accuracy,margin")
    assert (tmp_path / "reports/val_epoch0.png").stat().st_size > 1000


@pytest.mark.parametrize("cluster", [False, True])
def test_user_embedding_map(tmp_path, datamodule, cluster):
    pytest.importorskip("matplotlib")
    callback = UserEmbeddingMap()
    fit(tmp_path, datamodule, ExternalModule(datamodule.num_users, cluster=cluster), callback)
    names = {p.name for p in (tmp_path / "user_embeddings").iterdir()}
    assert {"pca_epoch0.png", "pca_final.png"} <= names
    assert ("cluster_weights_final.png" in names) == cluster


def test_export_callback_with_a_plrlhf_method(tmp_path, datamodule):
    from plrlhf import IndividualPDPO
    from plrlhf.export import load

    module = IndividualPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=datamodule.num_users,
        user_model=partial(IndividualUserModel, n_tokens=2),
    )
    callback = Export()
    fit(tmp_path, datamodule, module, callback)
    lm = load(callback.path)
    assert lm.registry.users == datamodule.registry.users
    assert (
        len(lm.generate(["Summarize the note.\nNote: Ana ran.\nSummary:"], ["user_0"], max_new_tokens=3)) == 1
    )


def test_save_last_at_end_keeps_the_final_step_between_periodic_saves(tmp_path, datamodule, caplog):
    """Lightning alone leaves last.ckpt at step 3 of 5 with a save every 3 steps."""
    import logging

    from lightning.pytorch.callbacks import ModelCheckpoint

    from plrlhf.callbacks import SaveLastAtEnd

    def fit(*extra):
        directory = tmp_path / f"run{len(extra)}"
        every_3 = ModelCheckpoint(directory, every_n_train_steps=3, save_last=True, save_top_k=0)
        trainer = Trainer(
            max_steps=5,
            logger=False,
            callbacks=[every_3, *extra],
            limit_val_batches=0,
            enable_progress_bar=False,
            accelerator="cpu",
        )
        trainer.fit(ExternalModule(datamodule.num_users), datamodule=datamodule)
        return torch.load(directory / "last.ckpt", weights_only=True)["global_step"]

    assert fit() == 3  # what the callback is for
    with caplog.at_level(logging.INFO):
        assert fit(SaveLastAtEnd()) == 5
    # The full state is asked for: unasked, Lightning logs "`weights_only` was not set, defaulting to
    # `False`", which reads like an unsafe load.
    assert "saved the end of training" in caplog.text
    assert "weights_only" not in caplog.text
