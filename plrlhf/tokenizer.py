"""Loading a tokenizer the same way wherever the project needs one (data and methods alike)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase


@lru_cache(maxsize=8)
def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory; give it a pad token if it has none.

    Many causal-LM tokenizers (GPT-2, Llama) define no pad token. Padding positions are always
    masked out, so the EOS token serves as pad; the data and the model must agree, which is why both
    load through this function.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {path!r} not found; plrlhf never downloads at run time: "
            "give a local directory (data/make_tokenizer.py builds the bundled one)"
        )
    files = {p.name for p in Path(path).iterdir()}
    if not files & {"tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt"}:
        raise FileNotFoundError(
            f"tokenizer directory {path!r} holds no tokenizer files (tokenizer.json, tokenizer_config.json, "
            f"...): found {sorted(files)[:8] or 'nothing'}"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer at {path!r} has no EOS token; responses must end with one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
