"""Turning records into token ids: field extraction, chat rendering, truncation, drop counting.

Nothing is lost silently: every record read is either kept or counted under a named reason in
:class:`SplitStats`, and the data module prints those counts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from plrlhf.data.sources import DataError, Located

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Fields:
    """Which keys of a record hold which part of a preference example."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    user: str = "user_id"
    group: str = "group"


@dataclass
class Example:
    """One tokenized preference triple; responses end with EOS."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    user: str | None
    group: str | None
    where: str
    prompt_text: str = ""


@dataclass
class SplitStats:
    """What happened to the records of one split."""

    read: int = 0
    kept: int = 0
    prompt_truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    missing_user: int = 0
    unseen_users: int = 0
    unseen_examples: int = 0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def summary(self, split: str) -> str:
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items())) or "none"
        line = (
            f"{split}: read {self.read}, kept {self.kept}, prompt truncated {self.prompt_truncated}, "
            f"dropped {sum(self.dropped.values())} ({dropped})"
        )
        if self.missing_user:
            line += f", {self.missing_user} without user id (served as the generic user)"
        if self.unseen_examples:
            line += f", {self.unseen_examples} examples of {self.unseen_users} users unseen in training"
        return line


@dataclass
class _Parsed:
    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages
    user: str | None
    group: str | None
    where: str


def _text_or_messages(record: dict[str, Any], key: str, where: str, allow_missing: bool = False) -> Any:
    if key not in record:
        if allow_missing:
            return None
        present = ", ".join(sorted(record)) or "none"
        raise DataError(where, f"missing field {key!r} (fields present: {present})")
    value = record[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        if not value:
            raise DataError(where, f"field {key!r} is an empty conversation (no messages)")
        return value
    raise DataError(
        where,
        f"field {key!r} must be a string or a list of {{role, content}} messages, got {type(value).__name__}",
    )


def _optional_id(record: dict[str, Any], key: str, where: str) -> str | None:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # an empty cell (CSV has no null) is a missing id, not a user named ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(where, f"field {key!r} must be a string or an integer, got {type(value).__name__}")
    return str(value)


def parse_record(located: Located, fields: Fields) -> _Parsed:
    """Extract the fields of one record, checking their types; raises :class:`DataError`."""
    record, where = located.record, located.where
    chosen = _text_or_messages(record, fields.chosen, where)
    rejected = _text_or_messages(record, fields.rejected, where)
    if type(chosen) is not type(rejected):
        raise DataError(
            where, f"{fields.chosen!r} and {fields.rejected!r} must both be text or both messages"
        )
    return _Parsed(
        prompt=_text_or_messages(record, fields.prompt, where),
        chosen=chosen,
        rejected=rejected,
        user=_optional_id(record, fields.user, where),
        group=_optional_id(record, fields.group, where),
        where=where,
    )


def parse_prompt_record(located: Located, fields: Fields) -> _Parsed:
    """Extract prompt, user and group of a record to generate for; raises :class:`DataError`."""
    record, where = located.record, located.where
    prompt = _text_or_messages(record, fields.prompt, where)
    user, group = _optional_id(record, fields.user, where), _optional_id(record, fields.group, where)
    return _Parsed(prompt, "", "", user, group, where)


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | Messages, where: str) -> str:
    """The prompt as the model sees it before a response (chat template for conversations)."""
    if isinstance(prompt, str):
        return prompt
    if tokenizer.chat_template is None:
        raise DataError(where, "conversational record, but the tokenizer has no chat template")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _is_empty(response: str | Messages) -> bool:
    if isinstance(response, str):
        return not response.strip()
    return not any(m["content"].strip() for m in response)


def render(
    tokenizer: PreTrainedTokenizerBase, prompt: str | Messages, response: str | Messages, where: str
) -> tuple[str, str]:
    """Prompt and response as text; conversations go through the tokenizer's chat template.

    A conversational response is rendered as the continuation of the rendered prompt, so the
    template's assistant header belongs to the prompt and its end-of-turn markup to the response.
    """
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt, response
    if tokenizer.chat_template is None:
        raise DataError(where, "conversational record, but the tokenizer has no chat template")
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    response_messages = (
        [{"role": "assistant", "content": response}] if isinstance(response, str) else response
    )
    prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt_messages + response_messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise DataError(
            where, "the chat template renders the prompt differently inside the full conversation"
        )
    response_text = full_text[len(prompt_text) :]
    # What a template writes after the end of the turn separates turns and belongs to no
    # response. Where the end of turn is the end-of-text token (SmolLM2, Qwen2) the response stops
    # there, as generation does: not "<|im_end|>\n" and a second end-of-text token after it.
    eos = tokenizer.eos_token
    if isinstance(eos, str) and eos and response_text.rstrip().endswith(eos):
        response_text = response_text.rstrip()
    return prompt_text, response_text


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], special: bool) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # The Rust tokenizer without offsets or attention masks: same ids, about 1.3x faster.
        # transformers leaves the last call's truncation/padding set on it: clear them.
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=special)]
    return tokenizer(list(texts), add_special_tokens=special, return_attention_mask=False)["input_ids"]


@dataclass
class EncodedChunk:
    """Triples encoded from consecutive records, and the running totals of the source so far."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    users: list[str | None]
    groups: list[str | None]
    wheres: list[str]
    stats: SplitStats
    read_users: dict[str, Counter]
    """Every user id read so far (records dropped later too), in order of first appearance, with
    the spellings it came in (``1`` and ``"1"`` are one user)."""


