"""Shared fixtures: the bundled tokenizer, tiny models from config, small data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "data" / "tokenizer")
SYNTHETIC = ROOT / "data" / "synthetic"

TINY_MODELS = {
    "llama": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    },
    "gpt2": {
        "model_type": "gpt2",
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 512,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    },
    "gpt_neox": {
        "model_type": "gpt_neox",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
    },
}


@pytest.fixture(autouse=True, scope="session")
def _encoded_cache(tmp_path_factory):
    """Encoded splits of the tests go to a directory of this session, not the user's cache."""
    import os

    directory = tmp_path_factory.mktemp("encoded-cache")
    previous = os.environ.get("PLRLHF_CACHE")
    os.environ["PLRLHF_CACHE"] = str(directory)
    yield directory
    if previous is None:
        del os.environ["PLRLHF_CACHE"]
    else:
        os.environ["PLRLHF_CACHE"] = previous


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def tokenizer_path() -> str:
    return TOKENIZER


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def triple(
    user="a",
    prompt="Summarize the note.\nNote: Ana baked bread.\nSummary:",
    chosen=" Ana baked bread.",
    rejected=" Ana baked bread at the market on Monday.",
    group=None,
) -> dict:
    row = {"user_id": user, "prompt": prompt, "chosen": chosen, "rejected": rejected}
    if group is not None:
        row["group"] = group
    return row


def synthetic_rows(split: str, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (SYNTHETIC / f"{split}.jsonl").read_text().splitlines()]
    return rows if n is None else rows[:n]


def quiet_trainer(root, **kwargs):
    """A CPU Trainer without logger, checkpoints or progress output."""
    from lightning.pytorch import Trainer

    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        accelerator="cpu",
    )
    return Trainer(**{**defaults, **kwargs})


def fit_args(method: str, train, test, steps: int, *extra: str) -> list[str]:
    """``plrlhf fit`` of a shipped method config on the tiny Llama and the CPU preset, with these
    files (no validation) and ``steps`` optimizer steps."""
    configs = ROOT / "configs"
    files = ("trainer/cpu.yaml", "data/synthetic.yaml", f"method/{method}.yaml", "model/tiny-llama.yaml")
    return [
        "fit",
        *(a for f in files for a in ("--config", str(configs / f))),
        *("--data.init_args.train", str(train), "--data.init_args.validation", "null"),
        *("--data.init_args.test", str(test), "--trainer.max_steps", str(steps)),
        *extra,
    ]


def file_order_batch(dm, split: str, n: int | None = None) -> dict:
    """The first ``n`` items of ``split`` (all by default) as one batch, in file order: the data
    module's loaders hand evaluation batches over narrowest first."""
    data = dm.datasets[split]
    return dm._collator(split)([data[i] for i in range(len(data) if n is None else n)])
