"""The methods on tiny real models: equivalences, limits, gradients, learning, checkpoints."""

import math
from functools import partial

import pytest
import torch
from peft import LoraConfig
from torch.testing import assert_close

from plrlhf import DPO, PDPO, ClusterPDPO, IndividualPDPO, PreferenceDataModule
from plrlhf.losses import IPO, Hinge, Robust, Sigmoid
from plrlhf.user_models import ClusterUserModel, IndividualUserModel, UserModel
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl


def make_batch(tmp_path, n=6, users=("user_0", "user_1", "user_4")):
    rows = [r for r in synthetic_rows("train") if r["user_id"] in users][:n]
    dm = PreferenceDataModule(TOKENIZER, train=str(write_jsonl(tmp_path / "train.jsonl", rows)), batch_size=n)
    dm.setup("fit")
    return dm, next(iter(dm.train_dataloader()))


def pdpo(num_users=3, **kwargs):
    kwargs.setdefault("model", TINY_MODELS["llama"])
    return IndividualPDPO(
        tokenizer=TOKENIZER,
        num_users=num_users,
        user_model=partial(IndividualUserModel, n_tokens=3),
        **kwargs,
    )


def randomize_user_model(module):
    with torch.no_grad():
        for p in module.user_model.parameters():
            p.add_(torch.randn_like(p))


def test_pdpo_one_batched_forward_equals_separate_forwards(tmp_path):
    _, batch = make_batch(tmp_path)
    module = pdpo().eval()
    randomize_user_model(module)
    scores = module.score(batch)
    policy = module.policy
    ids, mask, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    users = batch["user_ids"]
    for condition, user_ids in (("user", users), ("generic", torch.zeros_like(users))):
        soft = module.user_model(torch.cat([user_ids, user_ids]))
        logps, _ = policy.response_logps(ids, mask, resp, soft_tokens=soft)
        chosen, rejected = logps.chunk(2)
        assert_close(scores[condition].policy_chosen, chosen, atol=1e-4, rtol=1e-5)
        assert_close(scores[condition].policy_rejected, rejected, atol=1e-4, rtol=1e-5)
    # one reference value serves both terms, and it never saw user tokens
    ref, _ = policy.reference_logps(ids, mask, resp)
    assert_close(scores["user"].ref_chosen, ref.chunk(2)[0])
    assert scores["user"].ref_chosen is scores["generic"].ref_chosen


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_alpha_weights_the_personalized_and_generic_terms(tmp_path, alpha):
    _, batch = make_batch(tmp_path)
    module = pdpo(alpha=alpha).eval()
    randomize_user_model(module)
    objective, values = module.objective(batch)
    expected = {"user": values["user"]["loss"].mean(), "generic": values["generic"]["loss"].mean()}
    assert_close(objective, alpha * expected["user"] + (1 - alpha) * expected["generic"])
    assert not torch.allclose(expected["user"], expected["generic"])


def test_unseen_users_are_served_by_the_generic_user(tmp_path):
    _, batch = make_batch(tmp_path)
    batch["user_ids"] = torch.zeros_like(batch["user_ids"])
    module = pdpo().eval()
    randomize_user_model(module)
    scores = module.score(batch)
    assert_close(scores["user"].policy_chosen, scores["generic"].policy_chosen)


@pytest.mark.parametrize("lora", [False, True])
def test_gradients_reach_the_user_model_and_only_trainable_weights(tmp_path, lora):
    _, batch = make_batch(tmp_path)
    config = LoraConfig(r=4, target_modules="all-linear") if lora else None
    module = pdpo(lora=config)
    objective, _ = module.objective(batch)
    objective.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.user_model.parameters())
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    if lora:
        assert all("lora_" in n or n.startswith("user_model.") for n in with_grad)
        assert any("lora_" in n for n in with_grad)
    else:
        assert not any(n.startswith("policy.reference.") for n in with_grad)
    groups = module.param_groups()
    assert [g["name"] for g in groups] == ["policy", "user_model"]


def test_user_model_has_its_own_optimizer_settings():
    module = pdpo(user_model_lr=0.05, user_model_weight_decay=0.1)
    optimizer = module.configure_optimizers()
    user_group = [g for g in optimizer.param_groups if g["name"] == "user_model"][0]
    assert user_group["lr"] == 0.05 and user_group["weight_decay"] == 0.1


