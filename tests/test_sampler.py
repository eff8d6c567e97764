"""Length-grouped batches: a permutation each epoch, seeded, and less padding."""

import random

from plrlhf import PreferenceDataModule
from plrlhf.data.datamodule import _random_batches, padding_share
from plrlhf.data.sampler import LengthGroupedSampler
from tests.conftest import TOKENIZER, synthetic_rows, write_jsonl


def test_every_index_once_seeded_and_reshuffled_per_epoch():
    lengths = [random.Random(i).randint(5, 100) for i in range(103)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, bucket_batches=4, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(103))
    assert first == list(LengthGroupedSampler(lengths, batch_size=8, bucket_batches=4, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != first
    # inside a batch, lengths come from one sorted bucket: their spread is far below random batches'

    def mean_spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    assert mean_spread(sampler.batches()) < mean_spread(_random_batches(103, 8, 0)) / 2


def test_datamodule_groups_by_length_and_reports_padding(tmp_path):
    rows = synthetic_rows("train", 400)
    dm = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "t.jsonl", rows)), batch_size=16, group_by_length=True
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    triples = dm.datasets["train"]
    grouped = padding_share(triples, loader.sampler.batches())
    shuffled = padding_share(triples, _random_batches(len(triples), 16, 0))
    # the rest is inherent: the shorter response of each pair is padded to the longer one
    assert grouped < 0.6 * shuffled
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 32
    seen = [int(i) for b in loader for i in b["index"]]
    assert sorted(seen) == list(range(400))


def test_grouping_follows_the_shared_prompt_layout(tmp_path):
    rows = synthetic_rows("train", 400)
    path = str(write_jsonl(tmp_path / "t.jsonl", rows))
    shares = {}
    for layout in ("pair", "shared_prompt"):
        dm = PreferenceDataModule(
            TOKENIZER, train=path, batch_size=16, group_by_length=True, length_layout=layout
        )
        dm.setup("fit")
        batches = dm.train_dataloader().sampler.batches()
        shares[layout] = padding_share(dm.datasets["train"], batches, shared_prompt=True)
    # one row per triple has nothing inherent to pad: grouping by its own length removes nearly all
    assert shares["shared_prompt"] < 0.02 < shares["pair"]
