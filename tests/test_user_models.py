"""User models: shapes, the generic user, initialisation, cluster weights."""

import pytest
import torch
from torch.testing import assert_close

from plrlhf.user_models import (
    ClusterUserModel,
    IndividualUserModel,
    LowRankUserModel,
    sample_vocabulary_rows,
)

VOCAB = torch.randn(50, 8)


def test_individual_starts_every_user_as_the_generic_user():
    model = IndividualUserModel(num_users=3, hidden_size=8, n_tokens=4)
    model.initialize(VOCAB)
    out = model(torch.tensor([0, 1, 3]))
    assert out.shape == (3, 4, 8)
    assert_close(out[1], out[0])
    assert_close(out[2], out[0])
    # e_0 is made of real vocabulary rows
    assert all(any(torch.equal(row, v) for v in VOCAB) for row in model.generic_tokens)


def test_individual_offsets_are_per_user_and_generic_has_none():
    model = IndividualUserModel(num_users=2, hidden_size=8, n_tokens=2)
    model.initialize(VOCAB)
    with torch.no_grad():
        model.offsets.weight.fill_(1.0)
    out = model(torch.tensor([0, 1, 2]))
    assert_close(out[0], model.generic_tokens)
    assert_close(out[1], model.generic_tokens + 1)
    out.sum().backward()
    assert model.offsets.weight.grad[0].abs().sum() == 0
    assert model.offsets.weight.grad[1].abs().sum() > 0


def test_individual_without_generic_part_learns_a_row_for_user_zero():
    model = IndividualUserModel(num_users=2, hidden_size=8, n_tokens=2, generic=False)
    model.initialize(VOCAB)
    assert model.generic_tokens is None
    out = model(torch.tensor([0, 1]))
    assert not torch.equal(out[0], out[1])
    out.sum().backward()
    assert model.offsets.weight.grad[0].abs().sum() > 0


def test_vocabulary_sampling_is_seeded():
    a = sample_vocabulary_rows(VOCAB, (3, 2), seed=5)
    assert a.shape == (3, 2, 8)
    assert_close(a, sample_vocabulary_rows(VOCAB, (3, 2), seed=5))
    assert not torch.equal(a, sample_vocabulary_rows(VOCAB, (3, 2), seed=6))


def test_cluster_weights_sum_to_one_and_mix_clusters():
    model = ClusterUserModel(num_users=4, hidden_size=8, n_tokens=3, n_clusters=5)
    model.initialize(VOCAB)
    users = torch.tensor([0, 1, 2, 3, 4])
    weights = model.weights(users)
    assert weights.shape == (5, 5)
    assert_close(weights.sum(-1), torch.ones(5))
    out = model(users)
    assert out.shape == (5, 3, 8)
    assert_close(out[2], torch.einsum("k,ktd->td", weights[2], model.clusters))
    out.sum().backward()
    assert model.user_logits.weight.grad[0].abs().sum() > 0  # the generic user's row is learned


def test_a_generic_user_with_tokens_of_its_own_shapes_no_cluster():
    """``generic_tokens=True``: user 0 is its own (vocabulary-initialised) tokens; the users are
    mixtures as before; the generic rows' gradient reaches only the generic tokens."""
    torch.manual_seed(0)
    model = ClusterUserModel(4, 8, n_tokens=3, n_clusters=5, generic_tokens=True)
    model.initialize(VOCAB)
    assert_close(model.generic_tokens.detach(), sample_vocabulary_rows(VOCAB, (3,), seed=124))
    out = model(torch.tensor([0, 2, 0]))
    assert_close(out[0], model.generic_tokens)
    assert_close(out[1], torch.einsum("k,ktd->td", model.weights(torch.tensor([2]))[0], model.clusters))
    (out[0] * torch.linspace(-1, 1, 8)).sum().backward()
    assert model.generic_tokens.grad.abs().sum() > 0
    assert model.clusters.grad is None or model.clusters.grad.abs().sum() == 0
    assert model.user_logits.weight.grad is None or model.user_logits.weight.grad.abs().sum() == 0
    # a new user starts as the even mixture (no mixture is the generic user)
    new = model.for_new_users(1)
    assert_close(new.weights(torch.tensor([1])), torch.full((1, 5), 0.2))


