"""Learning test: with conflicting users, P-DPO learns what vanilla DPO cannot."""

from lightning.pytorch import seed_everything

from plrlhf import DPO, IndividualPDPO, PreferenceDataModule
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl

MAJORITY, MINORITY = ("user_0", "user_2", "user_3"), ("user_1",)


def train_and_test(method, tmp_path):
    seed_everything(0)
    users = MAJORITY + MINORITY
    train = [r for r in synthetic_rows("train") if r["user_id"] in users][:480]
    test = [r for r in synthetic_rows("test") if r["user_id"] in users]
    dm = PreferenceDataModule(
        TOKENIZER,
        train=str(write_jsonl(tmp_path / "train.jsonl", train)),
        test=str(write_jsonl(tmp_path / "test.jsonl", test)),
        batch_size=16,
        eval_batch_size=80,
    )
    module = method(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        beta=0.1,
        optimizer=lambda params: __import__("torch").optim.AdamW(params, lr=3e-3, weight_decay=0.0),
    )
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, datamodule=dm)
    (metrics,) = trainer.test(module, datamodule=dm, verbose=False)
    return metrics


def accuracy(metrics, group, prefix="test"):
    return metrics[f"{prefix}/rewards/accuracy/group/{group}"]


def test_pdpo_serves_the_minority_and_dpo_does_not(tmp_path):
    dpo = train_and_test(DPO, tmp_path)
    pdpo = train_and_test(IndividualPDPO, tmp_path)
    assert accuracy(dpo, "majority") > 0.9 and accuracy(dpo, "minority") < 0.1
    assert accuracy(pdpo, "majority") > 0.9 and accuracy(pdpo, "minority") > 0.9
    # the generic user behaves like vanilla DPO: it follows the majority
    assert (
        accuracy(pdpo, "majority", "test/generic") > 0.9 and accuracy(pdpo, "minority", "test/generic") < 0.1
    )
