"""Preference losses: pure tensor functions, and small classes that pick one from YAML.

A loss sees one batch of preference pairs as :class:`PairScores`: the policy's summed log-probs of
the chosen and rejected responses, the reference's (when the loss needs a reference), and each
response's token count. It returns the per-pair loss, shape ``(B,)``; the method decides how pairs
(and, in P-DPO, the user's and the generic user's terms) are weighted and averaged. Notation::

    r_c = logp_theta(y_c) - logp_ref(y_c)       r_r = logp_theta(y_r) - logp_ref(y_r)
    delta = r_c - r_r                           (DPO's implicit reward margin is beta * delta)

A class declares ``needs_reference`` (without one, the method runs no reference model) and
``length_normalized`` (log-probs are per-token means instead of sums). A new loss is one small
class with a ``pairs`` method and a test against values worked out by hand (``CONTRIBUTING.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class PairScores:
    """Log-probs of one condition's chosen and rejected responses, per pair, with token counts.
    ``ref_*`` are zeros when no reference is used."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    n_chosen: Tensor
    n_rejected: Tensor

    def log_ratios(self, length_normalized: bool = False) -> tuple[Tensor, Tensor]:
        """``(r_c, r_r)``; per token with ``length_normalized``."""
        chosen = self.policy_chosen - self.ref_chosen
        rejected = self.policy_rejected - self.ref_rejected
        if length_normalized:
            return chosen / self.n_chosen.clamp(min=1), rejected / self.n_rejected.clamp(min=1)
        return chosen, rejected


# -- pure functions -----------------------------------------------------------------------------
def chosen_nll(scores: PairScores, per_response: bool = False) -> Tensor:
    """The policy's NLL of the chosen responses: per token over every chosen token of the batch
    (TRL's ``rpo_alpha``), or ``per_response``: each response's per-token NLL, averaged over the
    responses (the RPO paper's ``-log p(y_c|x) / |y_c|``: a short response weighs as much as a long
    one, its end-of-text token included)."""
    if per_response:
        return (-scores.policy_chosen / scores.n_chosen.clamp(min=1)).mean()
    return -scores.policy_chosen.sum() / scores.n_chosen.sum().clamp(min=1)


