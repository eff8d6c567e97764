"""Judges on hand-made cases, win-rate intervals on known cases, and `plrlhf evaluate` end to end
on tiny models (resumed after a stop)."""

import json

import pytest

from plrlhf.evaluate import bootstrap_interval, rates
from plrlhf.judges import CallableJudge, Comparison, Judge, LengthJudge, RegexJudge
from tests.conftest import TINY_MODELS, TOKENIZER, synthetic_rows, write_jsonl


def pair(first, second, user="u", group=None):
    return Comparison(user, group, "Summarize.", first, second)


def test_length_judge_per_group_and_ties():
    judge = LengthJudge(by_group={"majority": "longer", "minority": "shorter"}, tie_characters=1)
    items = [
        pair("a long answer", "short", group="majority"),
        pair("a long answer", "short", group="minority"),
        pair("abcd", "abc", group="majority"),  # within one character: a tie
        pair("x", "a longer one", user="alice"),  # no group: the default, longer
    ]
    assert judge(items) == [1.0, 0.0, 0.5, 0.0]
    assert LengthJudge(prefer="shorter", by_user={"alice": "longer"})([pair("ab", "a", user="alice")]) == [
        1.0
    ]


def test_regex_judge_counts_matches_per_user():
    judge = RegexJudge(r"\bplease\b", by_user={"bob": r"thanks"})
    assert judge([pair("Please, please do", "please"), pair("ok", "Thanks!", user="bob")]) == [1.0, 0.0]
    assert RegexJudge("!", prefer_matches=False)([pair("calm.", "loud!")]) == [1.0]


def first_is_shorter(comparison):
    return 1.0 if len(comparison.first) < len(comparison.second) else 0.0


def test_callable_judge_and_both_orders_for_a_position_sensitive_judge():
    assert CallableJudge("tests.test_evaluate.first_is_shorter")([pair("a", "bb")]) == [1.0]

    class PrefersFirst(Judge):  # a judge that always picks the first position
        position_sensitive = True

        def compare(self, items):
            return [1.0 for _ in items]

    assert PrefersFirst()([pair("a", "b")]) == [0.5]  # asked both ways: no preference left


def test_win_rate_intervals_on_known_cases():
    assert bootstrap_interval([1.0] * 20) == (1.0, 1.0)
    low, high = bootstrap_interval([1.0] * 50 + [0.0] * 50, draws=4000)
    assert low == pytest.approx(0.40, abs=0.03) and high == pytest.approx(
        0.60, abs=0.03
    )  # 0.5 +- 1.96 * 0.05
    summary = rates([1.0, 1.0, 0.5, 0.0])
    assert (summary["n"], summary["win_rate"], summary["tie_rate"], summary["score"]) == (4, 0.5, 0.25, 0.625)


def test_evaluate_end_to_end_and_resumed(tmp_path, capsys):
    from functools import partial

    from plrlhf import IndividualPDPO, PreferenceDataModule
    from plrlhf.cli import run
    from plrlhf.export import export
    from plrlhf.user_models import IndividualUserModel
    from tests.test_methods import randomize_user_model

    dm = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "train.jsonl", synthetic_rows("train", 40)))
    )
    module = IndividualPDPO(
        model=TINY_MODELS["llama"], tokenizer=TOKENIZER, num_users=dm.num_users,
        user_model=partial(IndividualUserModel, n_tokens=3),
    )  # fmt: skip
    randomize_user_model(module)
    model = export(module, tmp_path / "model", dm.registry)
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"user_id": r["user_id"], "group": r["group"], "prompt": r["prompt"]}
            for r in synthetic_rows("test", 6)
        ],
    )
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(model), "--prompts", str(prompts), "--out", str(out)]
    args += ["--judge", "plrlhf.judges.LengthJudge", "--judge.by_group", '{"minority": "shorter"}']
    args += ["--max_new_tokens", "6", "--batch_size", "4"]
    run(args)
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["index"] for g in generations] == list(range(6))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["n"] == 6 and set(summary["groups"]) == {"majority", "minority"}
    assert summary["seen"]["seen"]["n"] + summary["seen"].get("unseen", {"n": 0})["n"] == 6
    assert "win rate" in capsys.readouterr().out
    # Stopped after the first batch: the second run generates only what is missing, the same way.
    lines = (out / "generations.jsonl").read_text().splitlines()
    (out / "generations.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])  # a torn line
    (out / "judgments.jsonl").unlink()
    run(args)
    again = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert again == generations
    assert json.loads((out / "summary.json").read_text())["all"] == summary["all"]
    # another judge: the generations are reused, the judgments made again
    run([*args[:-8], "--judge", "plrlhf.judges.LengthJudge", "--judge.prefer", "shorter"] + args[-4:])
    assert [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()] == generations
    assert json.loads((out / "judge-settings.json").read_text())["judge"]["prefer"] == "shorter"
    scores = [json.loads(line)["score"] for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(scores) == 6
    # another model in the same directory: refused, never mixed
    with pytest.raises(ValueError, match="other settings .*max_prompts.* changed"):
        run([*args, "--max_prompts", "3"])


def test_reward_model_judge_ties_on_a_zero_head_and_follows_the_rewards(tmp_path):
    import torch

    from plrlhf import RewardModel
    from plrlhf.data.registry import UserRegistry
    from plrlhf.export import export, load
    from plrlhf.judges import RewardModelJudge

    module = RewardModel(model=TINY_MODELS["llama"], tokenizer=TOKENIZER).eval()
    items = [pair(" Ana baked bread.", " Ben fixed the old roof of the barn."), pair(" Yes.", " No.")]
    with torch.no_grad():
        module.policy.value_head.weight.zero_()
    assert RewardModelJudge(str(export(module, tmp_path / "zero", UserRegistry())))(items) == [0.5, 0.5]
    with torch.no_grad():
        module.policy.value_head.weight.normal_()
    directory = export(module, tmp_path / "rm", UserRegistry())
    rewards = load(directory).reward(
        ["Summarize."] * 4, [i.first for i in items] + [i.second for i in items], [None] * 4
    )
    expected = [1.0 if rewards[k] > rewards[k + 2] else 0.0 for k in range(2)]
    assert RewardModelJudge(str(directory))(items) == expected
    plain = RewardModelJudge(str(directory / "model"), tokenizer=str(directory / "tokenizer"))
    assert plain(items) == expected  # the export read as a plain transformers classifier


def test_lm_judge_asks_both_orders(tmp_path):
    from plrlhf.judges import LMJudge
    from plrlhf.policy import build_causal_lm
    from plrlhf.tokenizer import load_tokenizer

    build_causal_lm(TINY_MODELS["llama"], vocab_size=len(load_tokenizer(TOKENIZER))).save_pretrained(
        tmp_path / "lm"
    )
    load_tokenizer(TOKENIZER).save_pretrained(tmp_path / "lm")
    judge = LMJudge(str(tmp_path / "lm"), by_group={"minority": "short answers"}, chat=False)
    a, b = pair("one", "two two", group="minority"), pair("two two", "one", group="minority")
    raw = judge.compare([a])[0]
    assert 0.0 < raw < 1.0 and "short answers" in judge.prompt_for(a)
    assert judge([a])[0] + judge([b])[0] == pytest.approx(1.0)  # each order's verdicts combined