def encode_stream(
    records: Iterable[Located],
    tokenizer: PreTrainedTokenizerBase,
    fields: Fields,
    max_length: int,
    max_prompt_length: int,
    description: str = "tokenizing",
    chunk_size: int = 4096,
    limit: int | None = None,
    workers: int = 1,
) -> Iterator[EncodedChunk]:
    """Parse, render, tokenize and truncate records, ``chunk_size`` at a time (memory stays flat).

    Truncation keeps both responses whole and cuts the prompt from the left (its end is what the
    response follows), to at most ``max_prompt_length`` tokens and so that prompt plus the longer
    response fit in ``max_length``; a leading BOS token is kept. A triple whose longer response
    cannot fit with at least one prompt token is dropped and counted. ``limit``: read at most this
    many records. ``workers`` > 1: chunks are rendered and tokenized in that many processes (this
    one reads and checks the records), in order. At least one chunk is yielded (empty when there
    are no records); the last chunk's ``stats`` and ``read_users`` describe the whole input.
    """
    stats = SplitStats()
    read_users: dict[str, Counter] = {}
    encode = partial(_encode_chunk, max_length=max_length, max_prompt_length=max_prompt_length)
    pool = None
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # fork would copy a process with threads running
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(tokenizer,)
        )
    in_flight: deque[Future | EncodedChunk] = deque()
    progress = None  # shown from the second chunk on: small inputs print no bar

    def finished(result: Future | tuple[EncodedChunk, SplitStats]) -> EncodedChunk:
        nonlocal progress
        chunk, chunk_stats = result.result() if isinstance(result, Future) else result
        stats.kept += chunk_stats.kept
        stats.prompt_truncated += chunk_stats.prompt_truncated
        for reason, count in chunk_stats.dropped.items():
            stats.dropped[reason] = stats.dropped.get(reason, 0) + count
        chunk.stats, chunk.read_users = stats, read_users
        if in_flight or progress is not None:
            if progress is None:  # (a tqdm without total has no truth value)
                progress = tqdm(desc=description, unit="ex", mininterval=1.0)
            progress.update(len(chunk.prompts) + sum(chunk_stats.dropped.values()))
        return chunk

    def submit(items: list[_Parsed]) -> None:
        in_flight.append(
            pool.submit(_encode_in_worker, items, max_length, max_prompt_length)
            if pool
            else encode(items, tokenizer)
        )

    try:
        pending: list[_Parsed] = []
        for located in records:
            if limit is not None and stats.read >= limit:
                break
            stats.read += 1
            item = parse_record(located, fields)
            raw_user = located.record.get(fields.user)
            if item.user is not None:
                read_users.setdefault(item.user, Counter())[json.dumps(raw_user)] += 1
            if _is_empty(item.chosen) or _is_empty(item.rejected):
                stats.drop("empty response")
            elif item.chosen == item.rejected:
                stats.drop("chosen == rejected")
            else:
                pending.append(item)
            if len(pending) >= chunk_size:
                submit(pending)
                pending = []
                while len(in_flight) > 2 * max(workers, 1) - 1:
                    yield finished(in_flight.popleft())
        if pending or not in_flight:
            submit(pending)
        while in_flight:
            yield finished(in_flight.popleft())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if progress is not None:
            progress.close()


_worker_tokenizer: PreTrainedTokenizerBase | None = None


def _start_worker(tokenizer: PreTrainedTokenizerBase) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _worker_tokenizer = tokenizer


def _encode_in_worker(
    chunk: list[_Parsed], max_length: int, max_prompt_length: int
) -> tuple[EncodedChunk, SplitStats]:
    assert _worker_tokenizer is not None
    return _encode_chunk(chunk, _worker_tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)


