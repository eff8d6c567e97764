"""Large vocabularies: peak memory and step time of the response log-probs, chunked or not.

    python benchmarks/large_vocab.py [--vocab 32768 131072 262144] [--steps 4]

A DPO step (forward, backward, AdamW) of a tiny Llama built from config (2 layers, hidden 256) on
the prompt-heavy shape (8 pairs, prompt 200 and responses 30 tokens: 480 response tokens) at each
vocabulary size, in its own process (peak RSS is per process): plrlhf's chunked LM head against
the same step with the head applied to all response positions at once (what plrlhf did before:
``B x T_response x V`` float32 logits plus their softmax for backward), both again with LoRA
adapters (r 8 on every linear layer; the head frozen, as with real models), and TRL's DPOTrainer on
the same model, shape and steps (``pip install -e ".[bench]"``; with and without its precomputed
reference: it computes the logits of every position, then their log-softmax).

    python benchmarks/large_vocab.py --modes all-at-once chunked trl trl-precompute
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


MODES = ["all-at-once", "chunked", "lora-all-at-once", "lora-chunked", "trl", "trl-precompute"]
MODEL = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def trl_worker(vocab: int, precompute: bool, steps: int) -> dict:
    """TRL's step on the same model and shape (vs_trl's TRL run, with this model)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import vs_trl

    torch.set_num_threads(2)
    vs_trl.MODEL = {**MODEL, "vocab_size": vocab}
    vs_trl.MODEL_DIR = Path(f"/tmp/plrlhf-bench/large-vocab-{vocab}")
    times = vs_trl.run_trl("prompt-heavy", steps, 1, precompute)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": statistics.median(times) * 1000, "peak_mib": peak}


def worker(vocab: int, chunked: bool, steps: int, lora: bool) -> dict:
    import torch
    from peft import LoraConfig

    import plrlhf.logprobs as logprobs
    from plrlhf import DPO

    torch.manual_seed(0)
    torch.set_num_threads(2)
    if not chunked:
        logprobs.CHUNK_ELEMENTS = 1 << 62  # one chunk: all response positions at once
    adapters = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear") if lora else None
    method = DPO(
        model={**MODEL, "vocab_size": vocab},
        lora=adapters,
        tokenizer=str(ROOT / "data/tokenizer"),
        shared_prompt=True,
    )
    prompt, response, pairs = 200, 30, 8
    width = prompt + response
    ids = torch.randint(0, vocab, (2 * pairs, width))
    mask = torch.ones_like(ids)
    response_mask = torch.zeros_like(ids, dtype=torch.bool)
    response_mask[:, prompt:] = True
    batch = {"input_ids": ids, "attention_mask": mask, "response_mask": response_mask}
    optimizer = torch.optim.AdamW([p for g in method.param_groups() for p in g["params"]], lr=1e-4)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        chosen, rejected, _, _ = method.policy.pair_logps(
            ids, mask, response_mask, 0, layout="shared_prompt"
        )[0]
        ref_c, ref_r = method._reference_forward(batch)
        loss = -torch.nn.functional.logsigmoid(0.1 * ((chosen - ref_c) - (rejected - ref_r))).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": statistics.median(times[1:]) * 1000, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 131072, 262144])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        vocab, mode = int(args.worker[0]), args.worker[1]
        if mode.startswith("trl"):
            result = trl_worker(vocab, mode == "trl-precompute", args.steps)
        else:
            result = worker(vocab, mode.endswith("chunked"), args.steps, mode.startswith("lora"))
        print("RESULT " + json.dumps(result))
        return
    print("| vocabulary | head | ms/step | peak RSS MiB |")
    print("|---|---|---|---|")
    for vocab in args.vocab:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--worker", str(vocab), mode, "--steps", str(args.steps)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            print(f"| {vocab} | {mode} | {result['ms']:.0f} | {result['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