@pytest.mark.parametrize("loss", [Sigmoid(0.1), Robust(0.1), Hinge(), IPO()])
def test_every_loss_works_personalized(tmp_path, loss):
    """The objective is alpha * mean l(u) + (1 - alpha) * mean l(0), with l written out here from
    each paper's formula on the method's own log-probs (not through plrlhf's loss code)."""
    import torch.nn.functional as F

    _, batch = make_batch(tmp_path)
    module = pdpo(loss=loss, alpha=0.3)
    randomize_user_model(module)
    objective, _ = module.objective(batch)
    assert torch.isfinite(objective)
    objective.backward()
    beta, scores = module.beta, module.score(batch)

    def by_hand(s):
        if isinstance(loss, IPO):  # per-token means
            delta = (s.policy_chosen - s.ref_chosen) / s.n_chosen - (
                s.policy_rejected - s.ref_rejected
            ) / s.n_rejected
            return ((delta - 1 / (2 * beta)) ** 2).mean()
        h = beta * ((s.policy_chosen - s.ref_chosen) - (s.policy_rejected - s.ref_rejected))
        if isinstance(loss, Hinge):
            return torch.clamp(1 - h, min=0).mean()
        eps = loss.label_smoothing
        if isinstance(loss, Robust):
            return ((-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)).mean()
        return (-(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)).mean()

    expected = 0.3 * by_hand(scores["user"]) + 0.7 * by_hand(scores["generic"])
    assert objective.item() == pytest.approx(expected.item(), rel=1e-4)


def test_cluster_pdpo_runs_and_mixes(tmp_path):
    _, batch = make_batch(tmp_path)
    module = ClusterPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=3,
        user_model=partial(ClusterUserModel, n_clusters=4, n_tokens=2),
    )
    objective, _ = module.objective(batch)
    objective.backward()
    assert module.user_model.user_logits.weight.grad.abs().sum() > 0
    assert_close(module.user_model.weights(torch.arange(4)).sum(-1), torch.ones(4))


class MeanUserModel(UserModel):
    """A user model from 'another package': one vector per user, repeated."""

    def __init__(self, num_users: int, hidden_size: int, n_tokens: int = 2) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.table = torch.nn.Embedding(num_users + 1, hidden_size)

    def forward(self, user_ids):
        return self.table(user_ids)[:, None].expand(-1, self.n_tokens, -1)


def test_pdpo_takes_any_user_model(tmp_path):
    _, batch = make_batch(tmp_path)
    module = PDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=3,
        user_model=lambda n, d: MeanUserModel(n, d, n_tokens=4),
    )
    assert isinstance(module.user_model, MeanUserModel) and module.user_model.table.num_embeddings == 4
    module.objective(batch)[0].backward()
    assert module.user_model.table.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dpo_training_steps_raise_the_margin(tmp_path, arch):
    _, batch = make_batch(tmp_path, n=8)
    module = DPO(model=TINY_MODELS[arch], tokenizer=TOKENIZER, beta=0.1)
    module.policy.eval()  # no dropout: the loss must fall step by step
    optimizer = torch.optim.AdamW(module.param_groups()[0]["params"], lr=1e-2)
    losses = []
    for _ in range(8):
        objective, values = module.objective(batch)
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        losses.append(objective.item())
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert losses[-1] < losses[0] - 0.1
    assert values["policy"]["rewards/accuracy"].mean() > 0.5


def test_checkpoint_round_trip_restores_users_and_registry(tmp_path):
    rows = synthetic_rows("train", 24)
    dm = PreferenceDataModule(TOKENIZER, train=str(write_jsonl(tmp_path / "train.jsonl", rows)), batch_size=8)
    module = pdpo(num_users=dm.num_users)
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = IndividualPDPO.load_from_checkpoint(path, weights_only=False)  # holds the config objects
    for (name, a), b in zip(module.state_dict().items(), restored.state_dict().values()):
        assert_close(a, b, msg=name)
    assert restored.num_users == dm.num_users == restored.user_model.num_users
    checkpoint = torch.load(path, weights_only=False)
    saved = checkpoint["PreferenceDataModule"]["user_registry"]["users"]
    assert saved == dm.registry.users


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_pdpo_with_lora_on_every_architecture(tmp_path, arch):
    _, batch = make_batch(tmp_path)
    module = pdpo(model=TINY_MODELS[arch], lora=LoraConfig(r=4, target_modules="all-linear")).eval()
    randomize_user_model(module)
    scores = module.score(batch)
    # the adapters start at zero, so the generic user differs from the reference only by its tokens
    assert not torch.allclose(scores["generic"].policy_chosen, scores["generic"].ref_chosen)
    objective, _ = module.objective(batch)
    objective.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters() if "lora_B" in n
    )


