"""plrlhf against TRL's DPOTrainer on the same work, and against the compute floor.

    pip install -e ".[bench]"
    python benchmarks/vs_trl.py [--steps 15] [--rounds 2] [--shapes prompt-heavy balanced]

Same tiny Llama from config (4 layers, hidden 256, vocabulary 8192), same text data, same batch
size (8 pairs), same steps, fp32 on CPU, AdamW, full fine-tuning. Every configuration runs in its
own process (peak RSS is per process) and the configurations are interleaved round by round, so
machine noise reaches all of them alike. Reported: median step time over all measured steps,
pairs/s, the ratio to TRL's best configuration, peak RSS, and the ratio to the *floor*: one plain
causal forward + backward + AdamW step over exactly the tokens the DPO objective needs
(``[prompt, chosen, rejected]`` once per pair, LM head on response tokens only).

TRL runs with ``bf16=False``, gradient checkpointing off, with and without
``precompute_ref_log_probs``. The allocator is kept from returning memory to the OS between steps
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000``) for every configuration.

``--whole``: the whole process as a user runs it, timed from outside: a fresh process that imports,
reads the JSON-lines files, tokenizes, computes the reference, trains one epoch (256 pairs), validates
(32 pairs) and writes a checkpoint with optimizer state. plrlhf runs ``plrlhf fit --config`` (its
speed options on: precomputed reference, shared prompt); TRL runs the script a TRL user writes
(``load_dataset("json")``, ``DPOTrainer`` with an eval dataset, ``save_strategy="epoch"``). Every
run starts with empty caches (its own ``PLRLHF_CACHE``, reference cache and ``HF_DATASETS_CACHE``):
the first run of a new experiment, nothing carried over from an earlier one. Runs are interleaved.

    python benchmarks/vs_trl.py --whole [--rounds 3] [--shapes prompt-heavy balanced]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "data/tokenizer")
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
SHAPES = {"prompt-heavy": (200, 30), "balanced": (60, 60)}  # (prompt, response) tokens
BATCH = 8
CONFIGS = [
    "trl",
    "trl-precompute",
    "plrlhf-dpo",
    "plrlhf-dpo-precompute",
    "plrlhf-dpo-precompute-shared",
    "plrlhf-pdpo-precompute",
    "plrlhf-pdpo-precompute-shared",
    "plrlhf-pdpo-precompute-after",
    "floor",
]
WHOLE_CONFIGS = ["trl", "trl-precompute", "plrlhf-dpo", "plrlhf-pdpo"]
WHOLE_PAIRS = {"train": 256, "validation": 32}
ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "TOKENIZERS_PARALLELISM": "false"}


def make_rows(shape: str, n: int, seed: int = 0) -> list[dict[str, str]]:
    """Text whose words are single tokens of the bundled tokenizer, so lengths are exact."""
    from plrlhf.tokenizer import load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    words = [t[1:] for t in tok.get_vocab() if t.startswith("Ġ") and t[1:].isalpha()]
    rng = random.Random(seed)
    prompt_len, response_len = SHAPES[shape]

    def text(k: int) -> str:
        return " " + " ".join(rng.choice(words) for _ in range(k))

    return [
        {
            "user_id": f"u{i % 4}",
            "prompt": text(prompt_len).lstrip(),
            "chosen": text(response_len - 1),
            "rejected": text(response_len - 1),
        }
        for i in range(n)
    ]


MODEL_DIR = Path("/tmp/plrlhf-bench/model")


def build_model():
    """The benchmark model, saved once so that every framework loads the same weights from disk
    (TRL builds its reference model from the policy's path)."""
    from transformers import AutoModelForCausalLM

    from plrlhf.policy import build_causal_lm
    from plrlhf.tokenizer import load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    if not (MODEL_DIR / "config.json").is_file():
        torch.manual_seed(0)
        build_causal_lm(MODEL, vocab_size=len(tok), pad_token_id=tok.pad_token_id).save_pretrained(MODEL_DIR)
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR), tok


def trl_config(precompute: bool, **settings):
    """TRL's DPOConfig as both runs use it: fp32 on CPU, the same optimizer settings as plrlhf."""
    from trl import DPOConfig

    return DPOConfig(
        per_device_train_batch_size=BATCH,
        learning_rate=1e-5,
        beta=0.1,
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        precompute_ref_log_probs=precompute,
        report_to=[],
        max_length=1024,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        **settings,
    )


