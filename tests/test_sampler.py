"""The training order: seeded global batches, length-grouped, sharded per process, resumable."""

import random

from plrlhf import PreferenceDataModule
from plrlhf.data.datamodule import padding_share
from plrlhf.data.sampler import TrainingSampler, global_batches
from tests.conftest import TOKENIZER, synthetic_rows, write_jsonl


def test_every_index_once_seeded_and_reshuffled_per_epoch():
    lengths = [random.Random(i).randint(5, 100) for i in range(103)]
    sampler = TrainingSampler(103, batch_size=8, lengths=lengths, bucket_batches=4, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(103))
    assert first == list(TrainingSampler(103, batch_size=8, lengths=lengths, bucket_batches=4, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != first
    # inside a batch, lengths come from one sorted bucket: their spread is far below random batches'

    def mean_spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    assert mean_spread(sampler.batches()) < mean_spread(global_batches(103, 8, seed=0, epoch=0)) / 2


def test_datamodule_groups_by_length_and_reports_padding(tmp_path):
    rows = synthetic_rows("train", 400)
    dm = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "t.jsonl", rows)), batch_size=16, group_by_length=True
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    triples = dm.datasets["train"]
    grouped = padding_share(triples, loader.sampler.global_batches())
    shuffled = padding_share(triples, global_batches(len(triples), 16, seed=0, epoch=0))
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
        batches = dm.train_dataloader().sampler.global_batches()
        shares[layout] = padding_share(dm.datasets["train"], batches, shared_prompt=True)
    # one row per triple has nothing inherent to pad: grouping by its own length removes nearly all
    assert shares["shared_prompt"] < 0.02 < shares["pair"]


def test_processes_split_the_global_batches_of_one_process():
    lengths = [random.Random(i).randint(5, 100) for i in range(50)]
    one = TrainingSampler(50, batch_size=8, lengths=lengths, seed=3)
    two = [TrainingSampler(50, batch_size=4, lengths=lengths, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for s in (one, *two):
        s.set_epoch(2)
    halves = [s.batches() for s in two]
    assert len(halves[0]) == len(halves[1]) == len(one.batches()) == 7
    # step by step, the two processes together train on the triples one process trains on
    short = 0
    for step, batch in enumerate(one.batches()):
        together = halves[0][step] + halves[1][step]
        if len(batch) == 8:
            assert sorted(together) == sorted(batch)
        else:  # the remainder (2 triples) is filled up so that both processes take a step
            short += 1
            assert set(batch) <= set(together) and len(together) == 8
    assert short == 1


def test_skipping_resumes_the_epoch_where_it_stopped():
    sampler = TrainingSampler(30, batch_size=4, seed=5)
    sampler.set_epoch(1)
    order = list(sampler)
    sampler.skip_batches(3)
    assert list(sampler) == order[12:]
    assert list(sampler) == order  # once only
    assert TrainingSampler(30, batch_size=4, seed=5, shuffle=False).batches()[0] == [0, 1, 2, 3]


def test_the_short_batch_of_length_grouping_comes_last():
    """The loader re-cuts the sampler's indices into batches: a short batch anywhere else would
    merge with its neighbour (and a resumed epoch would skip the wrong triples)."""
    from plrlhf.data.sampler import global_batches

    for epoch in range(20):
        batches = global_batches(44, 8, seed=7, epoch=epoch, lengths=list(range(44)), bucket_batches=2)
        assert [len(b) for b in batches] == [8] * 5 + [4]
        assert sorted(i for b in batches for i in b) == list(range(44))
