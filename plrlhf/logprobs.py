"""Per-token log-probabilities of chosen positions, computed from hidden states.

Only response tokens enter the objective, so the LM head runs on those positions alone: the
``B x T x V`` logits of a full forward (and their log-softmax copy) are never built. With a plain
linear head the response positions are processed in chunks, forward and backward: a chunk's
logits are recomputed in backward instead of kept, so at most ``chunk x V`` float32 logits exist
at any time, whatever the vocabulary (256k for Gemma) and the number of response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

CHUNK_ELEMENTS = 1 << 24
"""Logit elements per chunk (64 MiB of float32)."""
MIN_VOCAB_SLICE = 4096
"""Rows are split into blocks only when a block would otherwise see fewer vocabulary columns."""


def _capped(logits: Tensor, softcap: float | None) -> Tensor:
    return softcap * torch.tanh(logits / softcap) if softcap else logits


def _blocks(n_rows: int, vocab: int, budget: int) -> Iterator[tuple[slice, list[slice]]]:
    """Row blocks, each with the vocabulary slices that keep ``rows x columns <= budget``.

    The head's weight is read once per row block, so rows stay together (one block unless there
    are more than ``budget / MIN_VOCAB_SLICE`` of them) and the vocabulary is sliced: slicing rows
    instead re-reads a 256k-vocabulary weight (hundreds of MB) for every few dozen rows.
    """
    rows = max(1, min(n_rows, budget // min(vocab, MIN_VOCAB_SLICE)))
    columns = max(1, min(vocab, budget // rows))
    slices = [slice(c, min(c + columns, vocab)) for c in range(0, vocab, columns)]
    for r in range(0, n_rows, rows):
        yield slice(r, min(r + rows, n_rows)), slices


def _at_targets(targets: Tensor, columns: slice) -> tuple[Tensor, Tensor]:
    """Which rows' targets fall in ``columns``, and their positions there (clamped elsewhere)."""
    inside = (targets >= columns.start) & (targets < columns.stop)
    return inside, (targets - columns.start).clamp(0, columns.stop - columns.start - 1)[:, None]


class _ChunkedLinearLogps(torch.autograd.Function):
    """``log_softmax(softcap(h W^T + b))[target]`` over blocks of at most ``budget`` logits: the
    log-sum-exp runs online over vocabulary slices (as flash attention does over keys).

    A trainable head: backward recomputes each block's logits from the saved hidden states and
    log-sum-exps (its weight gradient needs every row's softmax). A frozen head (LoRA, the usual
    case for real models): the gradient of each row's log-prob with respect to its hidden state
    does not depend on what comes after, so forward accumulates it with the log-sum-exp and keeps
    that ``(N, d)`` tensor instead of the hidden states; backward only scales it, no recompute.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, budget):  # type: ignore[override]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        frozen_head = not ctx.needs_input_grad[1] and not ctx.needs_input_grad[2]
        direction = None
        if ctx.needs_input_grad[0] and frozen_head:
            direction = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        for rows, slices in _blocks(hidden.shape[0], weight.shape[0], budget):
            h, y = hidden[rows], targets[rows]
            top = torch.full_like(out[rows], -torch.inf)
            total = torch.zeros_like(top)
            picked = torch.zeros_like(top)
            expected_w = None if direction is None else torch.zeros_like(direction[rows])
            target_w = None if direction is None else torch.zeros_like(direction[rows])
            for columns in slices:
                w = weight[columns]
                raw = nn.functional.linear(h, w, None if bias is None else bias[columns]).float()
                logits = _capped(raw, softcap)
                inside, at = _at_targets(y, columns)
                picked += torch.where(inside, logits.gather(-1, at).squeeze(-1), 0.0)
                new_top = torch.maximum(top, logits.amax(-1))
                rescale = torch.exp(top - new_top)
                weights = torch.exp(logits - new_top[:, None])
                total = total * rescale + weights.sum(-1)
                top = new_top
                if expected_w is not None:
                    slope = 1 - torch.tanh(raw / softcap) ** 2 if softcap else None
                    if slope is not None:
                        weights = weights * slope
                        target_slope = torch.where(inside, slope.gather(-1, at).squeeze(-1), 0.0)
                    else:
                        target_slope = inside.float()
                    expected_w = expected_w * rescale[:, None] + weights @ w.float()
                    target_w += target_slope[:, None] * w[at.squeeze(-1)].float()
            lse[rows] = top + torch.log(total)
            out[rows] = picked - lse[rows]
            if direction is not None:
                # d logp / d h = slope(target) W[target] - sum_v p_v slope(v) W[v]
                direction[rows] = target_w - expected_w / total[:, None]
        if direction is not None:
            ctx.save_for_backward(direction)
        elif ctx.needs_input_grad[0] or not frozen_head:
            one_block = hidden.shape[0] * weight.shape[0] <= budget  # keep it: within the budget
            ctx.save_for_backward(hidden, weight, bias, targets, lse, raw if one_block else None)
        ctx.softcap, ctx.budget, ctx.direct = softcap, budget, direction is not None
        ctx.hidden_dtype = hidden.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if ctx.direct:
            (direction,) = ctx.saved_tensors
            return (grad_out[:, None] * direction).to(ctx.hidden_dtype), None, None, None, None, None
        hidden, weight, bias, targets, lse, kept = ctx.saved_tensors
        softcap = ctx.softcap
        grad_hidden = torch.zeros_like(hidden, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        for rows, slices in _blocks(hidden.shape[0], weight.shape[0], ctx.budget):
            h = hidden[rows].float()
            for columns in slices:
                w = weight[columns]
                raw = kept
                if raw is None:
                    raw = nn.functional.linear(
                        hidden[rows], w, None if bias is None else bias[columns]
                    ).float()
                # d(logp[target]) / d(logits) = onehot(target) - softmax(logits)
                grad_logits = -torch.exp(_capped(raw, softcap) - lse[rows, None])
                inside, at = _at_targets(targets[rows], columns)
                grad_logits.scatter_add_(-1, at, inside[:, None].float())
                if softcap:
                    grad_logits *= 1 - torch.tanh(raw / softcap) ** 2
                grad_logits *= grad_out[rows, None]
                if grad_hidden is not None:
                    grad_hidden[rows] += grad_logits @ w.float()
                if grad_weight is not None:
                    grad_weight[columns] += grad_logits.T @ h
                if grad_bias is not None:
                    grad_bias[columns] += grad_logits.sum(0)
        grad_hidden = grad_hidden.to(hidden.dtype) if grad_hidden is not None else None
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
        return _ChunkedLinearLogps.apply(
            hidden, lm_head.weight, lm_head.bias, targets, softcap, CHUNK_ELEMENTS
        )
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