def run_trl(shape: str, steps: int, warmup: int, precompute: bool) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOTrainer

    _, tok = build_model()
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.start)

    rows = [
        {k: r[k] for k in ("prompt", "chosen", "rejected")}
        for r in make_rows(shape, BATCH * (steps + warmup))
    ]
    args = trl_config(
        precompute,
        output_dir="/tmp/plrlhf-bench-trl",
        max_steps=steps + warmup,
        logging_steps=10_000,
        save_strategy="no",
    )
    trainer = DPOTrainer(
        model=str(MODEL_DIR),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[Timer()],
    )
    trainer.train()
    return times[warmup:]


def run_plrlhf(shape: str, steps: int, warmup: int, config: str, tmp: Path) -> list[float]:
    import functools

    from lightning.pytorch import Callback, Trainer

    from plrlhf import DPO, IndividualPDPO, PreferenceDataModule

    rows = make_rows(shape, BATCH * (steps + warmup))
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{shape}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PreferenceDataModule(
        TOKENIZER, train=str(path), batch_size=BATCH, max_length=1024, max_prompt_length=1000
    )
    method = IndividualPDPO if "-pdpo" in config else DPO
    extra = {"user_tokens": "after_prompt"} if "after" in config else {}
    build_model()
    module = method(
        **extra,
        model=str(MODEL_DIR),
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        beta=0.1,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-5),
        precompute_reference="precompute" in config,
        reference_cache_dir=None,
        shared_prompt="shared" in config,
    )
    times: list[float] = []

    class Timer(Callback):
        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.start)

    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timer()],
        num_sanity_val_steps=0,
        default_root_dir=tmp,
    )
    trainer.fit(module, datamodule=dm)
    return times[warmup:]


def run_floor(shape: str, steps: int, warmup: int) -> list[float]:
    """One causal forward + backward + AdamW step over [prompt, chosen, rejected] per pair."""
    model, _ = build_model()
    model.train()
    prompt_len, response_len = SHAPES[shape]
    width = prompt_len + 2 * response_len
    ids = torch.randint(1, 700, (BATCH, width))
    scored = torch.zeros(BATCH, width, dtype=torch.bool)
    scored[:, prompt_len - 1 : -1] = True  # positions whose next token is a response token
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    head = model.get_output_embeddings()
    times = []
    for _ in range(steps + warmup):
        start = time.perf_counter()
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        logits = head(hidden[scored]).float()
        targets = ids[:, 1:][scored[:, :-1]]
        loss = (logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def worker(config: str, shape: str, steps: int, warmup: int) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if config.startswith("trl"):
        times = run_trl(shape, steps, warmup, precompute="precompute" in config)
    elif config == "floor":
        times = run_floor(shape, steps, warmup)
    else:
        times = run_plrlhf(shape, steps, warmup, config, Path("/tmp/plrlhf-bench") / config)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"config": config, "shape": shape, "times": times, "peak_mib": peak_mib}))


def trl_whole(precompute: bool, train: str, validation: str, out: str) -> None:
    """What a TRL user runs: JSON-lines files in, one epoch with evaluation, a checkpoint out."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    data = load_dataset("json", data_files={"train": train, "validation": validation})
    args = trl_config(
        precompute,
        output_dir=out,
        per_device_eval_batch_size=BATCH,
        num_train_epochs=1,
        eval_strategy="epoch",
        save_strategy="epoch",
    )
    trainer = DPOTrainer(
        model=str(MODEL_DIR),
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=AutoTokenizer.from_pretrained(TOKENIZER),
    )
    trainer.train()


def plrlhf_whole_config(config: str, train: str, validation: str, out: Path) -> dict:
    """``plrlhf fit`` with the speed options a user turns on in YAML."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "max_epochs": 1,
            "default_root_dir": str(out),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(out), "name": "", "version": "run"},
            },
        },
        "model": {
            "class_path": "plrlhf.IndividualPDPO" if config == "plrlhf-pdpo" else "plrlhf.DPO",
            "init_args": {
                "model": str(MODEL_DIR),
                "beta": 0.1,
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-5}},
                "precompute_reference": True,
                "reference_cache_dir": str(out / "reference"),
                "shared_prompt": True,
            },
        },
        "data": {
            "class_path": "plrlhf.PreferenceDataModule",
            "init_args": {
                "tokenizer": TOKENIZER,
                "train": train,
                "validation": validation,
                "batch_size": BATCH,
                "max_length": 1024,
                "max_prompt_length": 1000,
            },
        },
    }


