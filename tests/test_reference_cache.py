"""Precomputed reference log-probs: equal to the on-the-fly values, cached, and no reference
forward in training steps."""

import pytest
import torch
from torch.testing import assert_close

from plrlhf import DPO, IndividualPDPO, PreferenceDataModule
from plrlhf.policy import Policy
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl


@pytest.fixture
def count_reference_forwards(monkeypatch):
    calls = {"n": 0}
    original = Policy.reference_logps

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Policy, "reference_logps", counted)
    return calls


def setup(tmp_path, rows=40, method=IndividualPDPO, **kwargs):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows("train", rows))
    dm = PreferenceDataModule(TOKENIZER, train=str(train), batch_size=8)
    torch.manual_seed(0)
    module = method(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        precompute_reference=True,
        reference_cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )
    return dm, module


def test_training_steps_run_no_reference_forward(tmp_path, count_reference_forwards):
    dm, module = setup(tmp_path)
    quiet_trainer(tmp_path, max_epochs=2).fit(module, datamodule=dm)
    assert count_reference_forwards["n"] == 5  # one pass over 40 triples in batches of 8, then none
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    # a later run on the same data and model reads the cache: no reference forward at all
    count_reference_forwards["n"] = 0
    dm, module = setup(tmp_path)
    quiet_trainer(tmp_path, max_steps=3).fit(module, datamodule=dm)
    assert count_reference_forwards["n"] == 0


def test_precomputed_values_equal_the_reference_forward(tmp_path):
    dm, module = setup(tmp_path, method=DPO)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=dm)
    module.train()
    for batch in dm.train_dataloader():
        chosen, rejected = module.reference_logps(batch)
        expected_chosen, expected_rejected = module._reference_forward(batch)
        assert_close(chosen, expected_chosen, atol=1e-4, rtol=1e-5)
        assert_close(rejected, expected_rejected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_the_reference_pass_scores_every_triple_once_shortest_first(tmp_path, monkeypatch, shared_prompt):
    import plrlhf.methods.reference as reference

    seen = []
    original = reference.compute_reference_table

    def recorded(batches, *args, **kwargs):
        seen.extend(batch["index"].tolist() for batch in batches)
        return original(batches, *args, **kwargs)

    monkeypatch.setattr(reference, "compute_reference_table", recorded)
    dm, module = setup(tmp_path, method=DPO, shared_prompt=shared_prompt)
    quiet_trainer(tmp_path, max_steps=1).fit(module, datamodule=dm)
    lengths = dm.datasets["train"].lengths()
    # the row of a triple in the reference's layout: [prompt, chosen, rejected] or its longer
    # [prompt; response]
    width = (lambda p, c, r: p + c + r) if module.shared_prompt else (lambda p, c, r: p + max(c, r))
    widths = [int(width(*lengths[i])) for batch in seen for i in batch]
    assert sorted(i for batch in seen for i in batch) == list(range(40))
    assert [len(batch) for batch in seen] == [8] * 5
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_a_reference_table_outlives_a_new_encoding_cache(tmp_path, monkeypatch, count_reference_forwards):
    """The table is keyed by the token ids, not by the encoding cache's key: an archived table
    still serves a fresh clone after the cache format changed (it did not, at first)."""
    import plrlhf.data.cache as cache

    dm, module = setup(tmp_path)
    quiet_trainer(tmp_path, max_steps=1).fit(module, datamodule=dm)
    assert count_reference_forwards["n"] == 5
    before = dm.datasets["train"].fingerprint

    count_reference_forwards["n"] = 0
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    dm, module = setup(tmp_path)
    quiet_trainer(tmp_path, max_steps=1).fit(module, datamodule=dm)
    assert count_reference_forwards["n"] == 0
    assert dm.datasets["train"].fingerprint == before

    # one token id more in one triple: another key
    rows = synthetic_rows("train", 40)
    rows[7]["chosen"] += " more"
    changed = PreferenceDataModule(TOKENIZER, train=str(write_jsonl(tmp_path / "changed.jsonl", rows)))
    changed.setup("fit")
    assert changed.datasets["train"].fingerprint != before


def test_cache_key_follows_data_and_weights(tmp_path):
    dm, module = setup(tmp_path)
    dm_other = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "o.jsonl", synthetic_rows("train", 41)))
    )
    assert dm.fingerprint("train") != dm_other.fingerprint("train")
    assert dm.fingerprint("train") == PreferenceDataModule(
        TOKENIZER, train=str(tmp_path / "train.jsonl")
    ).fingerprint("train")
    before = module.policy.reference_fingerprint()
    with torch.no_grad():
        next(module.policy.reference.parameters()).add_(1.0)
    assert module.policy.reference_fingerprint() != before


def reference_table(tmp_path, **kwargs):
    dm, module = setup(tmp_path, **kwargs)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=dm)
    return module.precomputed.table.clone()


@pytest.mark.parametrize(
    "plant, warning",
    [
        ("values", "do not match their checksum"),
        ("shape", "shape"),
        ("foreign", "other data or another reference model"),
        ("garbage", "unreadable"),
        ("empty", "unreadable"),
    ],
)
def test_a_planted_or_damaged_cache_entry_is_recomputed_and_reported(tmp_path, plant, warning):
    """A file with the entry's name but wrong values (planted, stale, half-written) is never used."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from plrlhf.methods.reference import write_table

    (tmp_path / "first").mkdir()
    good = reference_table(tmp_path / "first")
    (entry,) = (tmp_path / "first" / "cache").glob("*.safetensors")
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / entry.name
    with safe_open(str(entry), framework="pt") as handle:
        key = handle.metadata()["key"]
    if plant == "values":  # right key and shape, wrong values (the 0.0025-loss case)
        save_file({"reference_logps": good * 0.0}, str(target), metadata={"key": key, "sha256": "0" * 64})
    elif plant == "shape":
        write_table(target, key, good[:-3])
    elif plant == "foreign":
        write_table(target, "another key", good * 0.0)
    elif plant == "garbage":
        target.write_bytes(b"not a table")
    else:
        target.write_bytes(b"")
    with pytest.warns(UserWarning, match=warning):
        again = reference_table(tmp_path)
    assert_close(again, good)
    from plrlhf.methods.reference import read_table

    assert read_table(target, key, len(good))[0] is not None  # rewritten intact


def test_concurrent_writers_of_one_entry_never_collide(tmp_path):
    """Two processes writing the same entry at once: unique temporary names, atomic rename."""
    import subprocess
    import sys

    from plrlhf.methods.reference import read_table

    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from plrlhf.methods.reference import write_table\n"
        "for i in range(200):\n"
        "    write_table(Path(sys.argv[1]), 'k', torch.arange(2000.).reshape(1000, 2))\n"
    )
    target = tmp_path / "entry.safetensors"
    writers = [subprocess.Popen([sys.executable, "-c", code, str(target)]) for _ in range(3)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    table, problem = read_table(target, "k", 1000)
    assert table is not None, problem
    assert [p.name for p in tmp_path.iterdir()] == ["entry.safetensors"]  # no temporary left
