"""Dataset builders on small fixture files written here in each source's published schema."""

import gzip
import json
import random

import pytest

from plrlhf.builders.cli import recorded_arguments
from plrlhf.builders.hh_relabeled import build_hh_relabeled
from plrlhf.cli import main
from plrlhf.data.sources import DataError
from tests.conftest import ROOT


def hh_row(i, objective, label, original_label=None, same=False):
    responses = [f"Answer A{i}.", f"Answer B{i}." if not same else f"Answer A{i}."]
    return {
        "prompt": f"Human: question {i}?",
        "responses": responses,
        "label": label,
        "original_label": label if original_label is None else original_label,
        "objective": objective,
        "data_subset": "helpful",
        "chosen": "",
        "rejected": "",
        "Index": i,
    }


def write_gz(path, rows):
    with gzip.open(path, "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def hh_source(tmp_path):
    source = tmp_path / "hh"
    source.mkdir()
    write_gz(
        source / "helpful.test.jsonl.gz",
        [hh_row(i, "helpful", i % 2, original_label=1 - i % 2) for i in range(10)],
    )
    write_gz(
        source / "harmless.test.jsonl.gz",
        [hh_row(i, "harmless", 0) for i in range(10, 19)] + [hh_row(99, "harmless", 0, same=True)],
    )
    return source


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hh_relabeled_users_orientation_and_splits(hh_source, tmp_path):
    report = build_hh_relabeled(hh_source, tmp_path / "out", fractions=(0.6, 0.2, 0.2), seed=1)
    assert report["dropped"] == {"identical responses": 1}
    splits = {s: read(tmp_path / "out" / f"{s}.jsonl") for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [11, 4, 4]
    rows = [r for v in splits.values() for r in v]
    assert {r["user_id"] for r in rows} == {"helpful", "harmless"} and all(
        r["group"] == r["user_id"] for r in rows
    )
    by_prompt = {r["prompt"]: r for r in rows}
    # label 1 for odd helpful rows: responses[1] is chosen; the assistant cue is restored
    assert by_prompt["Human: question 3?\n\nAssistant:"]["chosen"] == " Answer B3."
    assert by_prompt["Human: question 3?\n\nAssistant:"]["rejected"] == " Answer A3."
    assert by_prompt["Human: question 2?\n\nAssistant:"]["chosen"] == " Answer A2."
    assert by_prompt["Human: question 3?\n\nAssistant:"]["flipped"] is True
    # no prompt in two splits, and the same seed gives the same split
    prompts = [{r["prompt"] for r in v} for v in splits.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    build_hh_relabeled(hh_source, tmp_path / "again", fractions=(0.6, 0.2, 0.2), seed=1)
    assert (tmp_path / "again/test.jsonl").read_text() == (tmp_path / "out/test.jsonl").read_text()
    # a training budget keeps the first triples of the same split; validation and test unchanged
    build_hh_relabeled(hh_source, tmp_path / "budget", fractions=(0.6, 0.2, 0.2), max_train=5, seed=1)
    assert read(tmp_path / "budget/train.jsonl") == splits["train"][:5]
    assert (tmp_path / "budget/test.jsonl").read_text() == (tmp_path / "out/test.jsonl").read_text()
    with pytest.raises(ValueError, match="max_train must be >= 1"):
        build_hh_relabeled(hh_source, tmp_path / "none", max_train=0)


def test_hh_relabeled_bad_record_names_file_and_line(hh_source, tmp_path):
    write_gz(hh_source / "harmless.test.jsonl.gz", [hh_row(1, "harmless", 0), {"prompt": "x"}])
    with pytest.raises(DataError, match=r"harmless.test.jsonl.gz:2: missing field 'responses'"):
        build_hh_relabeled(hh_source, tmp_path / "out")


def test_data_subcommand(hh_source, tmp_path, capsys):
    main(["data", "hh-relabeled", "--source", str(hh_source), "--out", str(tmp_path / "hh")])
    out = capsys.readouterr().out
    assert "dropped: 1 identical responses" in out and "train:" in out
    main(["data", "length", "--out", str(tmp_path / "len"), "--users", "4", "--unseen_users", "1"])
    rows = read(tmp_path / "len/train.jsonl")
    assert {r["user_id"] for r in rows} == {"user_0", "user_1", "user_2", "user_3"}
    record = json.loads((tmp_path / "len/build.json").read_text())  # how the directory was built
    assert record["builder"] == "length" and record["arguments"]["users"] == 4
    # what a checker computes for the same command is what was recorded, defaults included
    argv = ["length", "--out", str(tmp_path / "len"), "--users", "4", "--unseen_users", "1"]
    assert recorded_arguments(argv) == ("length", record["arguments"]) and "seed" in record["arguments"]
    assert record["triples"]["train"]["user_0"] == 250
    assert sum(record["triples"]["train"].values()) == len(rows)
    hh_record = json.loads((tmp_path / "hh/build.json").read_text())
    assert hh_record["dropped"] == {"identical responses": 1}
    assert sum(r["group"] == "majority" for r in rows) == 3 * 250  # round(0.7 * 4) = 3 majority users
    longer = [len(r["chosen"]) > len(r["rejected"]) for r in rows]
    assert all(x == (r["group"] == "majority") for x, r in zip(longer, rows))


# -- TL;DR --------------------------------------------------------------------------------------
def comparison(worker, split, a, b, policies=("sup4_6b_t0.7", "sup4_t0.7")):
    return {
        "info": {"id": "t3_x", "post": "My post.", "title": "A title", "subreddit": "tifu"},
        "summaries": [
            {"text": a, "policy": policies[0], "note": None},
            {"text": b, "policy": policies[1], "note": None},
        ],
        "choice": 0,
        "worker": worker,
        "batch": "batch3",
        "split": split,
        "extra": {},
    }


def tldr_rows():
    return (
        [comparison("w_top", "train", " short", " a longer summary") for _ in range(3)]
        + [comparison("w_second", "train", " a much longer summary here", " tiny") for _ in range(2)]
        + [comparison("w_third", "train", " x", " yy")]
        + [
            comparison("w_top", "valid1", " a", " bbb"),
            comparison("w_third", "valid1", " gg", " h"),
            comparison("w_top", "valid2", " cc", " d"),
            comparison("w_third", "valid2", " e", " ffff"),
        ]
        + [
            comparison("w_top", "train", " same", " same"),
            comparison("w_top", "train", " abc", " xyz"),
            comparison("w_top", "train", " a", " b", policies=("sup4_ppo_rm3", "sup4_t0.7")),
            comparison("w_top", "train", " a", " bb", policies=("ref", "sup4_t0.7")),
        ]
    )


def write_tldr_source(directory):
    path = directory / "batch3.json"  # JSON lines despite the suffix, as published
    path.write_text("".join(json.dumps(r) + "\n" for r in tldr_rows()))
    return path


def test_tldr_length(tmp_path):
    from plrlhf.builders.tldr import build_tldr_length

    path = write_tldr_source(tmp_path)
    report = build_tldr_length(path, tmp_path / "out", users=2, longer_share=1.0, seed=0)
    # counted by hand: w_third (third by train comparisons) is not among the top 2, so its one
    # train comparison is dropped and counted; its valid1 and valid2 rows stay, as unseen
    assert report["dropped"] == {
        "identical summaries": 1,
        "equal lengths": 1,
        "not both supervised policies": 2,
        "train comparison of a worker outside the top K": 1,
    }
    train = read(tmp_path / "out/train.jsonl")
    assert {r["user_id"] for r in train} == {"w_top", "w_second"}  # top 2 by train comparisons
    assert all(len(r["chosen"]) > len(r["rejected"]) for r in train)  # everyone prefers longer here
    assert train[0]["prompt"] == "SUBREDDIT: r/tifu\nTITLE: A title\nPOST: My post.\nTL;DR:"
    assert sorted(r["user_id"] for r in read(tmp_path / "out/validation.jsonl")) == ["w_third", "w_top"]
    assert len(train) == 5  # w_top 3, w_second 2
    assert sorted(r["user_id"] for r in read(tmp_path / "out/test.jsonl")) == [
        "w_third",
        "w_top",
    ]  # unseen too
    report = build_tldr_length(path, tmp_path / "short", users=2, longer_share=0.0)
    assert all(len(r["chosen"]) < len(r["rejected"]) for r in read(tmp_path / "short/train.jsonl"))


# -- P-SOUPS ------------------------------------------------------------------------------------
def write_psoups_source(directory):
    from plrlhf.builders.psoups import PROFILES

    source = directory / "psoups"
    source.mkdir()
    for profile, instruction in PROFILES.items():
        no_comma = instruction.replace(",", "")
        records = [
            {
                "user_input": f"Explain topic {i}. {instruction if i % 2 else no_comma}",
                "completion_a": f"good {profile} {i}",
                "completion_b": f"bad {i}",
            }
            for i in range(20)
        ]
        records += [
            records[0],
            {"user_input": "x", "completion_a": "same", "completion_b": "same"},
            {"user_input": "Explain without instruction.", "completion_a": "a", "completion_b": "b"},
        ]
        (source / f"{profile}.json").write_text(json.dumps(records))
    return source


def test_psoups(tmp_path):
    from plrlhf.builders.psoups import PROFILES, build_psoups

    source = write_psoups_source(tmp_path)
    report = build_psoups(source, tmp_path / "out")
    assert report["dropped"] == {
        "duplicate within profile": 6,
        "identical completions": 6,
        "(kept) preference instruction not found": 6,
    }
    rows = [r for s in ("train", "validation", "test") for r in read(tmp_path / f"out/{s}.jsonl")]
    assert len(rows) == 6 * 21 and {r["user_id"] for r in rows} == set(PROFILES)
    assert all(r["chosen"].startswith("good") or r["chosen"] == "a" for r in rows)
    assert {r["prompt"] for r in rows if r["user_id"] == "P2A" and "topic 3." in r["prompt"]} == {
        "Explain topic 3."
    }
    # one seeded split over all 126 pairs: test ceil(0.1 * 126) = 13, validation int(0.05 * 113) = 5
    sizes = [len(read(tmp_path / f"out/{s}.jsonl")) for s in ("train", "validation", "test")]
    assert sizes == [108, 5, 13]
    # the split is over all pairs, not per profile: profiles need not be split 90/10 each
    test = read(tmp_path / "out/test.jsonl")
    assert {r["user_id"] for r in test} <= set(PROFILES)
    per_profile = [sum(r["user_id"] == p for r in test) for p in PROFILES]
    assert sum(per_profile) == 13 and per_profile != [2] * 6


def test_psoups_small_input_never_gives_a_silently_empty_split(tmp_path):
    from plrlhf.builders.psoups import PROFILES, build_psoups

    source = tmp_path / "tiny"
    source.mkdir()
    for profile in PROFILES:  # two pairs per profile: 12 pairs, test ceil(1.2) = 2, validation 0
        records = [
            {"user_input": f"q {i}", "completion_a": f"a {i}", "completion_b": f"b {i}"} for i in range(2)
        ]
        (source / f"{profile}.json").write_text(json.dumps(records))
    with pytest.warns(UserWarning, match="the validation split came out empty"):
        report = build_psoups(source, tmp_path / "out")
    assert sum(report["test"].values()) == 2 and sum(report["train"].values()) == 10


# -- PRISM --------------------------------------------------------------------------------------
def prism_conversation(cid, user, turns=2, empty_reply=False):
    history = []
    for t in range(turns):
        history.append({"turn": t, "role": "user", "content": f"{cid} question {t}"})
        n = 4 if t == 0 else 2
        for k in range(n):
            content = "EMPTY STRING" if (empty_reply and k == n - 1) else f"{cid} reply {t}.{k}"
            history.append(
                {
                    "turn": t,
                    "role": "model",
                    "content": content,
                    "model_name": "m",
                    "score": 50,
                    "if_chosen": k == 1,
                    "within_turn_id": k,
                    "model_provider": "openai",
                }
            )
    return {
        "conversation_id": cid,
        "user_id": user,
        "conversation_type": "unguided",
        "opening_prompt": "",
        "conversation_turns": turns,
        "conversation_history": history,
    }


def survey(user):
    return {
        "user_id": user,
        "self_description": f"I am {user}.",
        "age": "25-34 years old",
        "gender": "Female",
        "education": "",
        "stated_prefs": {
            "values": 10,
            "fluency": 90,
            "factuality": 80,
            "safety": 95,
            "diversity": 5,
            "other_text": "n/a",
        },
        "order_stated_prefs": {"values": 1, "fluency": 2, "factuality": 3, "safety": 4},
    }


def write_prism_source(directory):
    source = directory / "prism"
    source.mkdir()
    users = [f"user{i}" for i in range(10)]
    conversations = [prism_conversation(f"c{u}{j}", u) for u in users for j in range(3)]
    conversations += [
        prism_conversation("lonely", "user_lonely"),  # one dialogue: unseen
        prism_conversation("broken", "user0", turns=1) | {"conversation_history": []},
        prism_conversation("withempty", "user1", turns=1, empty_reply=True),
    ]
    (source / "conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations))
    (source / "survey.jsonl").write_text(
        "".join(json.dumps(survey(u)) + "\n" for u in [*users, "user_lonely"])
    )
    return source


def test_prism(tmp_path):
    from plrlhf.builders.prism import build_prism

    source = write_prism_source(tmp_path)
    users = [f"user{i}" for i in range(10)]
    report = build_prism(source, tmp_path / "out", seed=123)
    assert report["dropped"] == {"conversation without a usable turn": 1, "empty reply": 1}
    splits = {s: read(tmp_path / f"out/{s}.jsonl") for s in ("train", "validation", "test")}
    every = [r for v in splits.values() for r in v]
    # turn 0: chosen vs 3 others; turn 1: chosen vs 1 other -> 4 triples per two-turn conversation
    assert len(every) == 4 * 31 + 2
    first = next(r for r in every if r["conversation_id"] == "cuser30" and r["turn"] == 1)
    assert first["chosen"] == "cuser30 reply 1.1" and first["rejected"] == "cuser30 reply 1.0"
    # history: system text, then user turn 0, the chosen reply of turn 0, then the turn-1 question
    assert [m["role"] for m in first["prompt"]] == ["system", "user", "assistant", "user"]
    assert first["prompt"][2]["content"] == "cuser30 reply 0.1"
    system = first["prompt"][0]["content"]
    assert "safety, fluency, factuality" in system and "I am user3." in system and "age: 25-34" in system
    # users: 9 of 11 seen (seeded), minus any with one dialogue; unseen users only in test
    train_users = {r["user_id"] for r in splits["train"]}
    assert "user_lonely" not in train_users and "user_lonely" in {r["user_id"] for r in splits["test"]}
    order = sorted([*users, "user_lonely"])
    random.Random(123).shuffle(order)
    assert train_users == set(order[:9]) - {"user_lonely"}
    conversations_of = lambda split: {r["conversation_id"] for r in splits[split]}  # noqa: E731
    assert not (conversations_of("train") & conversations_of("test"))
    # each seen user's own dialogues: int(0.9 * 3) = 2 train (+ validation), 1 test; user1 has a
    # fourth (with an empty reply): int(0.9 * 4) = 3 and 1
    for user in train_users:
        test_dialogues = {r["conversation_id"] for r in splits["test"] if r["user_id"] == user}
        kept = {
            r["conversation_id"] for s in ("train", "validation") for r in splits[s] if r["user_id"] == user
        }
        assert len(test_dialogues) == 1, user
        assert len(kept) == (3 if user == "user1" else 2), user
    # the builder's conversational records go through the data module's chat rendering
    from plrlhf import PreferenceDataModule
    from tests.conftest import TOKENIZER

    dm = PreferenceDataModule(
        TOKENIZER, train=str(tmp_path / "out/train.jsonl"), max_length=512, max_prompt_length=400
    )
    dm.setup("fit")
    assert dm.stats["train"].kept == len(splits["train"])


SHARED_HH = ROOT.parent / "shared" / "data" / "hh_rlhf_relabeled"


@pytest.fixture
def hh_slice(tmp_path):
    """The first 80 rows of each shipped relabeled HH-RLHF file (real text)."""
    if not SHARED_HH.is_dir():
        pytest.skip(f"the shipped data is not beside the checkout ({SHARED_HH})")
    source = tmp_path / "hh"
    source.mkdir()
    for name in ("helpful.test.jsonl.gz", "harmless.test.jsonl.gz"):
        with gzip.open(SHARED_HH / name, "rt") as handle:
            rows = [json.loads(next(handle)) for _ in range(80)]
        write_gz(source / name, rows)
    return source


def test_hh_length_users_drops_and_seeds_on_real_text(hh_slice, tmp_path):
    from plrlhf.builders.hh_length import build_hh_length

    # Counted here from the raw rows, independently of the builder.
    raw = []
    for name in ("helpful.test.jsonl.gz", "harmless.test.jsonl.gz"):
        with gzip.open(hh_slice / name, "rt") as handle:
            raw += [json.loads(line) for line in handle]
    pairs = {(r["prompt"].rstrip(), frozenset(x.strip() for x in r["responses"])) for r in raw}
    identical = sum(1 for r in raw if r["responses"][0].strip() == r["responses"][1].strip())
    repeated = len(raw) - identical - len({p for p in pairs if len(p[1]) == 2})
    lengths = [sorted(len(x) for x in p[1]) for p in pairs if len(p[1]) == 2]
    too_close = sum(1 for short, long in lengths if long < 1.5 * max(1, short))

    report = build_hh_length(hh_slice, tmp_path / "out", users=4, unseen_users=2, majority_share=0.5, seed=3)
    assert report["dropped"].get("identical responses", 0) == identical
    assert report["dropped"].get("repeated pair", 0) == repeated
    assert report["dropped"]["lengths too close (ratio < 1.5)"] == too_close
    kept = len(lengths) - too_close
    assert sum(sum(report[s].values()) for s in ("train", "validation", "test")) == kept

    splits = {s: read(tmp_path / "out" / f"{s}.jsonl") for s in ("train", "validation", "test")}
    longer = {}
    for rows in splits.values():
        for r in rows:  # each user is consistent: always the longer, or always the shorter
            prefers_longer = len(r["chosen"]) > len(r["rejected"])
            assert longer.setdefault(r["user_id"], prefers_longer) == prefers_longer
            assert r["group"] == ("majority" if prefers_longer else "minority")
    assert sorted(u for u in longer if u.startswith("user_")) == [f"user_{i}" for i in range(4)]
    assert {u for r in splits["train"] + splits["validation"] for u in [r["user_id"]]} <= {
        f"user_{i}" for i in range(4)
    }
    assert {r["user_id"] for r in splits["test"]} >= {"new_0", "new_1"}
    assert sum(longer[f"user_{i}"] for i in range(4)) == 2 and longer["new_0"] != longer["new_1"]
    prompts = [{r["prompt"] for r in rows} for rows in splits.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])

    build_hh_length(hh_slice, tmp_path / "again", users=4, unseen_users=2, majority_share=0.5, seed=3)
    assert read(tmp_path / "again" / "train.jsonl") == splits["train"]  # seeded: the same files
    build_hh_length(hh_slice, tmp_path / "other", users=4, unseen_users=2, majority_share=0.5, seed=4)
    assert read(tmp_path / "other" / "train.jsonl") != splits["train"]
    report = build_hh_length(hh_slice, tmp_path / "budget", users=4, max_train=8, seed=3)
    assert report["train"] == {f"user_{i}": 2 for i in range(4)}

    # As chat messages: the same triples, users and split; every turn a message, the cue dropped.
    build_hh_length(hh_slice, tmp_path / "chat", users=4, unseen_users=2, majority_share=0.5, seed=3,
                    conversational=True)  # fmt: skip
    chat = read(tmp_path / "chat" / "train.jsonl")
    assert [(r["user_id"], r["chosen"], r["rejected"]) for r in chat] == [
        (r["user_id"], r["chosen"][1:], r["rejected"][1:]) for r in splits["train"]
    ]
    for row, text in zip(chat, splits["train"]):  # turns start after a blank line (the first: at 0)
        turns = text["prompt"].count("\n\nHuman:") + text["prompt"].count("\n\nAssistant:")  # - cue + 1st
        assert len(row["prompt"]) == turns and row["prompt"][-1]["role"] == "user"
        assert text["prompt"].startswith(f"Human: {row['prompt'][0]['content']}\n\n")


def test_hh_transcripts_as_chat_messages():
    from plrlhf.builders.hh_relabeled import hh_messages

    transcript = "Human: Hi?\n\nAssistant: Hello.\n\nHuman: Two lines:\nyes\n\nAssistant:"
    assert hh_messages(transcript) == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Two lines:\nyes"},
    ]
    with pytest.raises(ValueError, match="not an HH transcript"):
        hh_messages("Hello there\n\nAssistant:")


def test_the_data_command_lists_every_builder_and_its_options(capsys):
    from plrlhf.builders.cli import BUILDERS

    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in BUILDERS)
    with pytest.raises(SystemExit):
        main(["data", "hh-length", "--help"])
    out = capsys.readouterr().out
    assert "--min_length_ratio" in out and "default: 1.5" in out and "usage: plrlhf data" in out


# -- the same sources as Hugging Face serves them -----------------------------------------------
def as_hf(jsonl, directory, layout):
    """A JSON-lines file converted as the Hugging Face hub and ``datasets`` store it."""
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "json", data_files=str(jsonl), split="train", cache_dir=str(directory / ".hf")
    )
    if layout == "parquet files":
        (directory / "0000").mkdir(parents=True)
        loaded.to_parquet(str(directory / "0000" / "train-00000-of-00001.parquet"))
    else:
        datasets.DatasetDict(
            {"train": loaded.select(range(3)), "rest": loaded.select(range(3, len(loaded)))}
        ).save_to_disk(str(directory))
    return directory


