"""Per-token log-probabilities of chosen positions, computed from hidden states.

Only response tokens enter the objective, so the LM head runs on those positions alone: the
``B x T x V`` logits of a full forward (and their log-softmax copy) are never built. With a plain
linear head the response positions are processed in chunks, forward and backward: a chunk's
logits are recomputed in backward instead of kept, so at most ``chunk x V`` float32 logits exist
at any time, whatever the vocabulary (256k for Gemma) and the number of response tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

CHUNK_ELEMENTS = 1 << 24
"""Logit elements per chunk (64 MiB of float32): rows per chunk = this / vocabulary size."""


def _capped(logits: Tensor, softcap: float | None) -> Tensor:
    return softcap * torch.tanh(logits / softcap) if softcap else logits


class _ChunkedLinearLogps(torch.autograd.Function):
    """``log_softmax(softcap(h W^T + b))[target]`` row by row in chunks; backward recomputes each
    chunk's logits from the saved hidden states and log-sum-exps."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, chunk):  # type: ignore[override]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _capped(nn.functional.linear(hidden[rows], weight, bias).float(), softcap)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            out[rows] = logits.gather(-1, targets[rows, None]).squeeze(-1) - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.softcap, ctx.chunk = softcap, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        softcap, chunk = ctx.softcap, ctx.chunk
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            raw = nn.functional.linear(hidden[rows], weight, bias).float()
            capped = _capped(raw, softcap)
            # d(logp[target]) / d(logits) = onehot(target) - softmax(logits)
            grad_logits = -torch.exp(capped - lse[rows, None])
            grad_logits.scatter_add_(-1, targets[rows, None], torch.ones_like(grad_logits[:, :1]))
            grad_logits *= grad_out[rows, None]
            if softcap:
                grad_logits *= 1 - torch.tanh(raw / softcap) ** 2
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ weight.float()).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ hidden[rows].float()
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


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
    if type(lm_head) is nn.Linear and hidden.shape[0] > 0:  # (a LoRA-wrapped head: the plain path)
        chunk = max(1, CHUNK_ELEMENTS // lm_head.out_features)
        return _ChunkedLinearLogps.apply(hidden, lm_head.weight, lm_head.bias, targets, softcap, chunk)
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
