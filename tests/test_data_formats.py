"""Data in the formats users have (parquet, CSV, Arrow, Hugging Face datasets) and the encoded
cache: every format gives the JSON-lines triples; the cache is hit, missed and rebuilt when it must."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from plrlhf.data import DataError, PreferenceDataModule
from plrlhf.data.tables import HubDataset
from tests.conftest import TOKENIZER, triple, write_jsonl

datasets = pytest.importorskip("datasets")

ROWS = [
    triple("u1", group="majority"),
    triple(
        "u2", prompt="Summarize: Ben fixed the roof.\nSummary:", chosen=" Ben fixed it.", group="minority"
    ),
    triple("u1", chosen="   "),  # dropped: empty response
    triple("u3", rejected=" Ana baked bread for the fair.", group="majority"),
    triple("u2", chosen=" Bread.", group="minority"),
    triple(
        "u4", prompt="Summarize: Cleo sang.\nSummary:", chosen=" Cleo sang.", rejected=" She sang loudly."
    ),
]


def table() -> pa.Table:
    columns = {
        key: [row.get(key) for row in ROWS] for key in ("user_id", "prompt", "chosen", "rejected", "group")
    }
    return pa.table(columns)


def loaded(source, tmp_path, **kwargs):
    dm = PreferenceDataModule(TOKENIZER, train=source, cache_dir=str(tmp_path / "cache"), **kwargs)
    dm.setup("fit")
    return dm


def entries(directory):
    """The cache's entries (not its lock directory)."""
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


def triples(dm):
    data = dm.datasets["train"]
    return [
        (
            t.prompt_ids,
            t.chosen_ids,
            t.rejected_ids,
            t.user_id,
            dm.user_names[t.user_key],
            dm.group_names[t.group_key],
        )
        for t in (data[i] for i in range(len(data)))
    ]


def sources(tmp_path):
    """The same six records in every supported format."""
    made = {"jsonl": str(write_jsonl(tmp_path / "d.jsonl", ROWS))}
    pq.write_table(table(), tmp_path / "d.parquet")
    made["parquet"] = str(tmp_path / "d.parquet")
    pcsv.write_csv(table(), tmp_path / "d.csv")
    made["csv"] = str(tmp_path / "d.csv")
    feather.write_feather(table(), tmp_path / "d.arrow")
    made["arrow file"] = str(tmp_path / "d.arrow")
    with (
        pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table().schema) as writer,
    ):
        writer.write_table(table())  # the stream form, as datasets writes its .arrow files
    made["arrow stream"] = str(tmp_path / "s.arrow")
    dataset = datasets.Dataset(table())
    dataset.save_to_disk(str(tmp_path / "saved"))
    made["save_to_disk"] = str(tmp_path / "saved")
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(tmp_path / "dict"))
    made["DatasetDict"] = str(tmp_path / "dict")
    made["Dataset object"] = datasets.load_from_disk(str(tmp_path / "saved"))
    (tmp_path / "repo").mkdir()
    pq.write_table(table(), tmp_path / "repo" / "train.parquet")
    made["load_dataset"] = HubDataset(name=str(tmp_path / "repo"), split="train")
    return made


def test_every_format_gives_the_json_lines_triples_registry_and_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    made = sources(tmp_path)
    expected = loaded(made.pop("jsonl"), tmp_path / "jsonl")
    assert expected.registry.users == ["u1", "u2", "u3", "u4"]
    assert (expected.stats["train"].read, expected.stats["train"].kept) == (6, 5)
    assert expected.stats["train"].dropped == {"empty response": 1}
    reference = triples(expected)
    assert [t[4] for t in reference] == ["u1", "u2", "u3", "u2", "u4"]
    for name, source in made.items():
        dm = loaded(source, tmp_path / name.replace(" ", "-"))
        assert dm.registry.users == expected.registry.users, name
        assert dm.stats["train"] == expected.stats["train"], name
        assert triples(dm) == reference, name
        assert dm.user_groups == expected.user_groups, name


def test_a_datasetdict_directory_gives_the_split_of_the_same_name(tmp_path):
    dataset = datasets.Dataset(table())
    datasets.DatasetDict({"train": dataset, "test": dataset.select([5])}).save_to_disk(str(tmp_path / "dict"))
    dm = PreferenceDataModule(TOKENIZER, train=str(tmp_path / "dict"), test=str(tmp_path / "dict"))
    dm.setup("test")
    assert len(dm.datasets["test"]) == 1
    other = PreferenceDataModule(
        TOKENIZER, train=str(tmp_path / "dict"), validation={"name": str(tmp_path / "dict"), "split": "test"}
    )
    other.setup("validate")  # any split of a saved DatasetDict, named
    assert len(other.datasets["validation"]) == 1
    with pytest.raises(DataError, match=r"has no split 'validation' \(splits: train, test\)"):
        PreferenceDataModule(
            TOKENIZER, train=str(tmp_path / "dict"), validation=str(tmp_path / "dict")
        ).setup("validate")


