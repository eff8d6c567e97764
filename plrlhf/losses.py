"""Preference losses as pure tensor functions, and small classes that pick one from YAML.

Every loss is written in terms of the log-ratio difference of one preference pair::

    delta = (logp_theta(y_c) - logp_ref(y_c)) - (logp_theta(y_r) - logp_ref(y_r))

so that ``h = beta * delta`` is the implicit reward margin of DPO (Rafailov et al. 2023, eq. 7) and
of P-DPO (method.md, "The objective"). Each function returns the per-pair loss, shape ``(B,)``;
the method decides how pairs are weighted and averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
    """IPO (Azar et al. 2023, eq. 17): ``(delta - 1 / (2 beta))^2``.

    IPO is defined on length-averaged log-probs; :class:`IPO` declares this so that the method
    passes ``delta`` computed from per-token means.
    """
    return (delta - 1 / (2 * beta)) ** 2


class PreferenceLoss:
    """A loss chosen by class path in YAML. Subclasses implement :meth:`__call__`.

    ``length_normalized`` tells the method to compute ``delta`` from mean (not summed) token
    log-probs of each response.
    """

    length_normalized: bool = False

    def __call__(self, delta: Tensor, beta: float) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Sigmoid(PreferenceLoss):
    """The DPO loss (conservative DPO with ``label_smoothing > 0``)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        """
        Args:
            label_smoothing: assumed probability that a preference label is flipped.
        """
        self.label_smoothing = label_smoothing

    def __call__(self, delta: Tensor, beta: float) -> Tensor:
        return sigmoid_loss(delta, beta, self.label_smoothing)


class Robust(PreferenceLoss):
    """Robust DPO: unbiased under a known label-flip rate."""

    def __init__(self, label_smoothing: float = 0.1) -> None:
        """
        Args:
            label_smoothing: the label-flip rate, in [0, 0.5).
        """
        self.label_smoothing = label_smoothing

    def __call__(self, delta: Tensor, beta: float) -> Tensor:
        return robust_loss(delta, beta, self.label_smoothing)


class Hinge(PreferenceLoss):
    """SLiC hinge loss on the reward margin."""

    def __call__(self, delta: Tensor, beta: float) -> Tensor:
        return hinge_loss(delta, beta)


class IPO(PreferenceLoss):
    """IPO: squared loss on the length-averaged log-ratio difference."""

    length_normalized = True

    def __call__(self, delta: Tensor, beta: float) -> Tensor:
        return ipo_loss(delta, beta)
