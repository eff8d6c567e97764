"""Judges: which of two responses to a prompt serves a user better (``plrlhf evaluate``).

A judge returns, for each :class:`Comparison`, 1.0 when the first response wins, 0.0 when the
second does and 0.5 for a tie. Judges are chosen by class path; a judge that may favour a position
(an LLM asked "A or B?") sets ``position_sensitive`` and is asked in both orders.

- :class:`LengthJudge`: longer or shorter, per user or group (the paper's synthetic users);
- :class:`RegexJudge`: more matches of a pattern (keywords, a format), per user or group;
- :class:`CallableJudge`: any Python function ``f(comparison) -> float``;
- :class:`RewardModelJudge`: a reward model directory: a plrlhf export (personalized: it scores
  for the user) or any transformers ``AutoModelForSequenceClassification`` as it is;
- :class:`LMJudge`: a local causal LM prompted with a per-user rubric (the paper's LLM judge).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch


@dataclass(frozen=True)
class Comparison:
    """Two responses to one prompt, for one user (and the user's group, when known)."""

    user: str | None
    group: str | None
    prompt: str
    first: str
    second: str


class Judge:
    """Compares pairs of responses; subclasses define :meth:`compare`."""

    position_sensitive: bool = False
    """Ask in both orders and average (for judges that may prefer a position)."""

    def compare(self, items: list[Comparison]) -> list[float]:
        raise NotImplementedError

    def __call__(self, items: list[Comparison]) -> list[float]:
        """The first response's score against the second, in both orders when position-sensitive."""
        forward = self.compare(items)
        if not self.position_sensitive:
            return forward
        swapped = self.compare([Comparison(c.user, c.group, c.prompt, c.second, c.first) for c in items])
        return [(a + 1.0 - b) / 2 for a, b in zip(forward, swapped)]


def _per_user(
    item: Comparison, default: Any, by_user: dict[str, Any] | None, by_group: dict[str, Any] | None
) -> Any:
    """A setting for this comparison's user: by user id, else by group, else the default."""
    if by_user and item.user is not None and item.user in by_user:
        return by_user[item.user]
    if by_group and item.group is not None and item.group in by_group:
        return by_group[item.group]
    return default


def _from_scores(first: float, second: float, tie: float = 0.0) -> float:
    if abs(first - second) <= tie:
        return 0.5
    return 1.0 if first > second else 0.0


class LengthJudge(Judge):
    """Prefers the longer (or shorter) response, in characters."""

    def __init__(
        self,
        prefer: Literal["longer", "shorter"] = "longer",
        by_user: dict[str, Literal["longer", "shorter"]] | None = None,
        by_group: dict[str, Literal["longer", "shorter"]] | None = None,
        tie_characters: int = 0,
    ) -> None:
        """
        Args:
            prefer: what users prefer unless ``by_user``/``by_group`` say otherwise.
            by_user: preference per user id.
            by_group: preference per group label (e.g. ``{majority: longer, minority: shorter}``).
            tie_characters: lengths this close are a tie.
        """
        self.prefer, self.by_user, self.by_group, self.tie = prefer, by_user, by_group, tie_characters

    def compare(self, items: list[Comparison]) -> list[float]:
        results = []
        for item in items:
            sign = 1 if _per_user(item, self.prefer, self.by_user, self.by_group) == "longer" else -1
            results.append(_from_scores(sign * len(item.first), sign * len(item.second), self.tie))
        return results


class RegexJudge(Judge):
    """Prefers the response with more matches of a pattern (or fewer, with ``prefer_matches:
    false``): keywords, a format, a language."""

    def __init__(
        self,
        pattern: str,
        by_user: dict[str, str] | None = None,
        by_group: dict[str, str] | None = None,
        prefer_matches: bool = True,
        ignore_case: bool = True,
    ) -> None:
        """
        Args:
            pattern: a regular expression (Python syntax).
            by_user: a pattern per user id instead of ``pattern``.
            by_group: a pattern per group label.
            prefer_matches: more matches win (false: fewer win).
            ignore_case: match regardless of case.
        """
        flags = re.IGNORECASE if ignore_case else 0
        self.pattern = re.compile(pattern, flags)
        self.by_user = {k: re.compile(v, flags) for k, v in (by_user or {}).items()}
        self.by_group = {k: re.compile(v, flags) for k, v in (by_group or {}).items()}
        self.sign = 1 if prefer_matches else -1

    def compare(self, items: list[Comparison]) -> list[float]:
        results = []
        for item in items:
            pattern = _per_user(item, self.pattern, self.by_user, self.by_group)
            first, second = (len(pattern.findall(text)) for text in (item.first, item.second))
            results.append(_from_scores(self.sign * first, self.sign * second))
        return results


class CallableJudge(Judge):
    """Any Python function ``f(comparison: Comparison) -> float`` (1 first wins, 0 second, 0.5
    tie), by import path. Like a config, this runs the code it names: use your own."""

    def __init__(self, function: str, position_sensitive: bool = False) -> None:
        """
        Args:
            function: ``package.module.function``.
            position_sensitive: ask in both orders and average.
        """
        module, _, name = function.rpartition(".")
        if not module:
            raise ValueError(
                f"function must be an import path like 'mypackage.judging.prefer', got {function!r}"
            )
        self.function = getattr(importlib.import_module(module), name)
        self.position_sensitive = position_sensitive

    def compare(self, items: list[Comparison]) -> list[float]:
        return [float(self.function(item)) for item in items]


class RewardModelJudge(Judge):
    """The response with the higher reward wins: a plrlhf reward model export scores for the user
    (the generic user for users it did not train on); any transformers sequence-classification
    reward model scores ``prompt + response`` as it is."""

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        tie: float = 0.0,
    ) -> None:
        """
        Args:
            model: a ``plrlhf`` reward model (export directory or ``plrlhf fit`` checkpoint), or
                a transformers ``AutoModelForSequenceClassification`` directory.
            tokenizer: the transformers model's tokenizer directory (default: ``model``).
            device: where it runs.
            batch_size: responses per forward.
            tie: rewards this close are a tie.
        """
        self.batch_size, self.tie, self.source = batch_size, tie, model
        root = Path(model)
        if (root / "plrlhf.json").is_file() or root.is_file():
            from plrlhf.export import open_model

            self.personalized = open_model(str(root), device)
            if self.personalized.reward_head is None:
                raise ValueError(f"{root} is a language model, not a reward model")
        else:
            from transformers import AutoModelForSequenceClassification

            from plrlhf.tokenizer import load_tokenizer

            self.personalized = None
            self.model = AutoModelForSequenceClassification.from_pretrained(root).to(device).eval()
            self.tokenizer = load_tokenizer(tokenizer or str(root))

    @torch.no_grad()
    def rewards(self, prompts: list[str], responses: list[str], users: list[str | None]) -> list[float]:
        values: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            part = slice(start, start + self.batch_size)
            if self.personalized is not None:
                values += self.personalized.reward(prompts[part], responses[part], users[part]).tolist()
            else:
                texts = [p + r for p, r in zip(prompts[part], responses[part])]
                encoded = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.model.device)
                values += self.model(**encoded).logits[:, 0].float().tolist()
        return values

    def compare(self, items: list[Comparison]) -> list[float]:
        prompts = [c.prompt for c in items] * 2
        users = [c.user for c in items] * 2
        values = self.rewards(prompts, [c.first for c in items] + [c.second for c in items], users)
        first, second = values[: len(items)], values[len(items) :]
        return [_from_scores(a, b, self.tie) for a, b in zip(first, second)]


