"""Data: reading, registry, truncation, chat rendering, bad input, batching."""

import gzip
import json

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from plrlhf.data import DataError, PreferenceDataModule, UserRegistry
from plrlhf.data.collate import EncodedTriple, PreferenceCollator
from plrlhf.data.encoding import Fields, encode_records
from plrlhf.data.sources import read_records
from plrlhf.tokenizer import load_tokenizer
from tests.conftest import TOKENIZER, quiet_trainer, triple, write_jsonl


def datamodule(tmp_path, train_rows, test_rows=None, **kwargs):
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    test = write_jsonl(tmp_path / "test.jsonl", test_rows) if test_rows is not None else None
    dm = PreferenceDataModule(TOKENIZER, train=str(train), test=str(test) if test else None, **kwargs)
    return dm


# -- registry -----------------------------------------------------------------------------------
def test_registry_maps_training_users_and_serves_others_as_generic(tmp_path):
    registry = UserRegistry(["alice", 7, "bob", "alice"])
    assert len(registry) == 3
    assert [registry.index(u) for u in ("alice", 7, "7", "bob", "carol", None)] == [1, 2, 2, 3, 0, 0]
    registry.save(tmp_path / "users.json")
    assert UserRegistry.load(tmp_path / "users.json") == registry
    assert registry.name(0) == "<generic>" and registry.name(2) == "7"


def test_datamodule_registry_unseen_and_keys(tmp_path):
    dm = datamodule(
        tmp_path,
        [triple("u1", group="majority"), triple(2, group="minority"), triple("u1")],
        [triple("u1"), triple("stranger"), triple("stranger"), triple(2, group="minority")],
    )
    assert dm.num_users == 2
    dm.setup("test")
    items = dm.datasets["test"]
    assert [t.user_id for t in items] == [1, 0, 0, 2]
    names = dm.user_names
    assert [names[t.user_key] for t in items] == ["u1", "stranger", "stranger", "2"]
    assert [dm.group_names[t.group_key] for t in items] == ["", "", "", "minority"]
    stats = dm.stats["test"]
    assert (stats.unseen_users, stats.unseen_examples) == (1, 2)


def test_registry_is_saved_and_restored_from_state(tmp_path):
    dm = datamodule(tmp_path, [triple("a"), triple("b")])
    state = dm.state_dict()
    fresh = PreferenceDataModule(TOKENIZER, test=str(write_jsonl(tmp_path / "t.jsonl", [triple("b")])))
    fresh.load_state_dict(state)
    assert fresh.registry.users == ["a", "b"]
    other = datamodule(tmp_path, [triple("x")])
    with pytest.raises(ValueError, match="another user registry"):
        other.load_state_dict(state)


def test_saved_registry_file_is_used(tmp_path):
    UserRegistry(["z", "y"]).save(tmp_path / "users.json")
    dm = PreferenceDataModule(
        TOKENIZER,
        test=str(write_jsonl(tmp_path / "t.jsonl", [triple("y")])),
        user_registry=str(tmp_path / "users.json"),
    )
    dm.setup("test")
    assert dm.num_users == 2 and dm.datasets["test"][0].user_id == 2


# -- tokenization and truncation ----------------------------------------------------------------
def encode(rows, max_length=64, max_prompt_length=32, tokenizer=None, fields=None):
    tok = tokenizer or load_tokenizer(TOKENIZER)
    located = [type("L", (), {"record": r, "where": f"f:{i + 1}"})() for i, r in enumerate(rows)]
    return encode_records(located, tok, fields or Fields(), max_length, max_prompt_length)


def test_responses_end_with_eos_and_prompt_is_kept_whole_when_it_fits():
    tok = load_tokenizer(TOKENIZER)
    (ex,), stats = encode([triple()])
    assert ex.chosen_ids[-1] == tok.eos_token_id and ex.rejected_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.prompt_ids) == triple()["prompt"]
    assert tok.decode(ex.chosen_ids[:-1]) == triple()["chosen"]
    assert (stats.read, stats.kept, stats.prompt_truncated) == (1, 1, 0)


def test_long_prompt_is_cut_from_the_left():
    tok = load_tokenizer(TOKENIZER)
    prompt = " ".join(["Ana baked bread at the market on Monday."] * 20) + " Summary:"
    (ex,), stats = encode([triple(prompt=prompt)], max_length=64, max_prompt_length=20)
    assert len(ex.prompt_ids) == 20 and stats.prompt_truncated == 1
    assert tok.decode(ex.prompt_ids).endswith("Monday. Summary:")
    # the total limit binds when the responses are long
    (ex,), _ = encode([triple(prompt=prompt)], max_length=30, max_prompt_length=25)
    assert len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids)) == 30


def test_response_that_cannot_fit_is_dropped_and_counted():
    long = " " + "Ana baked bread. " * 30
    examples, stats = encode([triple(), triple(chosen=long)], max_length=40, max_prompt_length=20)
    assert len(examples) == 1 and stats.dropped == {"response too long for max_length": 1}
    assert "1 response too long" in stats.summary("train")


def test_empty_and_identical_responses_are_dropped_and_counted():
    rows = [triple(), triple(chosen="   "), triple(rejected=""), triple(chosen=" same", rejected=" same")]
    examples, stats = encode(rows)
    assert len(examples) == 1
    assert stats.dropped == {"empty response": 2, "chosen == rejected": 1}
    assert (stats.read, stats.kept) == (4, 1)


