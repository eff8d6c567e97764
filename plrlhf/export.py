"""Export a trained personalized model to a directory, and load it without Lightning.

The directory holds standard pieces that other tools read too::

    model/              the LM, transformers format (LoRA merged in), or
    adapter/ + base/    the peft adapter and, when the base was built from a config, its weights
    tokenizer/          the tokenizer
    user_model.safetensors, user_model.json   the user model's weights and how to rebuild it
    users.json          the user registry (raw user id -> index; unknown users are the generic user)
    plrlhf.json         what the files are and how they fit together
    README.md           a model card

:func:`load` returns a :class:`PersonalizedLM` that generates for a user and scores responses.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from plrlhf.data.registry import UserRegistry
from plrlhf.generation import generate
from plrlhf.io import atomic_directory
from plrlhf.policy import Policy, score_rows, tree_score
from plrlhf.specs import build
from plrlhf.tokenizer import load_tokenizer
from plrlhf.user_models import UserModel

FORMAT_VERSION = 1


def export(
    module: Any,
    directory: str | Path,
    registry: UserRegistry,
    merge_lora: bool = True,
) -> Path:
    """Write ``module`` (a plrlhf method) to ``directory``; returns the directory.

    Args:
        module: a trained :class:`plrlhf.PreferenceModule` (DPO or a P-DPO method).
        directory: where to write; created if missing.
        registry: the user registry of the training data (``datamodule.registry``).
        merge_lora: merge LoRA adapters into the weights (one plain model directory); otherwise
            save the peft adapter, and the base weights when the base was built from a config.
    """
    # Written whole into a directory beside the target, which then takes its place: a reader
    # never finds half an export, and a failed export leaves the previous one.
    with atomic_directory(directory) as out:
        _write_export(module, out, registry, merge_lora)
    return Path(directory)


def _write_export(module: Any, out: Path, registry: UserRegistry, merge_lora: bool) -> None:
    policy: Policy = module.policy
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "method": f"{type(module).__module__}.{type(module).__qualname__}",
        "user_tokens": module.user_tokens,
        "num_users": len(registry),
    }
    if policy.value_head is not None and policy.uses_lora and not merge_lora:
        raise ValueError("a reward model is exported merged (merge_lora=True): its head and LM as one model")
    if policy.uses_lora and not merge_lora:
        policy.lm.save_pretrained(out / "adapter")
        source = module.hparams.get("model")
        if isinstance(source, str):
            manifest["base"] = source
        else:
            _base_weights(policy).save_pretrained(out / "base")
            manifest["base"] = "base"
        manifest["adapter"] = "adapter"
    else:
        # Merge into a copy: the module stays usable (and trainable) after export.
        model = copy.deepcopy(policy.lm).merge_and_unload() if policy.uses_lora else policy.lm
        if policy.value_head is not None:
            model = _sequence_classifier(model, policy.value_head, policy.value_skip_token)
            manifest["head"] = "reward"
        model.save_pretrained(out / "model")
        manifest["model"] = "model"
    load_tokenizer(module.tokenizer_path).save_pretrained(out / "tokenizer")
    registry.save(out / "users.json")
    user_model = getattr(module, "user_model", None)
    if user_model is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in user_model.state_dict().items()},
            out / "user_model.safetensors",
        )
        (out / "user_model.json").write_text(json.dumps(user_model_spec(user_model), indent=1))
        manifest["user_model"] = "user_model.json"
    (out / "plrlhf.json").write_text(json.dumps(manifest, indent=1))
    (out / "README.md").write_text(_card(manifest, registry))


def _sequence_classifier(
    model: PreTrainedModel, head: nn.Linear, pad_token_id: int | None
) -> PreTrainedModel:
    """The LM's decoder with the reward head as transformers' ``*ForSequenceClassification``
    (one label): ``AutoModelForSequenceClassification.from_pretrained`` reads it as it is."""
    config = copy.deepcopy(model.config)
    config.num_labels = 1
    config.pad_token_id = pad_token_id
    config.architectures = None
    classifier = AutoModelForSequenceClassification.from_config(config)
    missing, _ = classifier.load_state_dict(model.state_dict(), strict=False)  # the LM head is left out
    if not isinstance(getattr(classifier, "score", None), nn.Linear) or set(missing) != {"score.weight"}:
        raise TypeError(f"{type(classifier).__name__} does not hold a decoder plus a 'score' head")
    with torch.no_grad():
        classifier.score.weight.copy_(head.weight)
    return classifier.to(model.dtype)


def _base_weights(policy: Policy) -> PreTrainedModel:
    """The base model of a LoRA policy with the adapters stripped (a copy)."""
    return copy.deepcopy(policy.lm).unload()


def user_model_spec(user_model: UserModel) -> dict[str, Any]:
    """How to rebuild a user model: its class and the arguments it was built with."""
    cls = type(user_model)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": user_model.init_args}


def build_user_model(spec: Any, where: str = "user_model.json") -> UserModel:
    """The user model a spec describes; only :class:`UserModel` subclasses are built, and no
    module is imported on the file's say (see :func:`plrlhf.specs.resolve_class`)."""
    return build(spec, UserModel, where)