DEFAULT_RUBRIC = (
    "You compare two responses to the same request for a reader who wants: {criteria}\n\n"
    "Request:\n{prompt}\n\nResponse A:\n{first}\n\nResponse B:\n{second}\n\n"
    "Which response does this reader prefer? Answer with one letter, A or B.\nAnswer:"
)


class LMJudge(Judge):
    """A local causal LM asked which response a user prefers, given the user's criteria: the
    probabilities of the answers " A" and " B" decide (asked in both orders)."""

    position_sensitive = True

    def __init__(
        self,
        model: str,
        criteria: str = "a helpful, correct and clear answer",
        by_user: dict[str, str] | None = None,
        by_group: dict[str, str] | None = None,
        template: str = DEFAULT_RUBRIC,
        chat: bool = True,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        """
        Args:
            model: a local causal LM directory (with its tokenizer).
            criteria: what users want, unless ``by_user``/``by_group`` say otherwise.
            by_user: criteria per user id (e.g. ``{alice: "concise answers"}``).
            by_group: criteria per group label.
            template: the judge's prompt, with ``{criteria}``, ``{prompt}``, ``{first}``,
                ``{second}``.
            chat: wrap the prompt in the tokenizer's chat template when it has one.
            device: where it runs.
            batch_size: comparisons per forward.
        """
        from transformers import AutoModelForCausalLM

        from plrlhf.tokenizer import load_tokenizer

        self.source = model
        self.model = AutoModelForCausalLM.from_pretrained(model).to(device).eval()
        self.tokenizer = load_tokenizer(model)
        self.criteria, self.by_user, self.by_group = criteria, by_user, by_group
        self.template, self.chat, self.batch_size = template, chat, batch_size
        self.answers = [self.tokenizer(a, add_special_tokens=False)["input_ids"][-1] for a in (" A", " B")]

    def prompt_for(self, item: Comparison) -> str:
        criteria = _per_user(item, self.criteria, self.by_user, self.by_group)
        text = self.template.format(
            criteria=criteria, prompt=item.prompt, first=item.first, second=item.second
        )
        if self.chat and self.tokenizer.chat_template is not None:
            messages = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text

    @torch.no_grad()
    def compare(self, items: list[Comparison]) -> list[float]:
        results: list[float] = []
        for start in range(0, len(items), self.batch_size):
            texts = [self.prompt_for(c) for c in items[start : start + self.batch_size]]
            encoded = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
            logits = self.model(**encoded.to(self.model.device)).logits[:, -1].float()
            pair = logits[:, self.answers].softmax(-1)
            results += pair[:, 0].tolist()  # P(A) among {A, B}: 1 = the first response wins
        return results


def describe(judge: Judge) -> dict[str, Any]:
    """What a report records about its judge."""
    return {
        "class": f"{type(judge).__module__}.{type(judge).__qualname__}",
        "both_orders": judge.position_sensitive,
    }