def sigmoid_loss(delta: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO, and conservative DPO when ``label_smoothing > 0``.

    ``-(1 - eps) * log sigmoid(beta * delta) - eps * log sigmoid(-beta * delta)``: with ``eps`` the
    assumed probability that a label is flipped (Mitchell 2023, "cDPO").
    """
    h = beta * delta
    loss = -F.logsigmoid(h)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-h)
    return loss


def robust_loss(delta: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, eq. 8): an unbiased loss under label-flip rate ``eps``.

    ``(-(1 - eps) * log sigmoid(h) + eps * log sigmoid(-h)) / (1 - 2 eps)`` with ``h = beta * delta``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust loss needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    h = beta * delta
    return (-(1 - label_smoothing) * F.logsigmoid(h) + label_smoothing * F.logsigmoid(-h)) / (
        1 - 2 * label_smoothing
    )


def hinge_loss(delta: Tensor, beta: float) -> Tensor:
    """SLiC-style hinge on the reward margin: ``max(0, 1 - beta * delta)``."""
    return torch.relu(1 - beta * delta)


def ipo_loss(delta: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17): ``(delta - 1 / (2 beta))^2``, on per-token mean log-ratios."""
    return (delta - 1 / (2 * beta)) ** 2


def simpo_loss(mean_logp_chosen: Tensor, mean_logp_rejected: Tensor, beta: float, gamma: float) -> Tensor:
    """SimPO (Meng et al. 2024, eq. 6), reference-free on per-token mean log-probs:
    ``-log sigmoid(beta * (mean_c - mean_r) - gamma)``."""
    return -F.logsigmoid(beta * (mean_logp_chosen - mean_logp_rejected) - gamma)


def dpop_loss(r_chosen: Tensor, r_rejected: Tensor, beta: float, penalty: float) -> Tensor:
    """DPO-Positive (Pal et al. 2024, eq. 3): DPO with a penalty when the chosen response's
    likelihood falls below the reference's:
    ``-log sigmoid(beta * (r_c - r_r - lambda * max(0, -r_c)))``."""
    return -F.logsigmoid(beta * (r_chosen - r_rejected - penalty * torch.relu(-r_chosen)))


def apo_zero_loss(r_chosen: Tensor, r_rejected: Tensor, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024): push the chosen likelihood up and the rejected down,
    each on its own: ``(1 - sigmoid(beta r_c)) + sigmoid(beta r_r)``."""
    return (1 - torch.sigmoid(beta * r_chosen)) + torch.sigmoid(beta * r_rejected)


def apo_down_loss(r_chosen: Tensor, r_rejected: Tensor, beta: float) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024): both likelihoods down, the rejected more:
    ``sigmoid(beta r_c) + (1 - sigmoid(beta (r_c - r_r)))``."""
    return torch.sigmoid(beta * r_chosen) + (1 - torch.sigmoid(beta * (r_chosen - r_rejected)))


def nca_loss(r_chosen: Tensor, r_rejected: Tensor, beta: float) -> Tensor:
    """NCA (Chen et al. 2024, pairwise): absolute likelihoods, not only their difference:
    ``-log sigmoid(beta r_c) - 0.5 log sigmoid(-beta r_c) - 0.5 log sigmoid(-beta r_r)``."""
    return (
        -F.logsigmoid(beta * r_chosen)
        - 0.5 * F.logsigmoid(-beta * r_chosen)
        - 0.5 * F.logsigmoid(-beta * r_rejected)
    )


def exo_loss(delta: Tensor, beta: float, epsilon: float) -> Tensor:
    """EXO (Ji et al. 2024, pairwise): the reverse KL from the model's preference probability
    ``p = sigmoid(beta delta)`` to the smoothed label ``(1 - eps, eps)``:
    ``p (log p - log(1 - eps)) + (1 - p) (log(1 - p) - log eps)``."""
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"EXO needs 0 < epsilon < 1, got {epsilon}")
    h = beta * delta
    p = torch.sigmoid(h)
    return p * (F.logsigmoid(h) - math.log(1 - epsilon)) + (1 - p) * (F.logsigmoid(-h) - math.log(epsilon))


# -- classes chosen by class path -------------------------------------------------------------------
class PreferenceLoss:
    """A loss chosen by class path in YAML: subclasses implement :meth:`pairs`."""

    needs_reference: bool = True
    """Whether the loss reads reference log-probs (else the method runs no reference)."""
    length_normalized: bool = False
    """Whether the implicit rewards are per-token means (the loss sees the same scores)."""

    def pairs(self, scores: PairScores, beta: float) -> Tensor:
        """The per-pair loss, shape ``(B,)``."""
        raise NotImplementedError

    def __call__(self, scores: PairScores, beta: float) -> Tensor:
        return self.pairs(scores, beta)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class _OnDelta(PreferenceLoss):
    """Losses of ``delta`` alone (DPO's family)."""

    def pairs(self, scores: PairScores, beta: float) -> Tensor:
        chosen, rejected = scores.log_ratios(self.length_normalized)
        return self.of_delta(chosen - rejected, beta)

    def of_delta(self, delta: Tensor, beta: float) -> Tensor:
        raise NotImplementedError