def load_user_model_weights(user_model: UserModel, directory: str | Path) -> UserRegistry:
    """Copy an export's user model weights into ``user_model`` (e.g. P-DPO starting from a
    user-conditioned SFT stage); returns the export's user registry, which the caller must match
    to its own (the same index must mean the same user). Plain JSON and safetensors only: the
    export's class path is compared as text, never imported."""
    root = Path(directory)
    spec_path = root / "user_model.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{root}: no user_model.json (an export of a method with a user model?)")
    spec = json.loads(spec_path.read_text())
    # JSON's view of our own spec: tuples become lists, as in the file
    ours = json.loads(json.dumps(user_model_spec(user_model)))
    if spec != ours:
        raise ValueError(
            f"{spec_path}: the exported user model is {spec}, this run builds {ours}; "
            "they must be the same class with the same arguments"
        )
    try:
        user_model.load_state_dict(load_file(root / "user_model.safetensors"))
    except RuntimeError as error:
        raise ValueError(f"{root / 'user_model.safetensors'}: does not fit the user model: {error}") from None
    return UserRegistry.load(root / "users.json")


@dataclass
class PersonalizedLM:
    """A personalized model outside the training stack: LM, tokenizer, user model, registry."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    registry: UserRegistry
    user_model: UserModel | None = None
    user_tokens: str = "before_prompt"
    value_head: nn.Module | None = None
    """A reward model's head, when ``model`` is the bare causal LM (from a checkpoint)."""

    def user_indices(self, users: list[Any]) -> Tensor:
        """Model indices of raw user ids; users not seen in training get the generic user 0."""
        return torch.tensor([self.registry.index(u) for u in users], dtype=torch.long, device=self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def soft_tokens(self, user_ids: Tensor) -> Tensor | None:
        return None if self.user_model is None else self.user_model(user_ids)

    @torch.no_grad()
    def generate(self, prompts: list[str], users: list[Any], **settings: Any) -> list[str]:
        """A response to each prompt, written for its user (greedy by default)."""
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(
            self.device
        )
        eos = self.tokenizer.eos_token_id
        # A model built from a config knows no EOS of its own: stop there, as predict does.
        settings = {"max_new_tokens": 128, "do_sample": False, "eos_token_id": eos, **settings}
        tokens = generate(
            self.model,
            encoded["input_ids"],
            encoded["attention_mask"],
            soft_tokens=self.soft_tokens(self.user_indices(users)),
            user_tokens=self.user_tokens,
            **settings,
        )
        # Up to the first EOS: what follows it is padding (or, without a stop, text after the end).
        rows = [ids[: ids.index(eos)] if eos in ids else ids for ids in tokens.tolist()]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], users: list[Any]) -> Tensor:
        """Summed log-probability of each response (EOS appended) given its prompt and user."""
        if self.reward_head is not None:
            raise TypeError("this is a reward model: use reward()")
        return self._score_rows(prompts, responses, users)

    @torch.no_grad()
    def reward(self, prompts: list[str], responses: list[str], users: list[Any]) -> Tensor:
        """The reward of each response (EOS appended) to its prompt, for its user: the value head
        at the last token that is not padding, as in training."""
        if self.reward_head is None:
            raise TypeError("this is a language model, not a reward model: use score()")
        return self._score_rows(prompts, responses, users)

    @property
    def reward_head(self) -> nn.Module | None:
        if self.value_head is not None:
            return self.value_head
        head = getattr(self.model, "score", None)
        return head if isinstance(head, nn.Linear) else None

    def _score_rows(self, prompts: list[str], responses: list[str], users: list[Any]) -> Tensor:
        eos = self.tokenizer.eos_token_id
        prompt_ids = self.tokenizer(prompts)["input_ids"]
        response_ids = [
            ids + [eos] for ids in self.tokenizer(responses, add_special_tokens=False)["input_ids"]
        ]
        soft = self.soft_tokens(self.user_indices(users))
        pad = self.tokenizer.pad_token_id
        head = self.reward_head
        if soft is not None and self.user_tokens == "after_prompt":
            ids, segments, column = _prompt_soft_response_rows(prompt_ids, response_ids, soft.shape[1], pad)
            # [prompt | user tokens | response] as a tree of three segments (policy.tree_logps)
            sums, _ = tree_score(
                self.model,
                ids.to(self.device),
                segments.to(self.device),
                (-1, 0, 1),
                (2,),
                soft,
                soft_column=column,
                value_head=head,
                skip_token=pad if head is not None else None,
            )
            return sums[:, 0]
        rows = [p + r for p, r in zip(prompt_ids, response_ids)]
        width = max(map(len, rows))
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=self.device)
        resp = torch.tensor(
            [
                [0] * len(p) + [1] * len(r) + [0] * (width - len(p) - len(r))
                for p, r in zip(prompt_ids, response_ids)
            ],
            dtype=torch.bool,
            device=self.device,
        )
        if head is not None:
            resp = resp & (ids != pad)
        sums, _ = score_rows(self.model, ids, mask, resp, soft_tokens=soft, value_head=head)
        return sums


