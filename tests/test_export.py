"""Export and load without Lightning: same log-probs and generations before and after."""

from functools import partial

import pytest
import torch
from peft import LoraConfig
from torch.testing import assert_close

import plrlhf
from plrlhf import IndividualPDPO, PreferenceDataModule, RewardModel
from plrlhf.export import export, load
from plrlhf.user_models import ClusterUserModel, IndividualUserModel
from tests.conftest import TINY_MODELS, TOKENIZER, file_order_batch, synthetic_rows, write_jsonl
from tests.test_methods import randomize_user_model

PROMPTS = [
    "Summarize the note.\nNote: Ana baked bread.\nSummary:",
    "Summarize the note.\nNote: Ben ran.\nSummary:",
]
RESPONSES = [" Ana baked bread.", " Ben ran at the park on Monday."]


def trained_module(tmp_path, lora):
    dm = PreferenceDataModule(
        TOKENIZER, train=str(write_jsonl(tmp_path / "t.jsonl", synthetic_rows("train", 40)))
    )
    module = IndividualPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        user_model=partial(IndividualUserModel, n_tokens=3),
        lora=LoraConfig(r=4, target_modules="all-linear") if lora else None,
    ).eval()
    randomize_user_model(module)
    with torch.no_grad():  # make the adapters matter
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.add_(0.3)
    return dm, module


def direct_scores(module, dm, users):
    lm = load_like(module, dm)
    return lm.score(PROMPTS, RESPONSES, users)


def load_like(module, dm):
    from plrlhf.export import PersonalizedLM

    return PersonalizedLM(module.policy.hf_model, dm.tokenizer, dm.registry, module.user_model)


@pytest.mark.parametrize("lora,merge", [(False, True), (True, True), (True, False)])
def test_export_round_trip_keeps_log_probs_and_generations(tmp_path, lora, merge):
    dm, module = trained_module(tmp_path, lora)
    users = [dm.registry.users[0], "somebody new"]
    before = direct_scores(module, dm, users)
    generated_before = load_like(module, dm).generate(PROMPTS, users, max_new_tokens=8)
    out = export(module, tmp_path / "export", dm.registry, merge_lora=merge)
    assert (out / "users.json").is_file() and (out / "user_model.safetensors").is_file()
    assert (out / ("model" if merge else "adapter")).is_dir()
    loaded = load(out)
    assert_close(loaded.score(PROMPTS, RESPONSES, users), before, atol=1e-4, rtol=1e-5)
    assert loaded.generate(PROMPTS, users, max_new_tokens=8) == generated_before
    # the module is untouched by export (LoRA not merged into it)
    assert_close(direct_scores(module, dm, users), before)


def test_user_models_record_their_arguments():
    model = IndividualUserModel(4, 8, n_tokens=2, generic=False)
    assert model.init_args == {
        "num_users": 4,
        "hidden_size": 8,
        "n_tokens": 2,
        "generic": False,
        "offset_init": "zeros",
        "seed": 123,
    }
    assert ClusterUserModel(3, 8, n_clusters=7).init_args["n_clusters"] == 7


@pytest.mark.parametrize("method", ["IndividualPDPO", "PersonalizedRewardModel"])
@pytest.mark.parametrize("user_tokens", ["before_prompt", "after_prompt"])
def test_exported_scores_equal_the_training_stack(tmp_path, user_tokens, method):
    """``load(dir).score`` against the method's own scoring of the same triples (not against
    itself): every layout, users seen and unseen."""
    rows = synthetic_rows("test", 6)
    path = str(write_jsonl(tmp_path / "t.jsonl", rows))
    dm = PreferenceDataModule(
        TOKENIZER,
        train=str(write_jsonl(tmp_path / "train.jsonl", synthetic_rows("train", 40))),
        test=path,
        eval_batch_size=6,
    )
    lora = (
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if method == "PersonalizedRewardModel" else None
    )
    module = getattr(plrlhf, method)(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        user_model=partial(IndividualUserModel, n_tokens=3),
        user_tokens=user_tokens,
        lora=lora,
    ).eval()
    randomize_user_model(module)
    if lora is not None:  # adapters that change the scores, to see them merged into the export
        with torch.no_grad():
            for name, parameter in module.policy.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=0.1)
    dm.setup("test")
    batch = file_order_batch(dm, "test")
    with torch.no_grad():
        expected = module.score(batch)["user"]
    loaded = load(export(module, tmp_path / "export", dm.registry))
    users = [r["user_id"] for r in rows]
    scoring = loaded.reward if method == "PersonalizedRewardModel" else loaded.score
    chosen = scoring([r["prompt"] for r in rows], [r["chosen"] for r in rows], users)
    rejected = scoring([r["prompt"] for r in rows], [r["rejected"] for r in rows], users)
    assert_close(chosen, expected.policy_chosen, atol=1e-4, rtol=1e-5)
    assert_close(rejected, expected.policy_rejected, atol=1e-4, rtol=1e-5)


def test_an_exported_reward_model_is_read_by_transformers_as_a_sequence_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from plrlhf.data.registry import UserRegistry
    from plrlhf.tokenizer import load_tokenizer

    module = RewardModel(model=TINY_MODELS["llama"], tokenizer=TOKENIZER).eval()
    loaded = load(export(module, tmp_path / "rm", UserRegistry()))
    rows = synthetic_rows("test", 4)
    ours = loaded.reward([r["prompt"] for r in rows], [r["chosen"] for r in rows], [None] * 4)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model").eval()
    tokenizer = load_tokenizer(TOKENIZER)
    texts = [r["prompt"] + r["chosen"] for r in rows]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = classifier(**encoded).logits[:, 0]
    assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    with pytest.raises(TypeError, match="use reward"):
        loaded.score(["x"], ["y"], [None])


def test_generate_stops_at_the_end_of_the_response_as_predict_does(tmp_path):
    """A model built from a config has no EOS of its own: generation must stop at the tokenizer's
    EOS, not decode on through it (predict cuts there; load(dir).generate must agree)."""
    dm, module = trained_module(tmp_path, lora=False)
    eos = dm.tokenizer.eos_token_id
    with torch.no_grad():  # make EOS the likeliest next token after a couple of tokens
        module.policy.hf_model.lm_head.weight[eos] += 0.5 * module.policy.hf_model.lm_head.weight.abs().max()
    users = [dm.registry.users[0], "somebody new"]
    texts = load_like(module, dm).generate(PROMPTS, users, max_new_tokens=12)
    encoded = dm.tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    user_ids = torch.tensor([dm.registry.index(u) for u in users])
    tokens = module.generate(encoded["input_ids"], encoded["attention_mask"], user_ids, max_new_tokens=12)
    expected = [dm.tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids) for ids in tokens.tolist()]
    assert texts == expected and all(len(t) < 60 for t in texts)