def test_conversational_records_use_the_chat_template():
    tok = load_tokenizer(TOKENIZER)
    row = {
        "user_id": "a",
        "prompt": [{"role": "user", "content": "Summarize the note."}],
        "chosen": [{"role": "assistant", "content": "Ana baked bread."}],
        "rejected": [{"role": "assistant", "content": "Ben baked bread."}],
    }
    (ex,), _ = encode([row])
    prompt_text = tok.decode(ex.prompt_ids)
    assert prompt_text == "<|im_start|>user\nSummarize the note.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex.chosen_ids) == "Ana baked bread.<|im_end|>\n<|endoftext|>"
    # Where the end of turn is the end-of-text token (SmolLM2, Qwen2), the response stops at it,
    # as generation does: no newline and second end-of-text token after it to score.
    tok = PreTrainedTokenizerFast.from_pretrained(TOKENIZER)  # not the shared, cached one
    tok.eos_token = "<|im_end|>"
    (ex,), _ = encode([row], tokenizer=tok)
    assert tok.decode(ex.chosen_ids) == "Ana baked bread.<|im_end|>"
    assert tok.decode(ex.rejected_ids) == "Ben baked bread.<|im_end|>"


def test_configurable_field_names():
    row = {"who": 3, "q": "Summarize the note.", "good": " Ana.", "bad": " Ben."}
    (ex,), _ = encode([row], fields=Fields(prompt="q", chosen="good", rejected="bad", user="who"))
    assert ex.user == "3"


def test_tokenizer_without_pad_token_gets_eos(tmp_path):
    tok = PreTrainedTokenizerFast.from_pretrained(TOKENIZER)
    assert tok.pad_token is None
    assert load_tokenizer(TOKENIZER).pad_token_id == tok.eos_token_id


# -- bad input ----------------------------------------------------------------------------------
def read_all(path):
    return list(read_records(path))


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(triple()) + "\n" + '{"prompt": "x",\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        read_all(path)


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [triple(), {"user_id": "a", "prompt": "p", "chosen": " c"}])
    dm = PreferenceDataModule(TOKENIZER, test=str(path))
    with pytest.raises(DataError, match=r"d.jsonl:2: missing field 'rejected'"):
        dm.setup("test")


def test_non_string_text_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [triple(chosen=5)])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'chosen' must be a string"):
        PreferenceDataModule(TOKENIZER, test=str(path)).setup("test")


def test_non_utf8_bytes_are_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_all(path)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        PreferenceDataModule(TOKENIZER, test=str(path)).setup("test")


def test_missing_user_is_generic_or_an_error(tmp_path):
    row = triple()
    del row["user_id"]
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    dm = PreferenceDataModule(TOKENIZER, test=str(path))
    dm.setup("test")
    assert dm.datasets["test"][0].user_id == 0 and dm.stats["test"].missing_user == 1
    with pytest.raises(DataError, match="d.jsonl:1: missing field 'user_id'"):
        PreferenceDataModule(TOKENIZER, test=str(path), missing_user="error").setup("test")


# -- file formats -------------------------------------------------------------------------------
def test_json_array_and_gzip_files(tmp_path):
    rows = [triple("a"), triple("b")]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    assert [r.record["user_id"] for r in read_all(tmp_path / "d.json")] == ["a", "b"]
    assert [r.record["user_id"] for r in read_all(tmp_path / "d.jsonl.gz")] == ["a", "b"]
    assert read_all(tmp_path / "d.json")[1].where.endswith("d.json[record 1]")


# -- batching -----------------------------------------------------------------------------------
def test_collate_puts_chosen_then_rejected_with_response_masks():
    items = [
        EncodedTriple([5, 6], [7, 0], [8, 9, 0], 1, 1, 0),
        EncodedTriple([5], [7, 7, 7, 0], [9, 0], 0, 3, 2),
    ]
    b = PreferenceCollator(pad_token_id=0)(items)
    assert b["input_ids"].tolist() == [
        [5, 6, 7, 0, 0],
        [5, 7, 7, 7, 0],
        [5, 6, 8, 9, 0],
        [5, 9, 0, 0, 0],
    ]
    assert b["attention_mask"].tolist() == [
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
    ]
    assert b["response_mask"].int().tolist() == [
        [0, 0, 1, 1, 0],
        [0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1],
        [0, 1, 1, 0, 0],
    ]
    assert b["user_ids"].tolist() == [1, 0] and b["user_keys"].tolist() == [1, 3]
    assert b["user_ids"].dtype == torch.long


def test_dataloader_batches_from_datamodule(tmp_path):
    dm = datamodule(tmp_path, [triple("a"), triple("b"), triple("a")], batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["user_ids"].shape == (2,)


def test_evaluation_batches_run_shortest_first_unless_only_some_are_evaluated(tmp_path):
    words = [6, 1, 4, 2, 5, 3]  # rejected responses of these many extra words, in file order
    rows = [triple(str(i), rejected=" Ana baked bread" + " again" * n + ".") for i, n in enumerate(words)]
    dm = datamodule(tmp_path, rows[:2], test_rows=rows, eval_batch_size=2)
    dm.setup("test")
    users = [b["user_keys"].tolist() for b in dm.test_dataloader()]
    key = {name: k for k, name in enumerate(dm.user_names)}
    assert users == [[key["1"], key["3"]], [key["5"], key["2"]], [key["4"], key["0"]]]
    # Two of three batches: the file's first two, not the shortest.
    dm.trainer = quiet_trainer(tmp_path, limit_test_batches=2)
    assert [b["user_keys"].tolist() for b in dm.test_dataloader()][0] == [key["0"], key["1"]]
    dm.trainer = quiet_trainer(tmp_path, limit_test_batches=3)  # all of them: sorted again
    assert [b["user_keys"].tolist() for b in dm.test_dataloader()][0] == [key["1"], key["3"]]