def _prompt_soft_response_rows(
    prompt_ids: list[list[int]], response_ids: list[list[int]], n_soft: int, pad: int
) -> tuple[Tensor, Tensor, int]:
    """Rows ``[left-padded prompt | n_soft slots | response, right-padded]`` with segment ids
    (prompt 0, slots 1, response 2, padding -1) and the slots' column."""
    width_prompt = max(map(len, prompt_ids))
    width_response = max(map(len, response_ids))
    ids, segments = [], []
    for p, r in zip(prompt_ids, response_ids):
        left, right = width_prompt - len(p), width_response - len(r)
        ids.append([pad] * left + p + [pad] * n_soft + r + [pad] * right)
        segments.append([-1] * left + [0] * len(p) + [1] * n_soft + [2] * len(r) + [-1] * right)
    return torch.tensor(ids), torch.tensor(segments), width_prompt


def load(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> PersonalizedLM:
    """Load an exported model for generation and scoring (no Trainer, no checkpoint)."""
    root = Path(directory)
    manifest = json.loads((root / "plrlhf.json").read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{root}: export format {manifest.get('format')}, this plrlhf reads {FORMAT_VERSION}"
        )
    if "model" in manifest:
        auto = (
            AutoModelForSequenceClassification if manifest.get("head") == "reward" else AutoModelForCausalLM
        )
        model = auto.from_pretrained(root / manifest["model"], dtype=dtype)
    else:
        base = manifest["base"]
        base_path = root / base if (root / base).is_dir() else Path(base)
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype), root / manifest["adapter"]
        ).merge_and_unload()
    tokenizer = load_tokenizer(str(root / "tokenizer"))
    user_model = None
    if "user_model" in manifest:
        spec_path = root / manifest["user_model"]
        user_model = build_user_model(json.loads(spec_path.read_text()), str(spec_path))
        user_model.load_state_dict(load_file(root / "user_model.safetensors"))
    model = model.to(device).eval()
    if user_model is not None:
        user_model = user_model.to(device).eval()
    return PersonalizedLM(
        model,
        tokenizer,
        UserRegistry.load(root / "users.json"),
        user_model,
        manifest.get("user_tokens", "before_prompt"),
    )


def open_model(path: str | Path, device: str = "cpu", trust_checkpoint: bool = False) -> PersonalizedLM:
    """A model to generate or score with: an export directory, or a ``plrlhf fit`` checkpoint (read
    as plain data; ``trust_checkpoint`` for legacy pickled ones, yours only)."""
    root = Path(path)
    if (root / "plrlhf.json").is_file():
        return load(root, device=device)
    from plrlhf.adapt import load_checkpoint  # adapt imports this module

    method, registry, _ = load_checkpoint(root, trust_checkpoint)
    method = method.to(device).eval()
    return PersonalizedLM(
        method.policy.hf_model,
        load_tokenizer(method.tokenizer_path),
        registry,
        method.user_model,
        method.user_tokens,
        method.policy.value_head,
    )


def _card(manifest: dict[str, Any], registry: UserRegistry) -> str:
    return f"""# Personalized language model (plrlhf)

Trained with `{manifest["method"]}` ({manifest["num_users"]} users seen in training; everyone else
is served by the generic user). User tokens sit {manifest["user_tokens"].replace("_", " ")}.

```python
import plrlhf.export as export
lm = export.load("{"<this directory>"}")
lm.generate(["Summarize the note. ..."], users=["{registry.users[0] if registry.users else "alice"}"])
```

Files: `plrlhf.json` (manifest), `users.json` (user registry), `user_model.*` (user model),
`tokenizer/`, and the LM as `model/` (transformers) or `adapter/` (peft) over `base/`.
"""
