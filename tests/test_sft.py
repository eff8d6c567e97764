"""SFT: the NLL of the chosen responses falls; the user-conditioned variant uses the user's tokens."""

import torch

from plrlhf import SFT
from tests.conftest import TINY_MODELS, TOKENIZER
from tests.test_methods import make_batch


def steps(module, batch, n=6):
    optimizer = torch.optim.AdamW([p for g in module.param_groups() for p in g["params"]], lr=1e-2)
    losses = []
    for _ in range(n):
        chosen, counts = module._chosen(batch)
        loss = -chosen.sum() / counts.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_sft_lowers_the_nll_of_chosen_responses(tmp_path):
    _, batch = make_batch(tmp_path)
    module = SFT(model=TINY_MODELS["llama"], tokenizer=TOKENIZER)
    assert module.policy.reference is None and module.user_model is None
    losses = steps(module, batch)
    assert losses[-1] < losses[0] - 0.5


def test_user_conditioned_sft(tmp_path):
    _, batch = make_batch(tmp_path)
    module = SFT(model=TINY_MODELS["llama"], tokenizer=TOKENIZER, num_users=3, n_user_tokens=2)
    assert [g["name"] for g in module.param_groups()] == ["policy", "user_model"]
    steps(module, batch, n=2)
    assert module.user_model.offsets.weight.abs().sum() > 0  # the users' offsets were trained
    tokens = module.generate(
        batch["input_ids"][:2], batch["attention_mask"][:2], batch["user_ids"][:2], max_new_tokens=3
    )
    assert tokens.shape == (2, 3)
