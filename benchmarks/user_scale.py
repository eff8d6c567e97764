"""User models at 1k, 100k and 1M users: memory per user and training step time.

    python benchmarks/user_scale.py [--users 1000 100000 1000000] [--steps 30] [--rounds 2]

Trains P-DPO (tiny Llama, hidden 64, the synthetic task's triples with user ids drawn uniformly from
1..N) with Lightning for a few steps per configuration; configurations are interleaved in rounds so
that the machine's noise falls on all of them alike. Step time is the median of the steps after the
first 10 (Lightning's ``on_train_batch_start`` to ``on_train_batch_end``: forward, backward, both
optimizers). Memory per user: the per-user table and its optimizer state, divided by N (shared
parameters are reported apart).

Configurations: low-rank r = 16 with sparse rows (SparseAdam on the rows of the batch), low-rank
r = 16 dense (AdamW over the whole table), and the individual model (T_u x d per user, dense).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader

from plrlhf import PDPO, IndividualUserModel, LowRankUserModel
from plrlhf.data.collate import EncodedTriple, PreferenceCollator
from plrlhf.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODEL = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
CONFIGS = {
    "low-rank r16 sparse": functools.partial(LowRankUserModel, n_tokens=10, rank=16, sparse=True),
    "low-rank r16 dense": functools.partial(LowRankUserModel, n_tokens=10, rank=16, sparse=False),
    "individual (T_u x d)": functools.partial(IndividualUserModel, n_tokens=10),
}


class StepTimer(Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def triples(n_users: int, count: int, seed: int) -> list[EncodedTriple]:
    tokenizer = load_tokenizer(str(ROOT / "data/tokenizer"))
    rows = [json.loads(line) for line in (ROOT / "data/synthetic/train.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(rows[:count]):
        prompt = tokenizer(row["prompt"])["input_ids"][-100:]
        eos = [tokenizer.eos_token_id]
        chosen = tokenizer(row["chosen"], add_special_tokens=False)["input_ids"][:50] + eos
        rejected = tokenizer(row["rejected"], add_special_tokens=False)["input_ids"][:50] + eos
        out.append(EncodedTriple(prompt, chosen, rejected, rng.randint(1, n_users), 0, 0, index=i))
    return out


def per_user_bytes(method: PDPO, trainer: Trainer, n_users: int) -> tuple[float, float]:
    """(bytes per user of per-user tables + their optimizer state, bytes of shared user-model params)."""
    tables = {id(t.weight): t.weight for t in method.user_model.per_user_tables().values()}
    table_bytes = sum(w.numel() * w.element_size() for w in tables.values())
    optimizers = list(trainer.optimizers) + ([method.row_optimizer] if method.row_optimizer else [])
    state_bytes = 0
    for optimizer in optimizers:
        for param, state in optimizer.state.items():
            if id(param) in tables:
                state_bytes += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    shared = sum(p.numel() * p.element_size() for p in method.user_model.parameters() if id(p) not in tables)
    return (table_bytes + state_bytes) / n_users, shared


def run(name: str, n_users: int, steps: int, data: list[EncodedTriple]) -> dict[str, float]:
    seed_everything(0)
    method = PDPO(
        model=MODEL,
        tokenizer=str(ROOT / "data/tokenizer"),
        num_users=n_users,
        user_model=CONFIGS[name],
        user_model_lr=0.01,
        precompute_reference=False,
    )
    timer = StepTimer()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = DataLoader(data, batch_size=8, shuffle=True, collate_fn=PreferenceCollator(0))
    trainer.fit(method, loader)
    per_user, shared = per_user_bytes(method, trainer, n_users)
    return {
        "step_s": statistics.median(timer.seconds[10:]),
        "bytes_per_user": per_user,
        "shared_bytes": shared,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for name in args.configs:
            for n in args.users:
                data = triples(n, 240, seed=n)
                results.setdefault((name, n), []).append(run(name, n, args.steps, data))
                print(name, n, results[(name, n)][-1], flush=True)
    print(
        "\n| user model | users | per user: table + optimizer state | shared | step time (median) | vs 1k |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.configs:
        base = statistics.median(r["step_s"] for r in results[(name, args.users[0])])
        for n in args.users:
            rs = results[(name, n)]
            step = statistics.median(r["step_s"] for r in rs)
            shared_kib = rs[0]["shared_bytes"] / 1024
            print(
                f"| {name} | {n:,} | {rs[0]['bytes_per_user']:.0f} B | {shared_kib:.0f} KiB "
                f"| {step * 1000:.1f} ms | {step / base:.2f}x |"
            )


if __name__ == "__main__":
    main()
