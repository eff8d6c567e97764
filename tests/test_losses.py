"""Preference losses against values worked out by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from plrlhf.losses import IPO, Hinge, Robust, Sigmoid, hinge_loss, ipo_loss, robust_loss, sigmoid_loss
from plrlhf.methods.base import PairScores, preference_values

DELTA = torch.tensor([2.0, -1.0, 0.0])


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_is_dpo():
    # beta = 0.5: h = [1, -0.5, 0]; loss = -log sigmoid(h)
    expected = torch.tensor([0.31326169, 0.97407698, 0.69314718])
    assert_close(sigmoid_loss(DELTA, 0.5), expected)
    assert_close(Sigmoid()(DELTA, 0.5), expected)


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
    assert Robust(0.1)(torch.tensor([2.0]), 0.5).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        robust_loss(DELTA, 0.5, 0.5)


def test_hinge():
    # max(0, 1 - 0.5 * delta) = [0, 1.5, 1]
    assert_close(hinge_loss(DELTA, 0.5), torch.tensor([0.0, 1.5, 1.0]))
    assert_close(Hinge()(DELTA, 0.5), torch.tensor([0.0, 1.5, 1.0]))


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


def test_ipo_uses_per_token_means():
    v = preference_values(scores(), IPO(), beta=0.5)
    # delta = 1/4 - (-1)/2 = 0.75 and -1/2 - 1/4 = -0.75; loss = (delta - 1)^2
    assert_close(v["loss"], torch.tensor([0.0625, 3.0625]))
