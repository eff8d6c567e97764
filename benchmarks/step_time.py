"""Training-step time of plrlhf's methods on one shape, variants interleaved, medians reported.

    python benchmarks/step_time.py [--steps 20] [--prompt 200] [--response 30] [--batch 8]

A tiny Llama from config (4 layers, hidden 256, vocabulary 8k: the shape of
../shared/docs/performance-notes.md), random token data, fp32 on CPU. Each step is a full
forward + backward + AdamW step of `PreferenceModule._values` (the training objective), timed
with the reference forward on and with it precomputed (a table lookup). Run with the allocator
settings used for the recorded numbers:

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/step_time.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from plrlhf import DPO, IndividualPDPO

ROOT = Path(__file__).resolve().parents[1]
MODEL = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 8192,
    "max_position_embeddings": 1024,
}


def make_batch(batch: int, prompt: int, response: int) -> dict[str, torch.Tensor]:
    width = prompt + response
    ids = torch.randint(1, 8000, (2 * batch, width))
    mask = torch.ones_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, prompt:] = True
    zeros = torch.zeros(batch, dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "response_mask": resp,
        "user_ids": zeros + 1,
        "user_keys": zeros + 1,
        "group_keys": zeros,
        "index": torch.arange(batch),
    }


def build(method, precomputed: bool, batch: dict[str, torch.Tensor]):
    torch.manual_seed(0)
    module = method(model=MODEL, tokenizer=str(ROOT / "data/tokenizer"), num_users=4)
    module.train()
    if precomputed:
        chosen, rejected = module._reference_forward(batch)
        module.reference_table = torch.stack([chosen, rejected], -1)
    optimizer = torch.optim.AdamW([p for g in module.param_groups() for p in g["params"]], lr=1e-5)
    return module, optimizer


def step(module, optimizer, batch) -> float:
    start = time.perf_counter()
    objective, _ = module._values(batch)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=200)
    parser.add_argument("--response", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = make_batch(args.batch, args.prompt, args.response)
    variants = {
        (name, pre): build(method, pre, batch)
        for name, method in (("DPO", DPO), ("IndividualPDPO", IndividualPDPO))
        for pre in (False, True)
    }
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in variants}
    for i in range(args.warmup + args.steps):  # interleaved: machine noise hits every variant alike
        for key, (module, optimizer) in variants.items():
            elapsed = step(module, optimizer, batch)
            if i >= args.warmup:
                times[key].append(elapsed)
    base = statistics.median(times[("DPO", False)])
    print(
        f"{args.batch} pairs/step, prompt {args.prompt}, response {args.response}, "
        f"{torch.get_num_threads()} threads, median of {args.steps} interleaved steps"
    )
    print("| method | reference | ms/step | pairs/s | vs DPO (reference forward) |")
    print("|---|---|---|---|---|")
    for (name, pre), values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {'precomputed' if pre else 'forward each step'} | {median * 1000:.0f} | "
            f"{args.batch / median:.1f} | {median / base:.2f} |"
        )


if __name__ == "__main__":
    main()