@pytest.mark.parametrize("layout", ["parquet files", "save_to_disk"])
def test_prism_from_hugging_face_layouts_equals_the_published_files(tmp_path, layout):
    from plrlhf.builders.prism import build_prism

    source = write_prism_source(tmp_path)
    build_prism(source, tmp_path / "from-jsonl", seed=123)
    hf = tmp_path / "hf"
    hf.mkdir()
    for table in ("conversations", "survey"):
        as_hf(source / f"{table}.jsonl", hf / table, layout)
    build_prism(hf, tmp_path / "from-hf", seed=123)
    for split in ("train", "validation", "test"):
        assert read(tmp_path / f"from-hf/{split}.jsonl") == read(tmp_path / f"from-jsonl/{split}.jsonl"), (
            split
        )


@pytest.mark.parametrize("layout", ["parquet files", "save_to_disk"])
def test_tldr_from_hugging_face_layouts_equals_the_published_files(tmp_path, layout):
    from plrlhf.builders.tldr import build_tldr_length

    path = write_tldr_source(tmp_path)
    expected = build_tldr_length(path, tmp_path / "from-jsonl", users=2, longer_share=0.7, seed=0)
    hf = as_hf(path, tmp_path / "hf", layout)
    assert build_tldr_length(hf, tmp_path / "from-hf", users=2, longer_share=0.7, seed=0) == expected
    for split in ("train", "validation", "test"):
        assert read(tmp_path / f"from-hf/{split}.jsonl") == read(tmp_path / f"from-jsonl/{split}.jsonl"), (
            split
        )


