"""The language model being trained: loading, LoRA, soft-prompt injection and the reference.

:class:`Policy` is a plain ``nn.Module`` holding a Hugging Face causal LM (optionally wrapped by
peft) and knows how to score responses under it and under the reference model. Methods compose it;
it knows nothing about Lightning, data files or users beyond "soft tokens to put in front".
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from plrlhf.logprobs import sequence_logps, token_logps
from plrlhf.packing import (
    PAD_SEGMENT,
    SHARED_PROMPT_PARENTS,
    USER_AFTER_PROMPT_PARENTS,
    USER_AFTER_PROMPT_SCORED,
    pack_shared_prompt,
    pack_user_after_prompt,
    tree_layout,
)

ModelSource = str | dict[str, Any]
RowLayout = Literal["pair", "shared_prompt", "after_prompt"]
PairLogps = tuple[Tensor, Tensor, Tensor, Tensor]
"""``(chosen, rejected, n_chosen, n_rejected)``: summed log-probs and token counts per pair."""


def build_causal_lm(
    source: ModelSource,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a local directory, or build one at random from a config dict.

    Args:
        source: a local Hugging Face model directory, or a transformers config as a dict with a
            ``model_type`` key (e.g. ``{"model_type": "llama", "hidden_size": 64, ...}``).
        vocab_size: the tokenizer's size; fills ``vocab_size`` of a config dict that lacks it, and
            is checked against the model's embedding table.
        pad_token_id: written into the model config so generation pads consistently.
        dtype: parameter dtype (default: the checkpoint's, float32 for a config).
    """
    if isinstance(source, dict):
        settings = dict(source)
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise ValueError("a model config dict needs 'model_type' (e.g. 'llama', 'gpt2', 'qwen2')")
        if vocab_size is not None:
            settings.setdefault("vocab_size", vocab_size)
        config = AutoConfig.for_model(model_type, **settings)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        if not Path(source).is_dir():
            raise FileNotFoundError(
                f"model directory {source!r} not found; plrlhf never downloads at run time: "
                "give a local Hugging Face directory or a config dict"
            )
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    embedding_rows = model.get_input_embeddings().num_embeddings
    if vocab_size is not None and embedding_rows < vocab_size:
        raise ValueError(
            f"the model has {embedding_rows} token embeddings but the tokenizer has {vocab_size} "
            "tokens: model and tokenizer do not belong together"
        )
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = pad_token_id
    return model


