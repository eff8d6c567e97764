"""Data at scale (issue 15): first encoding, cached start, and peak memory at 100k and 1M triples.

    python benchmarks/data_scale.py [--sizes 100000 1000000] [--tokenizers data/tokenizer ...]
        [--formats jsonl parquet] [--old-code DIR]

Generates files of triples shaped like relabeled HH (prompts ~500 characters, responses ~200,
5,000 users; text cut from ``../shared/data/hh_rlhf_relabeled`` when it is there, else from this
repository's own prose) and runs ``plrlhf fit`` on each as a user would, in a fresh process, with
an empty cache (the first encoding) and again (a cache hit): IndividualPDPO on a tiny Llama, one
training step, no validation. Measured from outside: seconds from process start to the first
training step, and the process's peak RSS (``wait4``). ``--old-code DIR`` runs a checkout of an
earlier plrlhf the same way, for the side-by-side line of what the JSON-lines path cost before.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh_rlhf_relabeled" / "both.test.jsonl.gz"
STEP_MARK = "plrlhf-benchmark-first-step"


def source_texts() -> list[str]:
    if HH.is_file():
        rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
        return [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    prose = " ".join(p.read_text() for p in sorted(ROOT.glob("docs/*.md")))
    return [prose[i : i + 2000] for i in range(0, len(prose) - 2000, 700)]


def generate(path: Path, size: int, users: int = 5000, seed: int = 0) -> None:
    """``size`` triples as JSON lines (``.jsonl``) or parquet (``.parquet``)."""
    texts = source_texts()
    rng = np.random.default_rng(seed)

    def cut(count: int, length: int) -> list[str]:
        sources = rng.integers(0, len(texts), size=count)
        offsets = rng.random(count)
        return [
            texts[s][int(o * max(0, len(texts[s]) - length)) :][:length] for s, o in zip(sources, offsets)
        ]

    tmp = path.with_suffix(path.suffix + ".tmp")
    writer = None
    with open(tmp, "w", encoding="utf-8") as handle:
        for start in range(0, size, 50_000):
            count = min(50_000, size - start)
            rows = {
                "user_id": [f"user_{u}" for u in rng.integers(0, users, size=count)],
                "prompt": cut(count, 500),
                "chosen": cut(count, 200),
                "rejected": cut(count, 200),
            }
            if path.suffix == ".parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.table(rows)
                writer = writer or pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table)
            else:
                for i in range(count):
                    handle.write(json.dumps({k: v[i] for k, v in rows.items()}) + "\n")
    if writer is not None:
        writer.close()
    tmp.replace(path)


CLOCK = f"""
import time, lightning.pytorch as pl
class FirstStepClock(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, index):
        if index == 0:
            print("{STEP_MARK}", time.time(), flush=True)
"""


def fit(code: Path, data: Path, tokenizer: str, cache: Path, workdir: Path) -> dict[str, float]:
    """One ``plrlhf fit`` process: seconds to its first step and its peak RSS in MiB."""
    (workdir / "bench_clock.py").write_text(CLOCK)
    args = [
        sys.executable,
        "-c",
        "import sys; from plrlhf.cli import main; sys.exit(main())",
        "fit",
        "--config",
        str(ROOT / "configs/method/individual_pdpo.yaml"),
        "--config",
        str(ROOT / "configs/model/tiny-llama.yaml"),
        "--data",
        "plrlhf.PreferenceDataModule",
        "--data.init_args.tokenizer",
        str(Path(tokenizer).resolve()),
        "--data.init_args.train",
        str(data),
        "--data.init_args.max_length",
        "256",
        "--data.init_args.max_prompt_length",
        "192",
        "--trainer.max_steps",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.callbacks+=bench_clock.FirstStepClock",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": f"{code}:{workdir}",
        "PLRLHF_CACHE": str(cache),
        "TOKENIZERS_PARALLELISM": "true",
    }
    start = time.time()
    process = subprocess.Popen(
        args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"fit failed ({status}):\n{output[-3000:]}")
    marks = [float(line.split()[1]) for line in output.splitlines() if line.startswith(STEP_MARK)]
    return {"to_first_step_s": marks[0] - start, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--tokenizers", nargs="+", default=["data/tokenizer"])
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"])
    parser.add_argument("--old-code", help="a checkout of an earlier plrlhf, run on JSON lines (one run)")
    parser.add_argument("--work", default=None, help="where data files and caches go (default: a temp dir)")
    parser.add_argument("--out", default="benchmarks/data_scale.json")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="plrlhf-data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        for fmt in args.formats:
            data = work / f"triples-{size}.{fmt}"
            if not data.exists():
                t = time.time()
                generate(data, size)
                print(
                    f"generated {data} ({data.stat().st_size / 1e6:.0f} MB) in {time.time() - t:.0f} s",
                    flush=True,
                )
            for tokenizer in args.tokenizers:
                cache = work / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                row = {"size": size, "format": fmt, "tokenizer": Path(tokenizer).name, "code": "this"}
                row["first"] = fit(ROOT, data, tokenizer, cache, work)
                row["cached"] = fit(ROOT, data, tokenizer, cache, work)
                print(json.dumps(row), flush=True)
                results.append(row)
                if args.old_code and fmt == "jsonl":
                    old = {
                        **row,
                        "code": "old",
                        "first": fit(Path(args.old_code), data, tokenizer, cache, work),
                    }
                    old.pop("cached")
                    print(json.dumps(old), flush=True)
                    results.append(old)
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
