"""GPU readiness in one command (issue 17): correctness, then speed, into one JSON file.

    python benchmarks/gpu_check.py --out docs/gpu_check.json      # on a GPU: about 5 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/check.json  # CPU, tiny model (tests run it)

On a ~0.5B Llama built from config (random weights; nothing downloaded), it checks

- ``logps_bf16``: response log-probs under bf16 autocast against fp32, per token;
- ``layouts``: the shared-prompt and the after-prompt (P-DPO, user tokens between prompt and
  response) layouts against one row per response, in fp32;
- ``steps``: DPO and IndividualPDPO training steps in bf16 autocast (forward, backward, AdamW),
  with shared prompts: median seconds per step, response+prompt tokens per second, model-FLOPs
  utilisation (``6 * parameters * tokens`` per step over the GPU's dense bf16 peak) and peak
  memory;
- ``flex_attention``: the tree layouts with FlexAttention block masks (``attention: auto`` on
  CUDA) against the dense additive mask (SDPA): scores and gradients in fp32, and the bf16 DPO
  and IndividualPDPO step time of each (``speedup`` = dense / flex);
- ``fsdp2``: a few ``plrlhf fit`` steps with ``FSDP2Strategy`` on all GPUs of the machine (and the
  loss of the first step against a single-device run of the same batch).

Every check records its numbers, its tolerance and ``ok``; the script exits 1 if any check fails.
``--dry-run`` runs every check on a 2-layer model on the CPU in fp32 (bf16 compared on the CPU),
with two steps each (FlexAttention there: its eager kernel, forward only), so that the script
cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plrlhf import DPO, IndividualPDPO  # noqa: E402
from plrlhf.data.collate import EncodedTriple, PreferenceCollator  # noqa: E402
from plrlhf.user_models import IndividualUserModel  # noqa: E402

TOKENIZER = str(ROOT / "data" / "tokenizer")
MODELS = {
    # ~0.5B parameters: Qwen2.5-0.5B's shape as a Llama (24 layers, hidden 896 -> 1024 for even heads)
    "0.5b": {
        "model_type": "llama",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4096,
        "vocab_size": 32768,
    },
    "tiny": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "vocab_size": 8192,
    },
}
# Dense bf16 tensor-core peaks (no sparsity), by the name torch reports.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def batch_of(pairs: int, prompt: int, response: int, users: int, vocab: int, seed: int = 0) -> dict[str, Any]:
    """``pairs`` random triples (prompt-heavy when ``prompt`` > ``response``), collated."""
    generator = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    triples = [
        EncodedTriple(
            ids(prompt),
            ids(response) + [2],
            ids(response - 7 * (i % 3)) + [2],
            user_id=1 + i % users,
            user_key=1 + i % users,
            group_key=0,
            index=i,
        )
        for i in range(pairs)
    ]
    return PreferenceCollator(pad_token_id=0)(triples)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def method(name: str, config: dict[str, Any], device: torch.device, **kwargs: Any) -> Any:
    """A method on ``device``; its attention as ``attention: auto`` picks under a Trainer, unless
    given (FlexAttention on CUDA)."""
    auto = "flex_attention" if device.type == "cuda" else "sdpa"
    common = {"model": config, "tokenizer": TOKENIZER, "beta": 0.1, "attention": auto, **kwargs}
    if name == "dpo":
        module = DPO(**common)
    else:
        module = IndividualPDPO(num_users=4, user_model=partial(IndividualUserModel, n_tokens=10), **common)
        with torch.no_grad():  # users that differ from the generic user
            for parameter in module.user_model.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter))
    return module.to(device)


def check_logps_bf16(
    config: dict[str, Any], device: torch.device, pairs: int, shape: tuple[int, int]
) -> dict:
    module = method("dpo", config, device).eval()
    batch = to_device(batch_of(pairs, *shape, 4, config["vocab_size"]), device)
    policy = module.policy
    with torch.no_grad():
        exact, counts = policy.response_logps(
            batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low, _ = policy.response_logps(
                batch["input_ids"], batch["attention_mask"], batch["response_mask"]
            )
    per_token = ((low.float() - exact) / counts).abs()
    tolerance = 0.05  # nats per token: bf16 keeps ~3 significant digits of each logit
    return {
        "max_abs_diff_per_token": per_token.max().item(),
        "tolerance": tolerance,
        "ok": bool(per_token.max() < tolerance),
    }


def check_layouts(config: dict[str, Any], device: torch.device, pairs: int, shape: tuple[int, int]) -> dict:
    """Shared prompt against one row per response (both user conditions); user tokens after the
    prompt (one tree row) against each response scored in a row of its own."""
    batch = to_device(batch_of(pairs, *shape, 4, config["vocab_size"]), device)
    torch.manual_seed(0)
    plain = method("individual_pdpo", config, device).eval()
    shared = method("individual_pdpo", config, device, shared_prompt=True).eval()
    shared.load_state_dict(plain.state_dict())
    after = method("individual_pdpo", config, device, user_tokens="after_prompt").eval()
    after.load_state_dict(plain.state_dict())
    fields = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
    with torch.no_grad():
        a, b = plain.score(batch), shared.score(batch)
        shared_diff = max((getattr(a[c], f) - getattr(b[c], f)).abs().max().item() for c in a for f in fields)
        tree = after.score(batch)
        lm = after.policy.lm
        embed = lm.get_input_embeddings()
        after_diff = 0.0
        for i in range(min(pairs, 2)):
            for condition, user in (
                ("user", batch["user_ids"][i]),
                ("generic", torch.zeros_like(batch["user_ids"][i])),
            ):
                soft = after.user_model(user[None])[0]
                for field, row in (("policy_chosen", i), ("policy_rejected", pairs + i)):
                    response = batch["response_mask"][row]
                    prompt_ids = batch["input_ids"][row][batch["attention_mask"][row].bool() & ~response]
                    response_ids = batch["input_ids"][row][response]
                    embeds = torch.cat([embed(prompt_ids), soft.to(embed.weight.dtype), embed(response_ids)])[
                        None
                    ]
                    logps = lm(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
                    start = len(prompt_ids) + len(soft)
                    naive = (
                        logps[start - 1 : start - 1 + len(response_ids)]
                        .gather(-1, response_ids[:, None])
                        .sum()
                    )
                    after_diff = max(
                        after_diff, abs(getattr(tree[condition], field)[i].item() - naive.item())
                    )
    tolerance = 2e-3
    return {
        "shared_prompt": {"max_abs_diff": shared_diff, "tolerance": tolerance, "ok": shared_diff < tolerance},
        "after_prompt": {"max_abs_diff": after_diff, "tolerance": tolerance, "ok": after_diff < tolerance},
        "ok": shared_diff < tolerance and after_diff < tolerance,
    }


def check_steps(
    config: dict[str, Any], device: torch.device, pairs: int, shape: tuple[int, int], steps: int, warmup: int
) -> dict:
    results: dict[str, Any] = {}
    flops_peak = peak_flops(device)
    for name in ("dpo", "individual_pdpo"):
        module = method(name, config, device, shared_prompt=True).train()
        batch = to_device(batch_of(pairs, *shape, 4, config["vocab_size"]), device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, loss = timed_steps(module, batch, device, steps, warmup)
        # Tokens the policy runs per step: one [prompt, chosen, rejected] row per pair, twice for
        # P-DPO's two user conditions; the reference forward (no backward) counts a third as much.
        tokens = int(batch["attention_mask"][:pairs].sum() + batch["response_mask"][pairs:].sum())
        passes = 2 if name == "individual_pdpo" else 1
        parameters = (
            sum(p.numel() for p in module.policy.parameters())
            - module.policy.lm.get_input_embeddings().weight.numel()
        )
        model_flops = (6 * passes + 2) * parameters * tokens
        entry = {
            "seconds_per_step": seconds,
            "tokens_per_step": tokens * passes,
            "tokens_per_second": tokens * passes / seconds,
            "loss": loss.item(),
            "finite": bool(torch.isfinite(loss)),
        }
        if flops_peak is not None:
            entry["mfu"] = model_flops / seconds / flops_peak
            entry["mfu_target"] = 0.45
        if device.type == "cuda":
            entry["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        entry["ok"] = entry["finite"]
        results[name] = entry
        del module
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["ok"] = all(r["ok"] for r in results.values())
    return results


def timed_steps(module: Any, batch: dict[str, Any], device: torch.device, steps: int, warmup: int) -> tuple:
    """Median seconds of a bf16 training step (autocast on CUDA), and the last loss."""
    optimizer = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda"
    )
    times = []
    for step in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = module.objective(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), loss


def check_flex_attention(
    config: dict[str, Any], device: torch.device, pairs: int, shape: tuple[int, int], steps: int, warmup: int
) -> dict:
    """Block-sparse tree layouts against the dense mask: the same scores and gradients (fp32),
    then the step time of each."""
    batch = to_device(batch_of(pairs, *shape, 4, config["vocab_size"]), device)
    train = device.type == "cuda"  # FlexAttention's CPU kernel has no backward
    result: dict[str, Any] = {}
    for layout in ({"shared_prompt": True}, {"user_tokens": "after_prompt"}):
        name = next(iter(layout))
        torch.manual_seed(0)
        modules = {
            attention: method("individual_pdpo", config, device, attention=attention, **layout)
            for attention in ("sdpa", "flex_attention")
        }
        modules["flex_attention"].load_state_dict(modules["sdpa"].state_dict())
        scores, grads = {}, {}
        for attention, module in modules.items():
            with torch.set_grad_enabled(train):
                values = module.score(batch)
                total = sum(values[c].policy_chosen.sum() for c in values)
                scores[attention] = torch.stack([values[c].policy_chosen for c in values])
            if train:
                total.backward()
                grads[attention] = torch.cat(
                    [p.grad.flatten() for p in module.parameters() if p.grad is not None]
                )
        entry = {
            "max_abs_diff": (scores["sdpa"] - scores["flex_attention"]).abs().max().item(),
            "tolerance": 2e-3,
        }
        entry["ok"] = entry["max_abs_diff"] < entry["tolerance"]
        if train:
            relative = (grads["sdpa"] - grads["flex_attention"]).norm() / grads["sdpa"].norm()
            entry |= {"gradient_relative_diff": relative.item(), "gradient_tolerance": 1e-3}
            entry["ok"] = entry["ok"] and entry["gradient_relative_diff"] < 1e-3
        result[name] = entry
        del modules
    if train:
        for name in ("dpo", "individual_pdpo"):
            seconds = {}
            for attention in ("sdpa", "flex_attention"):
                module = method(name, config, device, shared_prompt=True, attention=attention).train()
                seconds[attention], _ = timed_steps(module, batch, device, steps, warmup)
                del module
                torch.cuda.empty_cache()
            result[f"{name}_seconds_per_step"] = seconds
            result[f"{name}_speedup"] = seconds["sdpa"] / seconds["flex_attention"]
    result["ok"] = all(v["ok"] for v in result.values() if isinstance(v, dict) and "ok" in v)
    return result


def eager_flex_attention() -> None:
    """On the CPU (``--dry-run``): transformers' FlexAttention with the eager kernel, which runs
    forward only there, instead of compiling it (tens of seconds)."""
    import warnings

    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    def eager(query, key, value, score_mod=None, block_mask=None, training=False, **kwargs):
        return flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, **kwargs)

    hf_flex.compile_friendly_flex_attention = eager
    warnings.filterwarnings("ignore", message=".*flex_attention.*")


def check_fsdp2(devices: int, steps: int) -> dict:
    """A few ``plrlhf fit`` steps (the quickstart in bf16, file order) with ``FSDP2Strategy`` on
    every GPU, and on one device without it. With one GPU the first losses must agree; with more,
    each process trains on its own share of the batch, so only finiteness is required."""
    if devices < 1:
        return {"skipped": "no GPU", "ok": True}
    losses = {}
    for strategy, count in (("auto", 1), ("plrlhf.FSDP2Strategy", devices)):
        with tempfile.TemporaryDirectory() as run:
            args = [
                sys.executable, "-c", "from plrlhf.cli import main; main()", "fit",
                "--config", str(ROOT / "configs/quickstart.yaml"),
                "--trainer.accelerator", "gpu", "--trainer.devices", str(count),
                "--trainer.strategy", strategy, "--trainer.precision", "bf16-mixed",
                "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
                "--trainer.logger.init_args.save_dir", run,
                "--trainer.limit_val_batches", "0", "--data.init_args.shuffle", "false",
            ]  # fmt: skip
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                return {"strategy": strategy, "error": done.stderr[-2000:], "ok": False}
            rows = [
                line.split(",")
                for line in (Path(run) / "quickstart" / "metrics.csv").read_text().splitlines()
            ]
            column = rows[0].index("train/loss")
            losses[strategy] = [float(r[column]) for r in rows[1:] if r[column]]
    single, sharded = losses["auto"], losses["plrlhf.FSDP2Strategy"]
    finite = all(map(math.isfinite, single + sharded)) and bool(single) and bool(sharded)
    result = {"devices": devices, "losses": losses, "finite": finite}
    if devices == 1:
        result |= {"first_loss_diff": abs(single[0] - sharded[0]), "tolerance": 0.02}
        return result | {"ok": finite and result["first_loss_diff"] < 0.02}
    return result | {"ok": finite}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny model on the CPU: checks that the script works"
    )
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per step")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens (prompt-heavy shape)")
    parser.add_argument("--response", type=int, default=128, help="response tokens")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if args.dry_run:
        config, pairs, shape, steps, warmup = MODELS["tiny"], 4, (48, 16), 2, 1
        eager_flex_attention()
    else:
        config, pairs, shape, steps, warmup = (
            MODELS["0.5b"],
            args.pairs,
            (args.prompt, args.response),
            args.steps,
            3,
        )
        torch.backends.cuda.matmul.allow_tf32 = True
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
        "torch": torch.__version__,
        "model": config,
        "shape": {"pairs": pairs, "prompt": shape[0], "response": shape[1]},
        "dry_run": args.dry_run,
    }
    start = time.time()
    checks = {
        "logps_bf16": lambda: check_logps_bf16(config, device, pairs, shape),
        "layouts": lambda: check_layouts(config, device, pairs, shape),
        "steps": lambda: check_steps(config, device, pairs, shape, steps, warmup),
        "flex_attention": lambda: check_flex_attention(config, device, pairs, shape, steps, warmup),
        "fsdp2": lambda: check_fsdp2(report["gpus"], steps=3),
    }
    for name, check in checks.items():
        began = time.time()
        try:
            report[name] = check()
        except Exception as error:  # one failing check must not hide the others' numbers
            report[name] = {"error": f"{type(error).__name__}: {error}", "ok": False}
        report[name]["seconds"] = round(time.time() - began, 1)
        print(name, json.dumps(report[name]), flush=True)
    report["seconds"] = round(time.time() - start, 1)
    report["ok"] = all(report[name]["ok"] for name in checks)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'all checks passed' if report['ok'] else 'FAILED'}; written to {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
