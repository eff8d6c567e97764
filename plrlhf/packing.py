"""Shared-prefix ("tree") layouts: one row carries a prompt once and several continuations of it.

Chosen and rejected responses share their prompt (and, in P-DPO, the user's soft tokens). Instead
of running the prompt twice, a row holds ``[prompt, chosen, rejected]`` and a block attention mask
lets each response see the prompt and itself but not the other response; positions restart where
the prompt ends, so each response sees exactly what it would in a row of its own.

Every token carries a *segment* id; ``parents[s]`` is the segment that segment ``s`` continues
(``-1`` for a root). A token sees the earlier tokens of its own segment and of its ancestors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

PAD_SEGMENT = -1
# [prompt, chosen, rejected]: both responses continue the prompt.
SHARED_PROMPT_PARENTS = (-1, 0, 0)


def row_widths(lengths: np.ndarray, shared_prompt: bool) -> np.ndarray:
    """Row width each triple needs in a batch, from its ``(N, 3)`` prompt, chosen and rejected
    lengths: ``[prompt, chosen, rejected]`` in the shared-prompt layout, else its longer
    ``[prompt; response]`` row."""
    if shared_prompt:
        return lengths.sum(axis=1)
    return lengths[:, 0] + lengths[:, 1:].max(axis=1)


@dataclass
class TreeLayout:
    """Attention and scoring structure of a batch of tree-packed rows.

    The attention pattern exists in two forms: a dense ``(B, 1, L, L)`` additive mask (any
    attention kernel; quadratic memory, and it keeps SDPA off its fast GPU kernels) and a
    FlexAttention block mask computed from the segments (blocks with nothing visible are skipped).
    """

    segments: Tensor
    """``(B, L)`` segment id per token, ``PAD_SEGMENT`` on padding."""
    ancestors: Tensor
    """``(S, S)`` bool, :func:`ancestor_table` of the parents."""
    position_ids: Tensor
    """``(B, L)``: depth of each token along its own path (0 at the first prefix token)."""
    predictor: Tensor
    """``(B, L)``: index of the token whose hidden state predicts this one (-1 if none)."""

    @property
    def visible(self) -> Tensor:
        """``(B, L, L)`` bool: query ``i`` may attend key ``j``."""
        length = self.segments.shape[1]
        index = torch.arange(length, device=self.segments.device)
        return self.sees(
            index[None, :, None], index[None, None, :], self.segments[:, :, None], self.segments[:, None, :]
        )

    def sees(self, query: Tensor, key: Tensor, query_segment: Tensor, key_segment: Tensor) -> Tensor:
        """Whether ``query`` attends ``key`` (positions and their segments, broadcast): a key of
        the query's own segment or an ancestor's, not after it; every token sees itself, so that
        padding rows stay finite under softmax."""
        valid = (query_segment != PAD_SEGMENT) & (key_segment != PAD_SEGMENT)
        related = self.ancestors[query_segment.clamp(min=0), key_segment.clamp(min=0)]
        return (related & valid & (key <= query)) | (key == query)

    def additive_mask(self, dtype: torch.dtype) -> Tensor:
        """``(B, 1, L, L)`` additive float mask. ``finfo.min`` rather than ``-inf`` keeps fully
        masked (padding) rows finite, and eager attention adds a bool mask instead of applying it."""
        visible = self.visible
        mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        return mask.masked_fill_(~visible, torch.finfo(dtype).min).unsqueeze(1)

    def block_mask(self) -> Any:
        """The same pattern as a FlexAttention ``BlockMask`` (no ``L x L`` tensor is kept)."""
        from torch.nn.attention.flex_attention import create_block_mask

        segments = self.segments

        def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return self.sees(q, kv, segments[b, q], segments[b, kv])

        batch, length = segments.shape
        return create_block_mask(mask_mod, batch, None, length, length, device=segments.device)


def ancestor_table(parents: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """``(S, S)`` bool: ``table[q, k]`` when segment ``k`` is ``q`` or one of its ancestors."""
    n = len(parents)
    table = torch.zeros(n, n, dtype=torch.bool)
    for segment in range(n):
        node = segment
        while node != -1:
            table[segment, node] = True
            node = parents[node]
    return table.to(device)


def tree_layout(segments: Tensor, parents: tuple[int, ...]) -> TreeLayout:
    """Positions and predictors of rows whose tokens carry ``segments``, in ``O(B x L x S)``
    (the ``L x L`` pattern is only built if a dense mask is asked for).

    Args:
        segments: ``(B, L)`` segment id per token, ``PAD_SEGMENT`` on padding.
        parents: parent segment of each segment id.
    """
    table = ancestor_table(parents, segments.device)
    valid = segments != PAD_SEGMENT
    own = torch.nn.functional.one_hot(segments.clamp(min=0), len(parents)).bool() & valid[..., None]
    on_path = table[segments.clamp(min=0)]  # (B, L, S): the segments token i may see
    # Tokens visible from i (itself included): those of its path's segments up to i.
    seen = (own.long().cumsum(1) * on_path).sum(-1)
    position_ids = torch.where(valid, seen - 1, 0)
    # The token predicting i: the last token before i on its path.
    index = torch.arange(segments.shape[1], device=segments.device)[None, :, None]
    last = torch.where(own, index, -1).cummax(1).values  # (B, L, S): last token of each segment so far
    before = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)
    predictor = torch.where(valid, torch.where(on_path, before, -1).amax(-1), -1)
    return TreeLayout(segments, table, position_ids, predictor)


def pack_shared_prompt(
    input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, pad_token_id: int = 0
) -> tuple[Tensor, Tensor]:
    """Re-pack ``2B`` right-padded rows ``[prompt; response]`` (chosen rows first, then rejected,
    as :class:`plrlhf.data.collate.PreferenceCollator` makes them) into ``B`` rows
    ``[prompt, chosen, rejected]``.

    Returns ``(input_ids, segments)`` of shape ``(B, L)`` with segments 0 (prompt), 1 (chosen),
    2 (rejected) and ``PAD_SEGMENT``.
    """
    chosen_ids, rejected_ids = input_ids.chunk(2)
    chosen_resp, rejected_resp = response_mask.chunk(2)
    n_chosen = chosen_resp.sum(-1)
    n_rejected = rejected_resp.sum(-1)
    prompt_len = attention_mask.chunk(2)[0].sum(-1) - n_chosen
    total = prompt_len + n_chosen + n_rejected
    width = int(total.max())
    k = torch.arange(width, device=input_ids.device)[None, :]
    head = prompt_len[:, None] + n_chosen[:, None]  # end of [prompt, chosen]
    from_chosen = chosen_ids.gather(1, k.clamp(max=chosen_ids.shape[1] - 1).expand(len(total), -1))
    rejected_pos = (k - n_chosen[:, None]).clamp(min=0, max=rejected_ids.shape[1] - 1)
    from_rejected = rejected_ids.gather(1, rejected_pos)
    ids = torch.where(k < head, from_chosen, from_rejected)
    segments = torch.full_like(ids, PAD_SEGMENT)
    segments = torch.where(k < total[:, None], 2, segments)
    segments = torch.where(k < head, 1, segments)
    segments = torch.where(k < prompt_len[:, None], 0, segments)
    ids = torch.where(segments == PAD_SEGMENT, pad_token_id, ids)
    return ids, segments


# [prompt, soft_u, chosen_u, rejected_u, soft_0, chosen_0, rejected_0]: both users' tokens follow
# the prompt, and each user's responses follow that user's tokens.
USER_AFTER_PROMPT_PARENTS = (-1, 0, 1, 1, 0, 4, 4)
USER_AFTER_PROMPT_SCORED = (2, 3, 5, 6)


def pack_user_after_prompt(
    input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, n_soft: int, pad_token_id: int = 0
) -> tuple[Tensor, Tensor, int]:
    """Re-pack ``2B`` rows ``[prompt; response]`` into ``B`` rows that serve two user conditions:
    ``[prompt | soft_u | soft_0 | chosen, rejected, chosen, rejected]``.

    Prompts are left-padded so that the ``2 * n_soft`` soft-token slots sit at one column for the
    whole batch. Returns ``(input_ids, segments, soft_column)``; the slots hold ``pad_token_id``
    and are meant to be overwritten by the user tokens (``soft_u`` then ``soft_0``).
    """
    chosen_ids, rejected_ids = input_ids.chunk(2)
    n_chosen = response_mask.chunk(2)[0].sum(-1)
    n_rejected = response_mask.chunk(2)[1].sum(-1)
    prompt_len = attention_mask.chunk(2)[0].sum(-1) - n_chosen
    batch = chosen_ids.shape[0]
    width_prompt = int(prompt_len.max())
    width_responses = int((2 * (n_chosen + n_rejected)).max())
    device = input_ids.device

    def take(rows: Tensor, positions: Tensor) -> Tensor:
        return rows.gather(1, positions.clamp(0, rows.shape[1] - 1))

    k = torch.arange(width_prompt, device=device)[None, :].expand(batch, -1)
    source = k - (width_prompt - prompt_len[:, None])
    prompt_ids = torch.where(source >= 0, take(chosen_ids, source), pad_token_id)
    prompt_segments = torch.where(source >= 0, 0, PAD_SEGMENT)

    j = torch.arange(width_responses, device=device)[None, :].expand(batch, -1)
    c, r, p = n_chosen[:, None], n_rejected[:, None], prompt_len[:, None]
    bounds = [c, c + r, 2 * c + r, 2 * (c + r)]
    starts = [torch.zeros_like(c), c, c + r, 2 * c + r]
    response_ids = torch.full_like(j, pad_token_id)
    response_segments = torch.full_like(j, PAD_SEGMENT)
    for segment, rows, start, end in zip((2, 3, 5, 6), (chosen_ids, rejected_ids) * 2, starts, bounds):
        inside = (j >= start) & (j < end)
        response_ids = torch.where(inside, take(rows, p + j - start), response_ids)
        response_segments = torch.where(inside, segment, response_segments)

    soft_ids = torch.full((batch, 2 * n_soft), pad_token_id, dtype=input_ids.dtype, device=device)
    soft_segments = torch.cat(
        [torch.full((batch, n_soft), 1, device=device), torch.full((batch, n_soft), 4, device=device)], dim=1
    ).to(prompt_segments.dtype)
    ids = torch.cat([prompt_ids, soft_ids, response_ids], dim=1)
    segments = torch.cat([prompt_segments, soft_segments, response_segments], dim=1)
    return ids, segments, width_prompt
