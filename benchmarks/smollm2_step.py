"""SmolLM2-135M on CPU: plrlhf's training step per method against a bare forward + backward over
the same tokens, and triples per hour (issue 12, part 3).

    python benchmarks/smollm2_step.py [--triples 64] [--steps 4] [--methods dpo individual_pdpo ...]

Each method is ``plrlhf fit`` of its shipped config composed with the real-model experiment
(``configs/experiment/hh-length-smollm2.yaml``: LoRA r 8 on all linear layers, shared-prompt rows,
length-grouped batches of 8, reference precomputed for the DPO methods), on the first ``--triples``
training triples of ``data/hh_length``, as a user runs it. A callback times each training step
(``on_train_batch_start`` to ``on_train_batch_end``: the objective, backward, gradient clipping,
AdamW) after ``--warmup`` untimed ones, and the reference pass (from ``on_train_start`` to the
first batch). Before each timed step it runs the *bare* step on the same batch: the same
shared-prompt rows, once per user condition of the method, with the method's soft tokens in front,
through the LoRA model with plain causal attention, the LM head on the response tokens only (a
value head's single position for the reward models), forward and backward; nothing else. Its
gradients are cleared before the method's own backward.

The ratio is of the mean times over the same batches; triples per hour = 3600 * batch / mean step
time, and with the reference pass amortised over
the two epochs of the real-model runs (its cost per triple once per run).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from plrlhf.cli import run
from plrlhf.logprobs import token_logps
from plrlhf.packing import pack_shared_prompt
from plrlhf.policy import _decoder, _head

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "configs/experiment/hh-length-smollm2.yaml"
METHODS = ["dpo", "individual_pdpo", "cluster_pdpo", "reward_model", "personalized_reward_model"]
EPOCHS = 2  # of the real-model runs, over which the reference pass is amortised


def bare_step(module: Any, batch: dict[str, torch.Tensor]) -> float:
    """Seconds of a forward + backward over the batch's shared-prompt rows, nothing else."""
    policy = module.policy
    model = policy.hf_model
    ids, segments = pack_shared_prompt(
        batch["input_ids"], batch["attention_mask"], batch["response_mask"], module.pad_token_id
    )
    conditions = len(getattr(module, "conditions", ["policy"]))
    user_model = getattr(module, "user_model", None)
    start = time.perf_counter()
    ids, scored = ids.repeat(conditions, 1), (segments > 0).repeat(conditions, 1)
    embeds = model.get_input_embeddings()(ids)
    if user_model is not None:
        soft = user_model(torch.zeros(embeds.shape[0], dtype=torch.long))
        embeds = torch.cat([soft.to(embeds.dtype), embeds], dim=1)
        scored = torch.cat([scored.new_zeros(soft.shape[:2]), scored], dim=1)
        ids = torch.cat([ids.new_zeros(soft.shape[:2]), ids], dim=1)
    positions = torch.arange(embeds.shape[1]).expand(embeds.shape[0], -1)
    hidden = _decoder(model, embeds, None, positions)
    if policy.value_head is not None:
        loss = policy.value_head(hidden[:, -1]).sum()
    else:
        rows, cols = torch.nonzero(scored[:, 1:], as_tuple=True)
        loss = token_logps(hidden[rows, cols], ids[rows, cols + 1], *_head(model)).sum()
    loss.backward()
    seconds = time.perf_counter() - start
    module.zero_grad(set_to_none=True)
    return seconds


class StepTimer(Callback):
    """Times the reference pass and each training step after ``warmup``; the bare step beside."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps: list[float] = []
        self.bare: list[float] = []
        self.reference = 0.0
        self.rows = 0

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.train_start = time.perf_counter()
        self.reference = -1.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self.reference < 0:
            self.reference = time.perf_counter() - self.train_start
        self.timed = batch_idx >= self.warmup
        if self.timed:
            self.bare.append(bare_step(module, batch))
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.timed:
            self.steps.append(time.perf_counter() - self.start)


def measure(method: str, train: Path, steps: int, warmup: int, out: Path) -> dict[str, Any]:
    timer = {"class_path": f"{Path(__file__).stem}.StepTimer", "init_args": {"warmup": warmup}}
    cli = run(
        ["fit", "--config", str(ROOT / f"configs/method/{method}.yaml"), "--config", str(EXPERIMENT),
         "--data.init_args.train", str(train), "--data.init_args.validation", "null",
         "--trainer.max_steps", str(warmup + steps), "--trainer.enable_checkpointing", "false",
         "--trainer.callbacks", json.dumps([timer]), "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", "null",
         "--model.init_args.reference_cache_dir", str(out / "reference" / method),
         "--trainer.default_root_dir", str(out)]  # (its config.yaml goes there, not into the cwd)
    )  # fmt: skip
    (timer,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "StepTimer"]
    # Length-grouped batches differ in width several-fold: the ratio is of the summed times over
    # the same batches, and throughput is from the mean step (a median would pick one width).
    step, bare = statistics.mean(timer.steps), statistics.mean(timer.bare)
    batch = 8
    triples = int(train.read_text().count("\n"))
    reference_per_triple = timer.reference / triples if "reward" not in method else 0.0
    return {
        "method": method,
        "step_s": step,
        "steps_s": timer.steps,
        "bare_s": bare,
        "bare_steps_s": timer.bare,
        "ratio": step / bare,
        "reference_s_per_triple": reference_per_triple,
        "triples_per_hour": 3600 * batch / step,
        "triples_per_hour_with_reference": 3600 / (step / batch + reference_per_triple / EPOCHS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--triples", type=int, default=64, help="training triples read (the reference pass)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--data", default="data/hh_length", help="built by `plrlhf data hh-length` if absent")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "TRAIN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one method per process: peak memory is its own, and nothing is left over
        method, train = args.worker
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(method, Path(train), args.steps, args.warmup, Path(tmp))
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print("RESULT " + json.dumps(result), flush=True)
        return
    from real_model import prepare  # (this directory is on the path: the timer's class path too)

    if not (Path(args.data) / "train.jsonl").is_file():
        prepare(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        lines = (Path(args.data) / "train.jsonl").read_text().splitlines(keepends=True)[: args.triples]
        train = Path(tmp) / "train.jsonl"
        train.write_text("".join(lines))
        for method in args.methods:
            command = [sys.executable, __file__, "--worker", method, str(train)]
            command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            done = subprocess.run(command, capture_output=True, text=True)
            rows = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not rows:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{method} failed (exit {done.returncode})")
            results.append(json.loads(rows[-1][len("RESULT ") :]))
            print(f"{method}: step {results[-1]['step_s']:.1f} s", flush=True)
    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}, {len(lines)} triples, batch 8\n")
    print("| method | plrlhf step, mean (s) | bare fwd+bwd, mean (s) | ratio | reference (s/triple) | "
          f"triples/h | triples/h, reference amortised over {EPOCHS} epochs | peak RSS (GiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['method']} | {r['step_s']:.1f} | {r['bare_s']:.1f} | {r['ratio']:.2f}x | "
            f"{r['reference_s_per_triple']:.2f} | {r['triples_per_hour']:.0f} | "
            f"{r['triples_per_hour_with_reference']:.0f} | {r['peak_rss_gib']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
