"""Preference losses against values worked out by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from plrlhf.losses import (
    DPOP,
    EXO,
    IPO,
    NCA,
    APODown,
    APOZero,
    Hinge,
    PairScores,
    Robust,
    Sigmoid,
    SimPO,
    WeightedSum,
    as_loss,
    chosen_nll,
    hinge_loss,
    ipo_loss,
    robust_loss,
    sigmoid_loss,
)
from plrlhf.objective import preference_values

DELTA = torch.tensor([2.0, -1.0, 0.0])


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_is_dpo():
    # beta = 0.5: h = [1, -0.5, 0]; loss = -log sigmoid(h)
    expected = torch.tensor([0.31326169, 0.97407698, 0.69314718])
    assert_close(sigmoid_loss(DELTA, 0.5), expected)
    assert_close(Sigmoid().of_delta(DELTA, 0.5), expected)


def test_conservative_label_smoothing():
    h = 0.5 * 2.0
    expected = -(0.9) * log_sigmoid(h) - 0.1 * log_sigmoid(-h)
    assert sigmoid_loss(torch.tensor([2.0]), 0.5, label_smoothing=0.1).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_robust():
    h = 0.5 * 2.0
    expected = (-(0.9) * log_sigmoid(h) + 0.1 * log_sigmoid(-h)) / 0.8
    assert robust_loss(torch.tensor([2.0]), 0.5, 0.1).item() == pytest.approx(expected, rel=1e-6)
    assert Robust(0.1).of_delta(torch.tensor([2.0]), 0.5).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        robust_loss(DELTA, 0.5, 0.5)


def test_hinge():
    # max(0, 1 - 0.5 * delta) = [0, 1.5, 1]
    assert_close(hinge_loss(DELTA, 0.5), torch.tensor([0.0, 1.5, 1.0]))
    assert_close(Hinge().of_delta(DELTA, 0.5), torch.tensor([0.0, 1.5, 1.0]))


def test_ipo():
    # (delta - 1/(2*0.5))^2 = (delta - 1)^2 = [1, 4, 1]
    assert_close(ipo_loss(DELTA, 0.5), torch.tensor([1.0, 4.0, 1.0]))
    assert IPO.length_normalized and not Sigmoid.length_normalized


def scores() -> PairScores:
    # two pairs; chosen has 4 and 2 tokens, rejected 2 and 4
    return PairScores(
        policy_chosen=torch.tensor([-4.0, -10.0]),
        policy_rejected=torch.tensor([-6.0, -8.0]),
        ref_chosen=torch.tensor([-5.0, -9.0]),
        ref_rejected=torch.tensor([-5.0, -9.0]),
        n_chosen=torch.tensor([4, 2]),
        n_rejected=torch.tensor([2, 4]),
    )


def test_preference_values_rewards_and_accuracy():
    v = preference_values(scores(), Sigmoid(), beta=0.1)
    # chosen log-ratios [1, -1], rejected [-1, 1]
    assert_close(v["rewards/chosen"], torch.tensor([0.1, -0.1]))
    assert_close(v["rewards/rejected"], torch.tensor([-0.1, 0.1]))
    assert_close(v["rewards/margins"], torch.tensor([0.2, -0.2]))
    assert_close(v["rewards/accuracy"], torch.tensor([1.0, 0.0]))
    assert_close(v["loss"], -torch.nn.functional.logsigmoid(torch.tensor([0.2, -0.2])))


def test_the_chosen_responses_nll_per_token_and_per_response():
    # chosen: -4 over 4 tokens and -10 over 2. Per token of the batch: 14 / 6; per response:
    # (4/4 + 10/2) / 2 = 3: the short response's tokens weigh twice the long one's.
    assert chosen_nll(scores()).item() == pytest.approx(14 / 6)
    assert chosen_nll(scores(), per_response=True).item() == pytest.approx(3.0)


def test_ipo_uses_per_token_means():
    v = preference_values(scores(), IPO(), beta=0.5)
    # delta = 1/4 - (-1)/2 = 0.75 and -1/2 - 1/4 = -0.75; loss = (delta - 1)^2
    assert_close(v["loss"], torch.tensor([0.0625, 3.0625]))


# scores(): r_c = [1, -1], r_r = [-1, 1], delta = [2, -2]; per-token policy means: chosen
# [-4/4, -10/2] = [-1, -5], rejected [-6/2, -8/4] = [-3, -2]. beta = 0.5 below. Each expected
# value is the paper's formula evaluated by hand (math module), not by plrlhf.
HAND = {
    # -log s(beta (mean_c - mean_r) - gamma), gamma 0.5: arguments [0.5, -2]
    "simpo": (SimPO(gamma=0.5), [0.47407698418010663, 2.1269280110429727]),
    # -log s(beta (delta - 2 max(0, -r_c))): arguments [1, -2]
    "dpop": (DPOP(penalty=2.0), [0.3132616875182228, 2.1269280110429727]),
    # 1 - s(beta r_c) + s(beta r_r)
    "apo_zero": (APOZero(), [0.7550813375962908, 1.2449186624037092]),
    # s(beta r_c) + 1 - s(beta delta)
    "apo_down": (APODown(), [0.8914007525718496, 1.1085992474281503]),
    # -log s(beta r_c) - 0.5 log s(-beta r_c) - 0.5 log s(-beta r_r)
    "nca": (NCA(), [1.1981539683602134, 1.6981539683602136]),
    # p (log p - log 0.9) + (1 - p)(log(1 - p) - log 0.1), p = s(beta delta)
    "exo": (EXO(epsilon=0.1), [0.11408210766749788, 1.129457283207938]),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_losses_against_their_papers_formulas(name):
    loss, expected = HAND[name]
    assert_close(loss(scores(), 0.5), torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_simpo_reads_no_reference():
    assert not SimPO.needs_reference and SimPO.length_normalized
    changed = scores()
    changed.ref_chosen = changed.ref_chosen + 100.0
    assert_close(SimPO(0.5)(changed, 0.5), SimPO(0.5)(scores(), 0.5))


def test_weighted_sum_and_lists():
    dpo, nca = Sigmoid(), NCA()
    combined = WeightedSum([dpo, nca], weights=[0.25, 2.0])
    assert_close(combined(scores(), 0.5), 0.25 * dpo(scores(), 0.5) + 2.0 * nca(scores(), 0.5))
    assert WeightedSum([SimPO(), SimPO()]).needs_reference is False
    assert WeightedSum([SimPO(), dpo]).needs_reference is True
    assert isinstance(as_loss(None), Sigmoid) and as_loss([nca]) is nca
    assert_close(as_loss([dpo, nca])(scores(), 0.5), dpo(scores(), 0.5) + nca(scores(), 0.5))
    with pytest.raises(ValueError, match="2 losses but 1 weights"):
        WeightedSum([dpo, nca], weights=[1.0])