def weights_digest(model: nn.Module, sample: int = 4096) -> str:
    """A digest of a model's weights: names, shapes, dtypes and about ``sample`` evenly spaced
    values of each tensor. Cheap at any size (no pass over every byte), and training or another
    checkpoint of the same architecture changes it."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        values = parameter.detach()
        digest.update(f"{name}{tuple(values.shape)}{values.dtype}".encode())
        flat = values.reshape(-1)
        picked = flat[:: max(1, flat.numel() // sample)].contiguous()
        digest.update(picked.view(torch.uint8).cpu().numpy().data)
    return digest.hexdigest()


def insert_soft_tokens(
    embeds: Tensor, attention_mask: Tensor, soft_tokens: Tensor, where: Literal["before", "after"] = "before"
) -> tuple[Tensor, Tensor]:
    """Put ``soft_tokens`` ``(B, P, d)`` before (or after) every row of ``embeds`` ``(B, T, d)``;
    returns the embeddings and the attention mask, both ``P`` longer."""
    soft_mask = attention_mask.new_ones(soft_tokens.shape[:2])
    soft_tokens = soft_tokens.to(embeds.dtype)
    if where == "before":
        return torch.cat([soft_tokens, embeds], dim=1), torch.cat([soft_mask, attention_mask], dim=1)
    return torch.cat([embeds, soft_tokens], dim=1), torch.cat([attention_mask, soft_mask], dim=1)


def prepend_soft_tokens(
    embeds: Tensor, attention_mask: Tensor, soft_tokens: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Put ``soft_tokens`` in front of every row; return embeddings, mask and position ids.

    Positions count attended tokens only (``cumsum(mask) - 1``), so the result is right for left and
    right padding alike: with left padding the soft tokens sit before the pads and the prompt's
    positions continue where the soft tokens end.

    Args:
        embeds: ``(B, T, d)`` token embeddings.
        attention_mask: ``(B, T)``.
        soft_tokens: ``(B, P, d)`` user tokens (``P`` may be 0).
    """
    embeds, attention_mask = insert_soft_tokens(embeds, attention_mask, soft_tokens)
    return embeds, attention_mask, positions_from_mask(attention_mask)


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that skip padding: 0 for the first attended token of each row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class Policy(nn.Module):
    """A causal LM with its reference, scoring responses.

    The reference is chosen by how the model is trained: with LoRA it is the same network with the
    adapters disabled (no second copy of the weights); in full fine-tuning a frozen copy made at
    construction; with ``reference_free`` there is none and reference log-probs are zero.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        lora: LoraConfig | None = None,
        reference_free: bool = False,
    ) -> None:
        super().__init__()
        self.reference_free = True
        self.reference: PreTrainedModel | None = None
        self.value_head: nn.Linear | None = None
        self.value_skip_token: int | None = None
        # Taken before anything changes the weights (LoRA layers, a precision plugin's cast).
        self.loaded_digest = weights_digest(model)
        if lora is not None:
            lora = copy.deepcopy(lora)
            lora.task_type = lora.task_type or "CAUSAL_LM"
            self.lm: PreTrainedModel | PeftModel = get_peft_model(model, lora)
        else:
            self.lm = model
        # Weights frozen from the start (LoRA's base) stay as the model was loaded: a checkpoint
        # may leave them out and a load take them from the model again (``loaded_digest`` says
        # whether it is the same model).
        self.as_loaded = {n for n, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}
        if not reference_free:
            self.use_reference()

    def add_value_head(self, pad_token_id: int | None = None) -> None:
        """Score responses by a scalar read at their last token (a reward model) instead of their
        log-probability, from now on: a linear layer on the decoder's last hidden state, read at
        the last token that is not ``pad_token_id`` (transformers' rule for sequence
        classification, so that the exported model reads the same position)."""
        self.value_skip_token = pad_token_id
        lm_head = self.hf_model.get_output_embeddings()
        if lm_head is not None and lm_head.weight is not self.hf_model.get_input_embeddings().weight:
            # Not used by a reward: frozen, so that DDP finds no parameter without a gradient.
            lm_head.weight.requires_grad_(False)
        head = nn.Linear(self.hidden_size, 1, bias=False)
        nn.init.normal_(head.weight, std=1 / (self.hidden_size + 1) ** 0.5)
        self.value_head = head.to(self.hf_model.get_input_embeddings().weight.device)

    def use_reference(self) -> None:
        """Score under a reference from now on: the adapters disabled with LoRA, else a frozen copy
        of the weights, which must still be as loaded (the methods call it while they are built)."""
        if not self.reference_free:
            return
        self.reference_free = False
        if not self.uses_lora:
            self.reference = copy.deepcopy(self.lm).eval().requires_grad_(False)
            copied = self.reference.named_parameters(remove_duplicate=False)
            self.as_loaded |= {f"reference.{name}" for name, _ in copied}

    def set_attention(self, implementation: str) -> None:
        """Switch the attention kernels of the model and its reference copy (transformers'
        ``attn_implementation``: ``sdpa``, ``eager``, ``flex_attention``); the tree layouts then
        pass the mask form that kernel takes."""
        for model in (self.hf_model, self.reference):
            if model is not None and model.config._attn_implementation != implementation:
                model.set_attn_implementation(implementation)

    @property
    def hf_model(self) -> PreTrainedModel:
        """The Hugging Face model (LoRA layers injected, if any)."""
        return self.lm.get_base_model() if isinstance(self.lm, PeftModel) else self.lm

    @property
    def uses_lora(self) -> bool:
        return isinstance(self.lm, PeftModel)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.hf_model.get_input_embeddings()(input_ids)

    @property
    def hidden_size(self) -> int:
        return self.hf_model.get_input_embeddings().embedding_dim

    def train(self, mode: bool = True) -> Policy:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # dropout never applies to the reference
        return self

    def pair_logps(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        pad_token_id: int,
        soft_tokens: list[Tensor] | None = None,
        layout: RowLayout = "pair",
    ) -> list[PairLogps]:
        """Policy log-probs of every pair's chosen and rejected response, once per condition.

        ``input_ids``/``attention_mask``/``response_mask`` are the ``2B`` right-padded rows
        ``[prompt; response]`` of :class:`plrlhf.data.collate.PreferenceCollator` (chosen rows,
        then rejected). With ``soft_tokens`` (one ``(B, P, d)`` tensor per condition, e.g. the user
        and the generic user) all conditions run in one forward, the token rows embedded once.
        ``layout``: ``pair`` (one row per response), ``shared_prompt`` (one row ``[prompt, chosen,
        rejected]``) or ``after_prompt`` (two conditions whose tokens follow a shared prompt).
        With a value head (:meth:`add_value_head`) the scores are the head's values at each
        row's last token that is not padding (as transformers' ``*ForSequenceClassification``
        reads it: the EOS, or the token before it when the tokenizer pads with EOS), counts 1.
        """
        if layout == "after_prompt":
            if not soft_tokens or len(soft_tokens) != 2:
                raise ValueError("the after_prompt layout scores exactly two user conditions")
            first, second = soft_tokens
            ids, segments, column = pack_user_after_prompt(
                input_ids, attention_mask, response_mask, first.shape[1], pad_token_id
            )
            sums, counts = self.tree_logps(
                ids,
                segments,
                USER_AFTER_PROMPT_PARENTS,
                USER_AFTER_PROMPT_SCORED,
                soft_tokens=torch.cat([first, second], dim=1),
                soft_column=column,
            )
            return [(sums[:, i], sums[:, i + 1], counts[:, i], counts[:, i + 1]) for i in (0, 2)]
        conditions = len(soft_tokens) if soft_tokens else 1
        if layout == "shared_prompt":
            ids, segments = pack_shared_prompt(input_ids, attention_mask, response_mask, pad_token_id)
            rows_per_condition = 1
        else:
            ids, segments = input_ids, None
            rows_per_condition = 2  # chosen rows, then rejected rows, share the condition's tokens
        embeds = self.embed(ids).repeat(conditions, 1, 1)
        soft = None
        if soft_tokens:
            soft = torch.cat([t.repeat(rows_per_condition, 1, 1) for t in soft_tokens])
        if segments is not None:
            sums, counts = self.tree_logps(
                ids.repeat(conditions, 1),
                segments.repeat(conditions, 1),
                SHARED_PROMPT_PARENTS,
                (1, 2),
                soft_tokens=soft,
                embeds=embeds,
            )
            parts = zip(sums.chunk(conditions), counts.chunk(conditions))
            return [(s[:, 0], s[:, 1], n[:, 0], n[:, 1]) for s, n in parts]
        logps, counts = self.response_logps(
            ids.repeat(conditions, 1),
            attention_mask.repeat(conditions, 1),
            response_mask.repeat(conditions, 1),
            soft_tokens=soft,
            embeds=embeds,
        )
        return [(*s.chunk(2), *n.chunk(2)) for s, n in zip(logps.chunk(conditions), counts.chunk(conditions))]

    @torch.no_grad()
    def reference_pair_logps(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        pad_token_id: int,
        shared_prompt: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Reference log-probs of every pair's chosen and rejected response (no user tokens)."""
        if shared_prompt:
            ids, segments = pack_shared_prompt(input_ids, attention_mask, response_mask, pad_token_id)
            sums, _ = self.reference_tree_logps(ids, segments, SHARED_PROMPT_PARENTS, (1, 2))
            return sums[:, 0], sums[:, 1]
        sums, _ = self.reference_logps(input_ids, attention_mask, response_mask)
        return sums.chunk(2)

    def response_logps(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        soft_tokens: Tensor | None = None,
        embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Summed log-probs of the response tokens of each row under the policy, and their count.

        Args:
            input_ids: ``(B, T)``.
            attention_mask: ``(B, T)``.
            response_mask: ``(B, T)`` bool, True on response tokens.
            soft_tokens: optional ``(B, P, d)`` user tokens prepended to the embeddings.
            embeds: the embeddings of ``input_ids`` when the caller already has them.
        """
        if self.value_head is not None and self.value_skip_token is not None:
            response_mask = response_mask & (input_ids != self.value_skip_token)
        return score_rows(
            self.hf_model, input_ids, attention_mask, response_mask, soft_tokens, embeds, self.value_head
        )

    def tree_logps(
        self,
        input_ids: Tensor,
        segments: Tensor,
        parents: tuple[int, ...],
        scored: tuple[int, ...],
        soft_tokens: Tensor | None = None,
        embeds: Tensor | None = None,
        soft_column: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Summed log-probs of the tokens of each ``scored`` segment of tree-packed rows.

        Args:
            input_ids: ``(B, L)`` tree-packed rows (see :mod:`plrlhf.packing`).
            segments: ``(B, L)`` segment ids; segment 0 is the root (the prompt).
            parents: parent of each segment id.
            scored: the segments whose tokens are scored, in output column order.
            soft_tokens: optional ``(B, P, d)`` user tokens put in front, as part of the root, or
                written over the ``P`` slots starting at ``soft_column``.
            embeds: the embeddings of ``input_ids`` when the caller already has them.
            soft_column: where the soft-token slots of the rows begin (default: prepend).

        Returns:
            ``(sums, counts)``, both ``(B, len(scored))``.
        """
        return tree_score(
            self.hf_model,
            input_ids,
            segments,
            parents,
            scored,
            soft_tokens,
            embeds,
            soft_column,
            self.value_head,
            self.value_skip_token,
        )

    @torch.no_grad()
    def reference_tree_logps(
        self, input_ids: Tensor, segments: Tensor, parents: tuple[int, ...], scored: tuple[int, ...]
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`tree_logps` under the reference model (never with user tokens)."""
        if self.reference_free:
            _, counts = _scored_counts(segments, scored)
            return torch.zeros(counts.shape, device=input_ids.device), counts
        with self._reference_model() as model:
            return tree_score(model, input_ids, segments, parents, scored)

    @torch.no_grad()
    def reference_logps(
        self, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`response_logps` under the reference model (never with user tokens)."""
        if self.reference_free:
            counts = response_mask[:, 1:].sum(-1)
            return torch.zeros(input_ids.shape[0], device=input_ids.device), counts
        with self._reference_model() as model:
            return score_rows(model, input_ids, attention_mask, response_mask)

    @contextlib.contextmanager
    def _reference_model(self) -> Iterator[PreTrainedModel]:
        if self.reference is not None:
            yield self.reference
            return
        assert isinstance(self.lm, PeftModel)
        # The reference is deterministic: no dropout even while the policy trains.
        was_training = self.lm.training
        self.lm.eval()
        try:
            with self.lm.disable_adapter():
                yield self.hf_model
        finally:
            self.lm.train(was_training)

    def reference_fingerprint(self) -> str:
        """A digest of the reference weights (names, shapes, dtypes and bytes), to key caches.

        With sharded weights (FSDP2) every process must call it: shards are gathered one by one.
        """
        digest = hashlib.sha256(str(self.reference_free).encode())
        if not self.reference_free:
            with self._reference_model() as model:
                for name, p in model.named_parameters():
                    if "lora_" not in name:
                        value = p.detach()
                        value = value.full_tensor() if hasattr(value, "full_tensor") else value  # a shard
                        digest.update(f"{name}{tuple(p.shape)}{value.dtype}".encode())
                        # The bytes themselves: rounded sums let two different models collide.
                        digest.update(value.contiguous().view(torch.uint8).cpu().numpy().data)
        return digest.hexdigest()


def score_rows(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    soft_tokens: Tensor | None = None,
    embeds: Tensor | None = None,
    value_head: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed response log-probs of right-padded rows under ``model`` (see
    :meth:`Policy.response_logps`), soft tokens prepended; with ``value_head``, its value at each
    row's last response token instead."""
    if embeds is None:
        embeds = model.get_input_embeddings()(input_ids)
    n_soft = 0
    if soft_tokens is not None and soft_tokens.shape[1] > 0:
        n_soft = soft_tokens.shape[1]
        embeds, attention_mask, position_ids = prepend_soft_tokens(embeds, attention_mask, soft_tokens)
    else:
        position_ids = positions_from_mask(attention_mask)
    hidden = _decoder(model, embeds, attention_mask, position_ids)[:, n_soft:]
    if value_head is not None:
        positions = torch.arange(response_mask.shape[1], device=response_mask.device).expand_as(response_mask)
        last = torch.where(response_mask, positions, -1).amax(dim=1)
        return _values(
            value_head, hidden[torch.arange(len(last), device=last.device), last]
        ), torch.ones_like(last)
    return sequence_logps(hidden, input_ids, response_mask, *_head(model))


def _values(value_head: nn.Module, hidden: Tensor) -> Tensor:
    return value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()


def flex_attention_supported(model: PreTrainedModel, device: torch.device) -> bool:
    """FlexAttention trains ``model`` on ``device``: CUDA (its CPU kernel has no backward) and an
    architecture that transformers runs with it (Llama, Qwen, Mistral, Gemma...; not GPT-2)."""
    if device.type != "cuda" or not getattr(model, "_supports_flex_attn", False):
        return False
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _decoder(model: PreTrainedModel, embeds: Tensor, attention_mask: Any, position_ids: Tensor) -> Tensor:
    """The decoder's last hidden states; the LM head runs later, on response positions only."""
    return model.base_model(
        inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state


def _head(model: PreTrainedModel) -> tuple[nn.Module, float | None]:
    """The LM head and its logit soft-cap (Gemma), for :mod:`plrlhf.logprobs`."""
    return model.get_output_embeddings(), getattr(model.config, "final_logit_softcapping", None)


def _scored_counts(segments: Tensor, scored: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Column of each token's segment in ``scored`` (-1 if not scored), and tokens per column."""
    lookup = torch.full((int(segments.max()) + 2,), -1, dtype=torch.long, device=segments.device)
    lookup[torch.tensor(scored, device=segments.device)] = torch.arange(len(scored), device=segments.device)
    column = torch.where(segments == PAD_SEGMENT, -1, lookup[segments.clamp(min=0)])
    counts = torch.stack([(column == k).sum(-1) for k in range(len(scored))], dim=-1)
    return column, counts


def tree_score(
    model: PreTrainedModel,
    input_ids: Tensor,
    segments: Tensor,
    parents: tuple[int, ...],
    scored: tuple[int, ...],
    soft_tokens: Tensor | None = None,
    embeds: Tensor | None = None,
    soft_column: int | None = None,
    value_head: nn.Module | None = None,
    skip_token: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the ``scored`` segments of tree-packed rows (see
    :meth:`Policy.tree_logps`); with ``value_head``, its value at each scored segment's last token
    other than ``skip_token`` instead."""
    if embeds is None:
        embeds = model.get_input_embeddings()(input_ids)
    if soft_tokens is not None and soft_column is not None:
        end = soft_column + soft_tokens.shape[1]
        embeds = torch.cat([embeds[:, :soft_column], soft_tokens.to(embeds.dtype), embeds[:, end:]], dim=1)
    elif soft_tokens is not None and soft_tokens.shape[1] > 0:
        prefix = soft_tokens.shape[:2]
        embeds = torch.cat([soft_tokens.to(embeds.dtype), embeds], dim=1)
        segments = torch.cat([segments.new_zeros(prefix), segments], dim=1)
        input_ids = torch.cat([input_ids.new_zeros(prefix), input_ids], dim=1)
    layout = tree_layout(segments, parents)
    # A 4D mask (or a block mask) reaches the attention kernels as given; with position ids alone
    # transformers would infer packed sequences or plain causal attention instead.
    if getattr(model.config, "_attn_implementation", None) == "flex_attention":
        mask = layout.block_mask()
    else:
        mask = layout.additive_mask(embeds.dtype)
    hidden = _decoder(model, embeds, mask, layout.position_ids)
    column, counts = _scored_counts(segments, scored)
    if value_head is not None:  # each scored segment's last token
        positions = torch.arange(column.shape[1], device=column.device).expand_as(column)
        counted = column >= 0 if skip_token is None else (column >= 0) & (input_ids != skip_token)
        last = torch.full(counts.shape, -1, dtype=torch.long, device=column.device).scatter_reduce(
            1, column.clamp(min=0), torch.where(counted, positions, -1), "amax"
        )
        rows = torch.arange(len(last), device=last.device)[:, None].expand_as(last)
        return _values(value_head, hidden[rows, last]), torch.ones_like(counts)
    take = (column >= 0) & (layout.predictor >= 0)
    rows, cols = torch.nonzero(take, as_tuple=True)
    logps = token_logps(hidden[rows, layout.predictor[rows, cols]], input_ids[rows, cols], *_head(model))
    width = len(scored)
    sums = torch.zeros(input_ids.shape[0] * width, dtype=logps.dtype, device=logps.device)
    sums = sums.index_add(0, rows * width + column[rows, cols], logps).view(-1, width)
    return sums, counts