def whole(args: argparse.Namespace) -> None:
    import shutil

    root = Path("/tmp/plrlhf-bench/whole")
    build_model()
    files = {}
    for shape in args.shapes:
        for split, n in WHOLE_PAIRS.items():
            path = root / f"{shape}-{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = make_rows(shape, n, seed=0 if split == "train" else 1)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            files[shape, split] = str(path)
    configs = [c for c in args.configs or WHOLE_CONFIGS if c in WHOLE_CONFIGS]
    plrlhf_bin = str(Path(sys.executable).with_name("plrlhf"))
    seconds: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for shape in args.shapes:
            train, validation = files[shape, "train"], files[shape, "validation"]
            for config in configs:
                out = root / "runs" / config
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                env = {
                    **os.environ,
                    **ENV,
                    "PLRLHF_CACHE": str(out / "cache"),
                    "HF_DATASETS_CACHE": str(out / "hf-datasets"),
                    "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "2"),
                }
                if config.startswith("trl"):
                    cmd = [sys.executable, __file__, "--trl-whole", str("precompute" in config), train]
                    cmd += [validation, str(out)]
                else:
                    path = out / "config.yaml"
                    path.write_text(json.dumps(plrlhf_whole_config(config, train, validation, out)))
                    cmd = [plrlhf_bin, "fit", "--config", str(path)]
                start = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                took = time.perf_counter() - start
                if done.returncode:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{config} {shape} failed")
                seconds.setdefault((shape, config), []).append(took)
                print(f"round {round_} {shape} {config}: {took:.1f} s", flush=True)
    for shape in args.shapes:
        median = {c: statistics.median(seconds[shape, c]) for c in configs}
        trl_best = min((v for c, v in median.items() if c.startswith("trl")), default=None)
        print(f"\n### whole process, {shape}: {WHOLE_PAIRS['train']} pairs, 1 epoch, {BATCH} pairs/step\n")
        print("| configuration | seconds (median) | all runs | TRL best / this |")
        print("|---|---|---|---|")
        for c in configs:
            runs = ", ".join(f"{t:.1f}" for t in seconds[shape, c])
            ratio = f"{trl_best / median[c]:.2f}x" if trl_best else ""
            print(f"| {c} | {median[c]:.1f} | {runs} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--configs", nargs="+", help=f"default: {CONFIGS}; with --whole: {WHOLE_CONFIGS}")
    parser.add_argument("--whole", action="store_true", help="time whole processes (see above)")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "SHAPE"), help=argparse.SUPPRESS)
    parser.add_argument("--trl-whole", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.steps, args.warmup)
        return
    if args.trl_whole:
        precompute, train, validation, out = args.trl_whole
        trl_whole(precompute == "True", train, validation, out)
        return
    if args.whole:
        whole(args)
        return
    args.configs = args.configs or CONFIGS
    results: dict[tuple[str, str], dict] = {}
    for round_ in range(args.rounds):
        for shape in args.shapes:
            for config in args.configs:
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    config,
                    shape,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                ]
                out = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True)
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    print(out.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{config} {shape} failed")
                r = json.loads(line[0][len("RESULT ") :])
                entry = results.setdefault((shape, config), {"times": [], "peak_mib": 0.0})
                entry["times"] += r["times"]
                entry["peak_mib"] = max(entry["peak_mib"], r["peak_mib"])
                print(
                    f"round {round_} {shape} {config}: {statistics.median(r['times']) * 1000:.0f} ms",
                    flush=True,
                )
    for shape in args.shapes:
        median = {c: statistics.median(results[(shape, c)]["times"]) for c in args.configs}
        trl_times = [v for c, v in median.items() if c.startswith("trl")]
        trl_best = min(trl_times) if trl_times else None  # (a run of plrlhf's configurations only)
        floor = median.get("floor")
        prompt, response = SHAPES[shape]
        print(f"\n### {shape}: prompt {prompt}, responses {response} tokens, {BATCH} pairs/step\n")
        print("| configuration | ms/step | pairs/s | vs TRL best (speed-up) | vs floor | peak RSS MiB |")
        print("|---|---|---|---|---|---|")
        for c in args.configs:
            vs_floor = f"{median[c] / floor:.2f}" if floor else ""
            vs_trl = f"{trl_best / median[c]:.2f}x" if trl_best else ""
            print(
                f"| {c} | {median[c] * 1000:.0f} | {BATCH / median[c]:.1f} | {vs_trl} | "
                f"{vs_floor} | {results[(shape, c)]['peak_mib']:.0f} |"
            )


if __name__ == "__main__":
    main()
