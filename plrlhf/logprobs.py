"""Per-token log-probabilities of chosen positions, computed from hidden states.

Only response tokens enter the objective, so the LM head runs on those positions alone: the
``B x T x V`` logits of a full forward (and their log-softmax copy) are never built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def token_logps(
    hidden: Tensor,
    targets: Tensor,
    lm_head: Callable[[Tensor], Tensor],
    softcap: float | None = None,
) -> Tensor:
    """Log-probability of each target token given the hidden state that predicts it.

    Args:
        hidden: ``(N, d)`` hidden states, one per predicted token.
        targets: ``(N,)`` token ids.
        lm_head: maps hidden states to vocabulary logits.
        softcap: final logit soft-capping (Gemma 2 style ``c * tanh(x / c)``), if the model uses it.

    Returns:
        ``(N,)`` float32 log-probabilities.
    """
    # float32 only for the selected rows: log-sum-exp over a large vocabulary in bf16 would cost
    # ~1e-2 nats per token.
    logits = lm_head(hidden).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    hidden: Tensor,
    input_ids: Tensor,
    response_mask: Tensor,
    lm_head: Callable[[Tensor], Tensor],
    softcap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Sum of response-token log-probs per row, and the number of response tokens.

    Args:
        hidden: ``(B, T, d)`` last hidden states aligned with ``input_ids``.
        input_ids: ``(B, T)`` token ids.
        response_mask: ``(B, T)`` bool, True where a token belongs to the response (these are the
            tokens scored; the token at ``t`` is predicted by the hidden state at ``t - 1``).
        lm_head: maps hidden states to vocabulary logits.
        softcap: final logit soft-capping, if any.

    Returns:
        ``(sums, counts)``, both ``(B,)``; sums are float32.
    """
    scored = response_mask[:, 1:]
    rows = torch.nonzero(scored, as_tuple=True)[0]
    logps = token_logps(hidden[:, :-1][scored], input_ids[:, 1:][scored], lm_head, softcap)
    sums = torch.zeros(input_ids.shape[0], dtype=logps.dtype, device=logps.device)
    sums = sums.index_add(0, rows, logps)
    return sums, scored.sum(-1)
