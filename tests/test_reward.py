"""Reward models: Bradley-Terry by hand, the reward read where it should be, plain = personalized
with a user model of no tokens."""

import math
from functools import partial

import pytest
import torch
from torch.testing import assert_close

from plrlhf import PersonalizedRewardModel, RewardModel
from plrlhf.losses import PairScores
from plrlhf.user_models import UserModel
from tests.conftest import TINY_MODELS, TOKENIZER
from tests.test_methods import make_batch


def test_bradley_terry_loss_and_accuracy_by_hand():
    module = RewardModel(model=TINY_MODELS["llama"], tokenizer=TOKENIZER)
    zero = torch.zeros(2)
    scores = PairScores(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.0]), zero, zero, zero + 1, zero + 1)
    values = module.pair_values({"policy": scores})["policy"]
    # -log sigmoid(2 - 0.5) = log(1 + e^-1.5);  -log sigmoid(-1 - 0) = log(1 + e^1)
    assert_close(values["loss"], torch.tensor([math.log1p(math.exp(-1.5)), math.log1p(math.exp(1.0))]))
    assert values["rewards/accuracy"].tolist() == [1.0, 0.0]
    assert_close(values["rewards/margins"], torch.tensor([1.5, -1.0]))


@pytest.mark.parametrize("shared_prompt", [False, True])
def test_the_reward_is_the_head_at_the_last_token_that_is_not_padding(tmp_path, shared_prompt):
    _, batch = make_batch(tmp_path)
    module = RewardModel(model=TINY_MODELS["llama"], tokenizer=TOKENIZER, shared_prompt=shared_prompt).eval()
    with torch.no_grad():
        scores = module.score(batch)["policy"]
        model, head = module.policy.hf_model, module.policy.value_head
        expected = []
        for row in range(batch["input_ids"].shape[0]):
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]  # [prompt; response], unpadded
            # transformers' rule: the last token that is not padding (the tokenizer pads with EOS)
            last = int(torch.nonzero(ids != module.pad_token_id).max())
            hidden = model.base_model(input_ids=ids[None]).last_hidden_state[0, last]
            expected.append(head(hidden).squeeze())
    chosen, rejected = torch.stack(expected).chunk(2)
    assert_close(scores.policy_chosen, chosen, atol=1e-5, rtol=1e-4)
    assert_close(scores.policy_rejected, rejected, atol=1e-5, rtol=1e-4)
    assert torch.equal(scores.ref_chosen, torch.zeros_like(scores.ref_chosen))  # no reference


class NoTokens(UserModel):
    """A user model that gives every user zero soft tokens."""

    def __init__(self, num_users: int, hidden_size: int) -> None:
        super().__init__()
        self.n_tokens, self.hidden_size = 0, hidden_size
        self.unused = torch.nn.Embedding(num_users + 1, 1)

    def forward(self, user_ids):
        return torch.zeros(len(user_ids), 0, self.hidden_size)


def test_the_plain_reward_model_is_the_personalized_one_with_a_zero_user_model(tmp_path):
    _, batch = make_batch(tmp_path)
    torch.manual_seed(0)
    plain = RewardModel(model=TINY_MODELS["llama"], tokenizer=TOKENIZER, center_rewards=0.1)
    personal = PersonalizedRewardModel(
        model=TINY_MODELS["llama"], tokenizer=TOKENIZER, num_users=3, user_model=NoTokens, center_rewards=0.1
    )
    personal.policy.load_state_dict(plain.policy.state_dict())
    plain_loss, plain_values = plain.objective(batch)
    personal_loss, personal_values = personal.objective(batch)
    assert_close(personal_loss, plain_loss)
    for condition in ("user", "generic"):
        assert_close(personal_values[condition]["rewards/chosen"], plain_values["policy"]["rewards/chosen"])
    plain_loss.backward()
    assert plain.policy.value_head.weight.grad.abs().sum() > 0  # the head learns


def test_reward_models_refuse_settings_of_log_prob_methods():
    with pytest.raises(ValueError, match="do not apply to a reward model"):
        RewardModel(model=TINY_MODELS["llama"], tokenizer=TOKENIZER, nll_weight=0.1)
    with pytest.raises(TypeError):
        partial(RewardModel, reference_free=False)(model=TINY_MODELS["llama"], tokenizer=TOKENIZER)