def test_length_task_with_three_tastes_counts_and_labels(tmp_path):
    from plrlhf.builders.length_task import make_length_task

    report = make_length_task(
        str(tmp_path / "three"),
        users=20,
        unseen_users=4,
        train_per_user=10,
        validation_per_user=2,
        test_per_user=4,
        shares={"longer": 0.6, "shorter": 0.25, "medium": 0.15},
    )
    train = read(tmp_path / "three/train.jsonl")
    tastes = {r["user_id"]: r["group"] for r in train}
    # 20 users: round(0.15 * 20) = 3 medium, round(0.25 * 20) = 5 shorter, the remaining 12 longer
    assert sorted(tastes.values()).count("medium") == 3 and list(tastes.values()).count("shorter") == 5
    assert len(train) == 200 and sum(report["test"].values()) == 24 * 4
    summary_sentences = {1: 1, 2: 2, 4: 3, 5: 4}  # periods -> summary sentences (the third adds two)
    for row in train:
        chosen, rejected = (summary_sentences[row[k].count(".")] for k in ("chosen", "rejected"))
        if row["group"] == "medium":  # 2-3 sentences over 1 or 4, never a tie
            assert abs(chosen - 2.5) < abs(rejected - 2.5)
        else:
            assert (chosen > rejected) == (row["group"] == "longer")
    with pytest.raises(ValueError, match="longer/shorter/medium"):
        make_length_task(str(tmp_path / "bad"), shares={"longer": 0.5, "loud": 0.5})