def test_cluster_temperature_keeps_the_start_and_speeds_up_the_mixtures():
    """Adam's first step moves every stored logit by exactly lr (``m / sqrt(v) = +-1``), so the
    effective logits ``w / tau`` move by ``lr / tau``: 10x at tau 0.1, from the same mixtures."""
    start, moved = {}, {}
    for tau in (1.0, 0.1):
        torch.manual_seed(0)
        model = ClusterUserModel(num_users=4, hidden_size=8, n_tokens=3, n_clusters=5, temperature=tau)
        model.initialize(VOCAB)
        start[tau] = model.weights(torch.arange(5)).detach()
        before = model.user_logits.weight.detach().clone() / tau
        optimizer = torch.optim.Adam([model.user_logits.weight], lr=0.01)
        (model(torch.tensor([1, 2])) * torch.linspace(-1, 1, 8)).sum().backward()
        optimizer.step()
        moved[tau] = (model.user_logits.weight.detach() / tau - before)[1:3]
    assert_close(start[1.0], start[0.1])
    assert_close(moved[1.0].abs(), torch.full((2, 5), 0.01), atol=1e-6, rtol=1e-4)
    assert_close(moved[0.1].abs(), torch.full((2, 5), 0.1), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ClusterUserModel(num_users=2, hidden_size=8, temperature=0.0)


def test_cluster_models_saved_before_the_temperature_load_as_they_scored():
    """0.3.0 saved no temperature and mixed with softmax(w): a state dict without it loads at 1
    into a model whose default is now 0.1; a new state dict keeps its own temperature."""
    model = ClusterUserModel(num_users=3, hidden_size=8, n_tokens=2, n_clusters=4, temperature=1.0)
    model.initialize(VOCAB)
    old = {k: v for k, v in model.state_dict().items() if k != "temperature"}
    users = torch.arange(4)
    expected = torch.softmax(model.user_logits.weight.detach(), -1)
    loaded = ClusterUserModel(num_users=3, hidden_size=8, n_tokens=2, n_clusters=4)
    assert loaded.temperature.item() == pytest.approx(0.1)
    loaded.load_state_dict(old)
    assert_close(loaded.weights(users), expected)
    fresh = ClusterUserModel(num_users=3, hidden_size=8, n_tokens=2, n_clusters=4, temperature=0.3)
    model.load_state_dict(fresh.state_dict())
    assert model.temperature.item() == pytest.approx(0.3)


def test_a_cluster_pdpo_checkpoint_of_0_3_0_passes_the_fit_check_and_loads_at_temperature_1():
    from plrlhf import ClusterPDPO
    from tests.conftest import TINY_MODELS, TOKENIZER

    module = ClusterPDPO(model=TINY_MODELS["llama"], tokenizer=TOKENIZER, num_users=3)
    state = {k: v for k, v in module.state_dict().items() if k != "user_model.temperature"}
    checkpoint = {"state_dict": state, "hyper_parameters": {}}
    module.on_load_checkpoint(checkpoint)  # the fit check names missing weights, if any
    module.load_state_dict(checkpoint["state_dict"])
    assert module.user_model.temperature.item() == 1.0


def test_low_rank_users_cost_rank_floats_and_start_generic():
    from plrlhf.user_models import LowRankUserModel

    model = LowRankUserModel(num_users=1000, hidden_size=8, n_tokens=3, rank=4)
    model.initialize(VOCAB)
    out = model(torch.tensor([0, 1, 999]))
    assert out.shape == (3, 3, 8)
    assert_close(out[1], out[0])
    assert_close(out[2], out[0])
    assert model.coefficients.weight.shape == (1001, 4)  # r floats per user
    with torch.no_grad():
        model.coefficients.weight[1] = torch.tensor([1.0, 0.0, 0.0, 2.0])
    out = model(torch.tensor([0, 1]))
    assert_close(out[1], model.generic_tokens + model.basis[0] + 2 * model.basis[3])
    out.sum().backward()
    assert model.coefficients.weight.grad[0].abs().sum() == 0  # the generic user has no coefficients


def _trained(model):
    model.initialize(VOCAB)
    with torch.no_grad():
        for table in model.per_user_tables().values():
            table.weight.normal_()
    return model


ALL_MODELS = [
    lambda: IndividualUserModel(num_users=3, hidden_size=8, n_tokens=2),
    lambda: IndividualUserModel(num_users=3, hidden_size=8, n_tokens=2, generic=False),
    lambda: ClusterUserModel(num_users=3, hidden_size=8, n_tokens=2, n_clusters=4),
    lambda: LowRankUserModel(num_users=3, hidden_size=8, n_tokens=2, rank=4, sparse=True),
]


@pytest.mark.parametrize("build", ALL_MODELS)
def test_new_users_start_as_the_generic_user_and_only_their_rows_learn(build):
    trained = _trained(build())
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    new = trained.for_new_users(2)
    ids = torch.tensor([0, 1, 2])
    out = new(ids)
    assert_close(out[1], trained(torch.tensor([0]))[0])
    assert_close(out[2], out[1])
    trainable = [n for n, p in new.named_parameters() if p.requires_grad]
    assert trainable == [f"{name}.weight" for name in new.per_user_tables()]
    with torch.no_grad():
        for table in new.per_user_tables().values():
            table.weight[1:].add_(0.5)  # "adapted"
    trained.append_users(new)
    # old users untouched, new users appended in order with their adapted rows
    for key, value in before.items():
        assert_close(trained.state_dict()[key][: len(value)], value)
    assert_close(trained(torch.tensor([4, 5])), new(torch.tensor([1, 2])))
    assert trained.init_args.get("num_users", 5) == 5
    assert all(t.num_embeddings == 6 for t in trained.per_user_tables().values())


def test_sparse_low_rank_rows_get_sparse_gradients():
    model = _trained(LowRankUserModel(num_users=1000, hidden_size=8, n_tokens=2, rank=4, sparse=True))
    model(torch.tensor([3, 7])).sum().backward()
    grad = model.coefficients.weight.grad
    assert grad.is_sparse and set(grad.coalesce().indices()[0].tolist()) == {3, 7}


def test_a_population_generic_user_is_the_users_mean_mixture_and_stays_after_training():
    """``population_generic=True``: user 0's mixture is the mean of users 1..N's (hand-computed
    from the logits), its loss reaches the clusters but no user's logits, and adapting or adding
    users afterwards does not move it."""
    torch.manual_seed(0)
    model = ClusterUserModel(4, 8, n_tokens=3, n_clusters=5, population_generic=True)
    model.initialize(VOCAB)
    with torch.no_grad():
        model.user_logits.weight.copy_(torch.randn(5, 5))
    mean = torch.softmax(model.user_logits.weight[1:].detach() / 0.1, dim=-1).mean(0)
    model.train()
    out = model(torch.tensor([0, 2]))
    assert_close(out[0], torch.einsum("k,ktd->td", mean, model.clusters))
    (out[0] * torch.linspace(-1, 1, 8)).sum().backward()
    assert model.clusters.grad.abs().sum() > 0
    assert model.user_logits.weight.grad.abs().sum() == 0
    model.eval()
    generic = model(torch.tensor([0])).detach()
    new = model.for_new_users(2)
    assert_close(new.weights(torch.tensor([1, 2])), mean.expand(2, -1))  # new users start generic
    new.train()
    with torch.no_grad():
        new.user_logits.weight[1:] = torch.randn(2, 5)
    new(torch.tensor([1, 0])).sum().backward()  # adaptation steps do not move the generic user
    assert_close(new.weights(torch.tensor([0]))[0], mean)
    model.append_users(new)
    assert_close(model(torch.tensor([0])), generic)
    reloaded = ClusterUserModel(6, 8, n_tokens=3, n_clusters=5, population_generic=True)
    reloaded.load_state_dict(model.state_dict())  # ... nor after a checkpoint is reloaded
    assert_close(reloaded(torch.tensor([0])), generic)
    with pytest.raises(ValueError, match="choose one"):
        ClusterUserModel(4, 8, generic_tokens=True, population_generic=True)