def test_a_dataset_object_is_recorded_as_plain_data_in_hparams(tmp_path):
    dm = PreferenceDataModule(
        TOKENIZER, train=datasets.Dataset(table()), test=[HubDataset("org/name", "sub", "test")]
    )
    assert dm.hparams["train"].startswith("datasets.Dataset(")
    assert dm.hparams["test"] == [{"name": "org/name", "subset": "sub", "split": "test"}]


def test_the_cache_is_hit_on_the_second_run_and_missed_when_anything_changes(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    first = loaded(str(path), tmp_path)
    assert first._entries[("train", 0)].fresh
    second = loaded(str(path), tmp_path)
    assert not second._entries[("train", 0)].fresh
    assert triples(second) == triples(first)
    assert len(entries(tmp_path / "cache")) == 1

    assert (
        loaded(str(path), tmp_path, max_length=64, max_prompt_length=32)._entries[("train", 0)].fresh
    )  # a setting
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(TOKENIZER, tokenizer)
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    config["model_max_length"] = 12345  # changes no token id, but the tokenizer's files changed
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    other = PreferenceDataModule(str(tokenizer), train=str(path), cache_dir=str(tmp_path / "cache"))
    other.setup("fit")
    assert other._entries[("train", 0)].fresh
    write_jsonl(path, ROWS + [triple("u5")])  # the file
    changed = loaded(str(path), tmp_path)
    assert changed._entries[("train", 0)].fresh and changed.registry.users[-1] == "u5"
    assert len(entries(tmp_path / "cache")) == 4


@pytest.mark.parametrize("damage", ["flip a token byte", "truncate tokens", "no meta", "garbage meta"])
def test_a_damaged_cache_entry_is_detected_and_rebuilt(tmp_path, damage):
    path = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    expected = triples(loaded(path, tmp_path))
    (entry,) = entries(tmp_path / "cache")
    tokens = entry / "tokens.bin"
    if damage == "flip a token byte":
        data = bytearray(tokens.read_bytes())
        data[3] ^= 0x01
        tokens.write_bytes(bytes(data))
    elif damage == "truncate tokens":
        tokens.write_bytes(tokens.read_bytes()[:-2])
    elif damage == "no meta":
        (entry / "meta.json").unlink()
    else:
        (entry / "meta.json").write_text("{not json")
    with pytest.warns(UserWarning, match="encoded cache .* not used: .*; encoding again"):
        dm = loaded(path, tmp_path)
    assert dm._entries[("train", 0)].fresh
    assert triples(dm) == expected
    assert triples(loaded(path, tmp_path)) == expected  # and the rebuilt entry is used as is


def test_the_triples_are_memory_mapped(tmp_path):
    dm = loaded(str(write_jsonl(tmp_path / "d.jsonl", ROWS)), tmp_path)
    entry = dm.datasets["train"].entries[0]
    assert isinstance(entry.tokens, np.memmap) and entry.tokens.dtype == np.uint16


def test_bad_parquet_input_names_the_column_or_the_row(tmp_path):
    bad = table().set_column(2, "chosen", pa.array(list(range(len(ROWS)))))
    pq.write_table(bad, tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"ints\.parquet: column 'chosen' has type int64"):
        loaded(str(tmp_path / "ints.parquet"), tmp_path)
    rows = table().to_pylist()
    rows[3]["rejected"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "null.parquet")
    with pytest.raises(DataError, match=r"null\.parquet\[row 3\]: field 'rejected' must be a string"):
        loaded(str(tmp_path / "null.parquet"), tmp_path)
    rows = table().to_pylist()
    del rows[0]["prompt"]
    pq.write_table(
        pa.Table.from_pylist([{k: v for k, v in r.items() if k != "prompt"} for r in rows]),
        tmp_path / "np.parquet",
    )
    with pytest.raises(DataError, match=r"np\.parquet\[row 0\]: missing field 'prompt'"):
        loaded(str(tmp_path / "np.parquet"), tmp_path)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable parquet file"):
        loaded(str(tmp_path / "broken.parquet"), tmp_path)


def test_a_dataset_not_in_the_local_cache_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(
        DataError, match=r"no-such-org/no-such-dataset\[train\]: cannot load the dataset offline"
    ):
        loaded(HubDataset("no-such-org/no-such-dataset"), tmp_path)


def test_max_records_reads_only_the_first_records(tmp_path):
    dm = loaded(str(write_jsonl(tmp_path / "d.jsonl", ROWS)), tmp_path, max_records=2)
    assert (dm.stats["train"].read, len(dm.datasets["train"])) == (2, 2)


def test_encoding_in_chunks_gives_the_same_triples_and_counts(tmp_path):
    from plrlhf.data.encoding import Fields, encode_records
    from plrlhf.data.sources import read_records
    from plrlhf.tokenizer import load_tokenizer

    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    whole = encode_records(read_records(path), load_tokenizer(TOKENIZER), Fields(), 1024, 512)
    chunked = encode_records(read_records(path), load_tokenizer(TOKENIZER), Fields(), 1024, 512, chunk_size=2)
    assert chunked == whole and whole[1].read == 6


def test_a_dataset_spec_with_an_unknown_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\{name, subset, split\}.*unknown revision"):
        PreferenceDataModule(TOKENIZER, train={"name": "x", "revision": "main"})


def test_the_cli_never_reads_a_data_file_while_parsing_its_arguments(tmp_path, monkeypatch):
    """A string given for an argument typed with a dataclass is read by jsonargparse as a config
    file: with a 1M-triple file that took minutes and GBs. The data arguments must not be."""
    import builtins
    import sys

    from plrlhf.cli import run
    from tests.conftest import ROOT

    path = write_jsonl(tmp_path / "d.jsonl", [triple("u1"), triple("u2")] * 8)
    by_jsonargparse = []
    original = builtins.open

    def recording(file, *args, **kwargs):
        if str(file) == str(path) and "jsonargparse" in sys._getframe(1).f_code.co_filename:
            by_jsonargparse.append(file)
        return original(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording)
    run(
        ["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--data.init_args.train", str(path)]
        + ["--data.init_args.validation", "null", "--trainer.fast_dev_run", "1"]
        + ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    )
    assert by_jsonargparse == []


def test_encoding_in_worker_processes_gives_the_same_triples_and_counts(tmp_path):
    from plrlhf.data.encoding import Fields, encode_records
    from plrlhf.data.sources import read_records
    from plrlhf.tokenizer import load_tokenizer

    path = write_jsonl(tmp_path / "d.jsonl", ROWS * 3)
    tokenizer = load_tokenizer(TOKENIZER)
    alone = encode_records(read_records(path), tokenizer, Fields(), 1024, 512, chunk_size=4)
    workers = encode_records(read_records(path), tokenizer, Fields(), 1024, 512, chunk_size=4, workers=2)
    assert workers == alone and alone[1].read == 18 and alone[1].dropped == {"empty response": 3}


def test_encoded_splits_pickle_by_reference_not_by_copy(tmp_path):
    import pickle

    dm = loaded(str(write_jsonl(tmp_path / "d.jsonl", ROWS * 200)), tmp_path)
    data = dm.datasets["train"]
    blob = pickle.dumps(data)
    assert bytes(data.entries[0].tokens[:64]) not in blob  # the token ids are not in it
    again = pickle.loads(blob)
    assert [again[i] for i in range(0, len(data), 97)] == [data[i] for i in range(0, len(data), 97)]


def test_max_records_per_split_and_the_cli_limits(tmp_path):
    from jsonargparse import Namespace

    from plrlhf.cli import limit_records_for_fast_dev_run

    path = str(write_jsonl(tmp_path / "d.jsonl", ROWS * 10))
    dm = PreferenceDataModule(
        TOKENIZER, train=path, validation=path, cache_dir=str(tmp_path / "c"), max_records={"validation": 7}
    )
    dm.setup("fit")
    assert (dm.stats["train"].read, dm.stats["validation"].read) == (60, 7)
    # A trainer that evaluates no validation batch: the split is not read, nor counted as read.
    dm = PreferenceDataModule(TOKENIZER, train=path, validation=path, cache_dir=str(tmp_path / "c"))
    dm.trainer = SimpleNamespace(limit_val_batches=0, loggers=[])
    dm.setup("fit")
    assert "validation" not in dm.datasets and list(dm.stats) == ["train"]

    def limited(**trainer):
        data = Namespace(max_records=None, batch_size=4, eval_batch_size=5)
        config = Namespace(trainer=Namespace(devices=2, **trainer), data=Namespace(init_args=data))
        limit_records_for_fast_dev_run(config)
        return data.max_records

    assert limited(fast_dev_run=3) == 3 * 5 * 2
    assert limited(limit_val_batches=2, limit_test_batches=1.0, limit_train_batches=4) == {"validation": 20}
    assert limited(limit_val_batches=1.0) is None
    assert limited(limit_val_batches=0, limit_test_batches=1) == {"test": 10}


def test_processes_that_start_together_encode_a_source_once(tmp_path):
    """Three processes (as DDP ranks, torchrun or SLURM tasks start) load the same file into an
    empty cache: one encodes, the others find its entry."""
    import subprocess
    import sys

    path = write_jsonl(tmp_path / "d.jsonl", ROWS * 300)
    script = (
        "import sys; from plrlhf.data import PreferenceDataModule\n"
        f"dm = PreferenceDataModule({TOKENIZER!r}, train={str(path)!r}, cache_dir={str(tmp_path / 'c')!r})\n"
        "dm.setup('fit'); print('fresh' if dm._entries[('train', 0)].fresh else 'hit')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    outcomes = sorted(p.communicate()[0].strip() for p in procs)
    assert outcomes == ["fresh", "hit", "hit"]
