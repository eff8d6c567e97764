"""Batching tokenized triples so that chosen and rejected run in one forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class EncodedTriple:
    """What a dataset item holds: token ids plus integer user/group keys (never text ids)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    user_id: int
    """Model index of the user: 1..N for users seen in training, 0 (generic) otherwise."""
    user_key: int
    """Index into the data module's ``user_names`` (covers unseen users too), for metrics."""
    group_key: int
    """Index into the data module's ``group_names``; 0 means no group."""
    index: int = 0
    """Position in its split: keys precomputed per-example values such as reference log-probs."""


def pad_rows(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-pad ``rows`` into ``(ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class PreferenceCollator:
    """Stacks ``B`` triples into ``2B`` right-padded rows: chosen rows first, then rejected.

    The batch is a dict of tensors:

    - ``input_ids``, ``attention_mask``: ``(2B, T)``, rows ``[prompt; response]``.
    - ``response_mask``: ``(2B, T)`` bool, True on response tokens (EOS included).
    - ``user_ids``, ``user_keys``, ``group_keys``, ``index``: ``(B,)`` long.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[EncodedTriple]) -> dict[str, Tensor]:
        responses = [t.chosen_ids for t in items] + [t.rejected_ids for t in items]
        prompts = [t.prompt_ids for t in items] * 2
        input_ids, attention_mask = pad_rows([p + r for p, r in zip(prompts, responses)], self.pad_token_id)
        response_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            response_mask[i, len(p) : len(p) + len(r)] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "user_ids": torch.tensor([t.user_id for t in items], dtype=torch.long),
            "user_keys": torch.tensor([t.user_key for t in items], dtype=torch.long),
            "group_keys": torch.tensor([t.group_key for t in items], dtype=torch.long),
            "index": torch.tensor([t.index for t in items], dtype=torch.long),
        }


@dataclass
class EncodedPrompt:
    """A prompt to generate for, with the same user keys as :class:`EncodedTriple`."""

    prompt_ids: list[int]
    user_id: int
    user_key: int
    group_key: int
    index: int
    text: str


class PromptCollator:
    """Left-pads prompts (generation continues at the right edge); keeps the prompt texts.

    The batch holds ``input_ids``, ``attention_mask`` ``(B, T)``, ``user_ids``, ``user_keys``,
    ``group_keys``, ``index`` ``(B,)`` and ``prompts``, the list of prompt texts.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[EncodedPrompt]) -> dict[str, Any]:
        width = max(len(t.prompt_ids) for t in items)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, item in enumerate(items):
            n = len(item.prompt_ids)
            ids[i, width - n :] = torch.tensor(item.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "user_ids": torch.tensor([t.user_id for t in items], dtype=torch.long),
            "user_keys": torch.tensor([t.user_key for t in items], dtype=torch.long),
            "group_keys": torch.tensor([t.group_key for t in items], dtype=torch.long),
            "index": torch.tensor([t.index for t in items], dtype=torch.long),
            "prompts": [t.text for t in items],
        }