class Sigmoid(_OnDelta):
    """The DPO loss (conservative DPO with ``label_smoothing > 0``)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        """
        Args:
            label_smoothing: assumed probability that a preference label is flipped.
        """
        self.label_smoothing = label_smoothing

    def of_delta(self, delta: Tensor, beta: float) -> Tensor:
        return sigmoid_loss(delta, beta, self.label_smoothing)


class Robust(_OnDelta):
    """Robust DPO: unbiased under a known label-flip rate."""

    def __init__(self, label_smoothing: float = 0.1) -> None:
        """
        Args:
            label_smoothing: the label-flip rate, in [0, 0.5).
        """
        self.label_smoothing = label_smoothing

    def of_delta(self, delta: Tensor, beta: float) -> Tensor:
        return robust_loss(delta, beta, self.label_smoothing)


class Hinge(_OnDelta):
    """SLiC hinge loss on the reward margin."""

    def of_delta(self, delta: Tensor, beta: float) -> Tensor:
        return hinge_loss(delta, beta)


class IPO(_OnDelta):
    """IPO: squared loss on the length-averaged log-ratio difference."""

    length_normalized = True

    def of_delta(self, delta: Tensor, beta: float) -> Tensor:
        return ipo_loss(delta, beta)


class EXO(_OnDelta):
    """EXO: reverse-KL preference optimization (pairwise form)."""

    def __init__(self, epsilon: float = 1e-3) -> None:
        """
        Args:
            epsilon: label smoothing of the target distribution, in (0, 1).
        """
        self.epsilon = epsilon

    def of_delta(self, delta: Tensor, beta: float) -> Tensor:
        return exo_loss(delta, beta, self.epsilon)


class SimPO(PreferenceLoss):
    """SimPO: reference-free, on per-token mean log-probs, with a target margin ``gamma``."""

    needs_reference = False
    length_normalized = True

    def __init__(self, gamma: float = 0.5) -> None:
        """
        Args:
            gamma: target reward margin (the paper: 0.5-1.5, with beta 2-2.5).
        """
        self.gamma = gamma

    def pairs(self, scores: PairScores, beta: float) -> Tensor:
        chosen = scores.policy_chosen / scores.n_chosen.clamp(min=1)  # the policy alone, per token
        rejected = scores.policy_rejected / scores.n_rejected.clamp(min=1)
        return simpo_loss(chosen, rejected, beta, self.gamma)


class DPOP(PreferenceLoss):
    """DPO-Positive (Smaug): DPO that keeps the chosen likelihood above the reference's."""

    def __init__(self, penalty: float = 50.0) -> None:
        """
        Args:
            penalty: lambda, the weight of the penalty (the paper: 50 or 500).
        """
        self.penalty = penalty

    def pairs(self, scores: PairScores, beta: float) -> Tensor:
        return dpop_loss(*scores.log_ratios(), beta, self.penalty)


class APOZero(PreferenceLoss):
    """APO-zero: chosen up, rejected down (for pairs whose chosen beats the model's outputs)."""

    def pairs(self, scores: PairScores, beta: float) -> Tensor:
        return apo_zero_loss(*scores.log_ratios(), beta)


class APODown(PreferenceLoss):
    """APO-down: both down, the rejected more (for pairs worse than the model's outputs)."""

    def pairs(self, scores: PairScores, beta: float) -> Tensor:
        return apo_down_loss(*scores.log_ratios(), beta)


class NCA(PreferenceLoss):
    """NCA: noise-contrastive alignment on the pair's absolute likelihood ratios."""

    def pairs(self, scores: PairScores, beta: float) -> Tensor:
        return nca_loss(*scores.log_ratios(), beta)


class WeightedSum(PreferenceLoss):
    """``sum_i w_i * loss_i``: several losses at once (e.g. DPO plus a share of SimPO)."""

    def __init__(self, losses: list[PreferenceLoss], weights: list[float] | None = None) -> None:
        """
        Args:
            losses: the losses to add (they share ``beta``).
            weights: one weight per loss (default: all 1).
        """
        if not losses:
            raise ValueError("WeightedSum needs at least one loss")
        weights = [1.0] * len(losses) if weights is None else list(weights)
        if len(weights) != len(losses):
            raise ValueError(f"WeightedSum: {len(losses)} losses but {len(weights)} weights")
        self.losses = list(losses)
        self.weights = weights
        self.needs_reference = any(loss.needs_reference for loss in losses)
        self.length_normalized = losses[0].length_normalized  # the rewards reported: the first's

    def pairs(self, scores: PairScores, beta: float) -> Tensor:
        return sum(w * loss.pairs(scores, beta) for w, loss in zip(self.weights, self.losses))


def as_loss(loss: PreferenceLoss | list[PreferenceLoss] | None) -> PreferenceLoss:
    """A method's ``loss`` argument as one loss: DPO by default, a list as their (unweighted) sum."""
    if loss is None:
        return Sigmoid()
    if isinstance(loss, (list, tuple)):
        return loss[0] if len(loss) == 1 else WeightedSum(list(loss))
    return loss