@pytest.mark.parametrize("loss_name", ["SimPO", "DPOP", "APOZero", "APODown", "NCA", "EXO"])
def test_every_loss_trains_as_personalized_pdpo(tmp_path, loss_name):
    """Each loss is a P-DPO objective too: both user conditions, one reference (none for SimPO)."""
    import plrlhf.losses as losses

    _, batch = make_batch(tmp_path, n=8)
    loss = getattr(losses, loss_name)()
    module = pdpo(loss=loss, beta=0.5)
    module.policy.eval()
    assert (module.policy.reference_free) is (not loss.needs_reference)
    optimizer = torch.optim.AdamW([p for g in module.param_groups() for p in g["params"]], lr=1e-3)
    objectives = []
    for _ in range(6):
        objective, values = module.objective(batch)
        assert set(values) == {"user", "generic"}
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        objectives.append(objective.item())
    assert objectives[-1] < objectives[0]


def test_warmup_cosine_values_by_hand():
    from plrlhf.schedules import WarmupCosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosine(optimizer, warmup_steps=3, min_lr_ratio=0.1)
    schedule.set_total_steps(7)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # warm-up (step + 1) / 4; then 0.1 + 0.9 * (1 + cos(pi * (step - 3) / 4)) / 2
    expected = [0.25, 0.5, 0.75, 1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55,
                0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)), 0.1]  # fmt: skip
    assert lrs == pytest.approx(expected, abs=1e-9)


def test_nll_weight_adds_the_chosen_responses_nll(tmp_path):
    _, batch = make_batch(tmp_path)
    plain, weighted = pdpo(), pdpo(nll_weight=0.7)
    weighted.load_state_dict(plain.state_dict())
    scores = plain.score(batch)["user"]
    nll = -scores.policy_chosen.sum() / scores.n_chosen.sum()  # per token, over the batch
    difference = weighted.objective(batch)[0] - plain.objective(batch)[0]
    assert difference.item() == pytest.approx(0.7 * nll.item(), rel=1e-4)
    per_response = pdpo(nll_weight=0.7, nll_average="response")
    per_response.load_state_dict(plain.state_dict())
    nll = (-scores.policy_chosen / scores.n_chosen).mean()  # each response's per-token NLL, averaged
    difference = per_response.objective(batch)[0] - plain.objective(batch)[0]
    assert difference.item() == pytest.approx(0.7 * nll.item(), rel=1e-4)


def test_nll_condition_generic_takes_the_generic_users_nll_and_leaves_user_rows_to_preferences(tmp_path):
    _, batch = make_batch(tmp_path)
    plain = pdpo(alpha=0.0)  # the user term weighs 0: user rows learn from the NLL term or not at all
    generic = pdpo(alpha=0.0, nll_weight=0.7, nll_average="response", nll_condition="generic")
    own = pdpo(alpha=0.0, nll_weight=0.7, nll_average="response")
    randomize_user_model(plain)
    generic.load_state_dict(plain.state_dict())
    own.load_state_dict(plain.state_dict())
    scores = plain.score(batch)["generic"]
    nll = (-scores.policy_chosen / scores.n_chosen).mean()
    difference = generic.objective(batch)[0] - plain.objective(batch)[0]
    assert difference.item() == pytest.approx(0.7 * nll.item(), rel=1e-4)
    user_rows = {}
    for name, module in (("generic", generic), ("own", own)):
        module.train()
        module.objective(batch)[0].backward()
        grad = module.user_model.offsets.weight.grad
        grad = grad.to_dense() if grad.is_sparse else grad
        user_rows[name] = grad[1:].abs().sum().item()
    assert user_rows["generic"] == 0.0
    assert user_rows["own"] > 0.0
    with pytest.raises(ValueError, match="nll_condition must be one of"):
        DPO(model=TINY_MODELS["llama"], tokenizer=TOKENIZER, nll_condition="generic")


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    _, batch = make_batch(tmp_path)
    plain, checkpointed = pdpo(), pdpo(gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    assert (
        checkpointed.policy.hf_model.is_gradient_checkpointing
        and not plain.policy.hf_model.is_gradient_checkpointing
    )
    for module in (plain, checkpointed):
        module.train()
        module.objective(batch)[0].backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.grad is not None:
            assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_dtype_sets_the_model_parameters():
    module = pdpo(dtype="bfloat16")
    assert {p.dtype for p in module.policy.parameters()} == {torch.bfloat16}