def _encode_chunk(
    chunk: list[_Parsed],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int,
) -> tuple[EncodedChunk, SplitStats]:
    """One chunk's triples and what happened to its records (drops, kept, truncated)."""
    stats = SplitStats()
    out = EncodedChunk([], [], [], [], [], [], stats, {})
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    rendered = [
        (render(tokenizer, p.prompt, p.chosen, p.where), render(tokenizer, p.prompt, p.rejected, p.where))
        for p in chunk
    ]
    # A chat template writes its own special tokens; plain prompts get the tokenizer's (BOS).
    templated = [not isinstance(p.prompt, str) or not isinstance(p.chosen, str) for p in chunk]
    prompt_ids = _tokenize_prompts(tokenizer, [c[0] for c, _ in rendered], templated)
    chosen_ids = _tokenize(tokenizer, [c[1] for c, _ in rendered], False)
    rejected_ids = _tokenize(tokenizer, [r[1] for _, r in rendered], False)
    for item, prompt, chosen, rejected in zip(chunk, prompt_ids, chosen_ids, rejected_ids):
        chosen = _with_eos(chosen, eos)
        rejected = _with_eos(rejected, eos)
        if chosen == rejected:
            stats.drop("chosen == rejected")
            continue
        keep_bos = 1 if prompt and bos is not None and prompt[0] == bos else 0
        if len(prompt) <= keep_bos:
            stats.drop("empty prompt")
            continue
        budget = min(max_prompt_length, max_length - max(len(chosen), len(rejected)))
        if budget < keep_bos + 1:
            stats.drop("response too long for max_length")
            continue
        if len(prompt) > budget:
            prompt = prompt[:keep_bos] + prompt[len(prompt) - (budget - keep_bos) :]
            stats.prompt_truncated += 1
        out.prompts.append(prompt)
        out.chosen.append(chosen)
        out.rejected.append(rejected)
        out.users.append(item.user)
        out.groups.append(item.group)
        out.wheres.append(item.where)
    stats.kept = len(out.prompts)
    return out, stats


def encode_records(records: Iterable[Located], *args: Any, **kwargs: Any) -> tuple[list[Example], SplitStats]:
    """:func:`encode_stream` (same arguments) collected into :class:`Example` objects: for small
    inputs and tests."""
    examples: list[Example] = []
    stats = SplitStats()
    for chunk in encode_stream(records, *args, **kwargs):
        stats = chunk.stats
        for p, c, r, u, g, w in zip(
            chunk.prompts, chunk.chosen, chunk.rejected, chunk.users, chunk.groups, chunk.wheres
        ):
            examples.append(Example(p, c, r, u, g, w))
    return examples, stats


def encode_prompts(
    records: Iterable[Located],
    tokenizer: PreTrainedTokenizerBase,
    fields: Fields,
    max_prompt_length: int,
) -> tuple[list[Example], SplitStats]:
    """Prompts to generate for: tokenized, keeping their last ``max_prompt_length`` tokens."""
    stats = SplitStats()
    parsed = []
    for located in records:
        stats.read += 1
        parsed.append(parse_prompt_record(located, fields))
    texts = [render_prompt(tokenizer, p.prompt, p.where) for p in parsed]
    ids = _tokenize_prompts(tokenizer, texts, [not isinstance(p.prompt, str) for p in parsed])
    bos = tokenizer.bos_token_id
    examples = []
    for item, text, prompt in zip(parsed, texts, ids):
        keep_bos = 1 if prompt and bos is not None and prompt[0] == bos else 0
        if len(prompt) <= keep_bos:
            stats.drop("empty prompt")
            continue
        if len(prompt) > max_prompt_length:
            prompt = prompt[:keep_bos] + prompt[len(prompt) - (max_prompt_length - keep_bos) :]
            stats.prompt_truncated += 1
        examples.append(Example(prompt, [], [], item.user, item.group, item.where, prompt_text=text))
    stats.kept = len(examples)
    return examples, stats


def _tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], templated: list[bool]
) -> list[list[int]]:
    ids: list[list[int]] = [[] for _ in prompts]
    for special in (True, False):
        positions = [i for i, t in enumerate(templated) if t != special]
        if positions:
            encoded = _tokenize(tokenizer, [prompts[i] for i in positions], special)
            for i, e in zip(positions, encoded):
                ids[i] = e
    return ids


def _with_eos(ids: list[int], eos: int) -> list[int]:
    return ids if ids and ids[-1] == eos else [*ids, eos]
