"""Bad files and settings: refused with the file, line and field (or the argument's name), never
silently merged, dropped or trained on (docs/bad-input.md lists each case)."""

import gzip
import json
from functools import partial

import pytest

from plrlhf import DPO, ClusterPDPO, PreferenceDataModule
from plrlhf.cli import main
from plrlhf.data.registry import GENERIC_NAME, UserRegistry
from plrlhf.data.sources import DataError, read_records
from plrlhf.user_models import ClusterUserModel
from tests.conftest import ROOT, TINY_MODELS, TOKENIZER, triple, write_jsonl


def lines(n=3):
    return "".join(json.dumps(triple(user=f"u{i}")) + "\n" for i in range(n))


def test_truncated_gzip_names_the_file_and_line(tmp_path):
    data = gzip.compress(lines(400).encode())
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.jsonl\.gz:\d+: corrupt or truncated gzip data after line \d+"):
        list(read_records(path))


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(lines(2).encode() + b'{"prompt": "caf\\u00e9 \xff"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:3: not valid UTF-8 .* of the line"):
        list(read_records(path))


def test_a_directory_given_as_a_data_file(tmp_path):
    with pytest.raises(DataError, match="is a directory; expected a data file"):
        list(read_records(tmp_path))


def test_an_empty_conversation_names_the_field(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [triple(), {**triple(), "prompt": []}])
    dm = PreferenceDataModule(TOKENIZER, train=str(path))
    with pytest.raises(DataError, match=r"t\.jsonl:2: field 'prompt' is an empty conversation"):
        dm.setup("fit")


@pytest.mark.parametrize(
    "content, error",
    [
        ("{not json", "malformed JSON"),
        ('{"user": ["a"]}', 'expected {"users"'),
        ('{"users": ["a", "a"]}', "twice"),
    ],
)
def test_a_corrupt_or_wrong_keyed_registry_names_the_file(tmp_path, content, error):
    path = tmp_path / "users.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"users.json: .*{error}"):
        UserRegistry.load(path)


def test_an_empty_tokenizer_directory(tmp_path):
    from plrlhf.tokenizer import load_tokenizer

    with pytest.raises(FileNotFoundError, match="holds no tokenizer files"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize(
    "arguments, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"max_prompt_length": 0}, "max_prompt_length"),
        ({"max_length": 1, "max_prompt_length": 1}, "max_length"),
    ],
)
def test_data_settings_that_cannot_work_are_refused_by_name(arguments, name):
    with pytest.raises(ValueError, match=f"^{name} must be >="):
        PreferenceDataModule(TOKENIZER, **arguments)


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_a_beta_that_trains_nothing_or_the_reverse_is_refused(beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        DPO(model=TINY_MODELS["llama"], tokenizer=TOKENIZER, beta=beta)


def test_zero_clusters_is_refused():
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 1"):
        ClusterPDPO(
            model=TINY_MODELS["llama"],
            tokenizer=TOKENIZER,
            num_users=3,
            user_model=partial(ClusterUserModel, n_clusters=0),
        )


def test_ids_spelled_as_number_and_string_are_reported_with_counts(tmp_path):
    rows = [triple(user=1), triple(user=1), triple(user="1"), triple(user="b")]
    dm = PreferenceDataModule(TOKENIZER, train=str(write_jsonl(tmp_path / "t.jsonl", rows)))
    with pytest.warns(UserWarning, match=r'user ids 1 \(2 records\) and "1" \(1 records\) .* one user \'1\''):
        assert dm.num_users == 2


def test_a_user_named_like_the_generic_user_stays_apart(tmp_path):
    rows = [
        triple(user=GENERIC_NAME),
        triple(user="b"),
        {k: v for k, v in triple().items() if k != "user_id"},
    ]
    dm = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "t.jsonl", rows)), test=str(tmp_path / "t.jsonl")
    )
    dm.setup("test")
    keys = [t.user_key for t in dm.datasets["test"]]
    assert keys == [1, 2, 0]  # the real user, another user, the record without a user id
    names = dm.user_names
    assert names[0] == GENERIC_NAME and names[1] != GENERIC_NAME and len(set(names)) == len(names)


def test_a_zero_byte_checkpoint_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")
    args = [
        "test",
        "--config",
        "configs/quickstart.yaml",
        "--trainer.logger",
        "false",
        "--ckpt_path",
        str(empty),
    ]
    with pytest.raises(ValueError, match=r"last\.ckpt is empty \(0 bytes\)"):
        main(args)


def test_a_bad_training_file_is_reported_without_the_link_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_id": "a", "prompt": "x"\n')
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "fit",
                "--config",
                "configs/quickstart.yaml",
                "--data.init_args.train",
                str(bad),
                "--trainer.logger",
                "false",
            ]
        )
    assert str(stopped.value.code).startswith(f"error: {bad}:1: malformed JSON")
    assert "compute_fn" not in str(stopped.value.code)
