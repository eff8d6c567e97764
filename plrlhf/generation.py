"""Personalized generation: a causal LM continuing left-padded prompts, with a user's soft tokens.

The soft tokens are part of ``inputs_embeds`` of the first step only; transformers' ``generate``
keeps them in the KV cache like any prompt token, so every later step costs the same as without a
user. Positions come from the attention mask (``cumsum - 1``), which is right for the padding that
sits between soft tokens placed before the prompt and the prompt itself.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel

from plrlhf.policy import insert_soft_tokens

UserTokenPosition = Literal["before_prompt", "after_prompt"]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    soft_tokens: Tensor | None = None,
    user_tokens: UserTokenPosition = "before_prompt",
    **generate_kwargs: Any,
) -> Tensor:
    """New tokens for each left-padded prompt, ``(B, new_tokens)`` (padded with the pad token).

    Args:
        model: a Hugging Face causal LM (LoRA layers injected or not).
        input_ids: ``(B, T)`` left-padded prompts.
        attention_mask: ``(B, T)``.
        soft_tokens: optional ``(B, P, d)`` user tokens.
        user_tokens: where the soft tokens go: before the prompt (the paper) or after it.
        generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample``,
            ``temperature``, ``top_p``, ``use_cache``, ...).
    """
    embeds = model.get_input_embeddings()(input_ids)
    if soft_tokens is not None and soft_tokens.shape[1] > 0:
        where = "before" if user_tokens == "before_prompt" else "after"
        embeds, attention_mask = insert_soft_tokens(embeds, attention_mask, soft_tokens, where)
    settings = {"pad_token_id": model.config.pad_token_id, **generate_kwargs}
    # With only inputs_embeds, decoder-only models return just the new tokens.
    return model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **settings)
