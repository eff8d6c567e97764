"""Three preference types with unequal groups (issue 12, part 4): whom does each method serve?

    python benchmarks/three_types.py [--variants shipped individual ...] [--seeds 0 1] [--shares JSON]

Data: `plrlhf data length --shares '{longer: 0.6, shorter: 0.25, medium: 0.15}'`, 20 seen users
(12 / 5 / 3), 100 training triples each, 4 unseen users; a task no config was tuned on. Each
variant is a method config composed with `configs/experiment/synthetic-length.yaml` (tiny Llama,
3 epochs), trained with `plrlhf fit` and tested with `plrlhf test`, as a user runs them. Prints the
held-out reward accuracy per type (mean over seen users of the type) and its worst seen user.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from cli_steps import fit, test

from plrlhf.cli import main as plrlhf

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "configs/experiment/synthetic-length.yaml"
SHARES = {"longer": 0.6, "shorter": 0.25, "medium": 0.15}
TAU = "--model.init_args.user_model.init_args.temperature"
K = "--model.init_args.user_model.init_args.n_clusters"
GENERIC = "--model.init_args.user_model.init_args.generic_tokens"
POPULATION = "--model.init_args.user_model.init_args.population_generic"
NLL = ["--model.init_args.nll_weight", "0.2", "--model.init_args.nll_average", "response"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "individual": ("individual_pdpo", []),
    "shipped": ("cluster_pdpo", []),  # temperature 0.1 since 0.3.1
    "K=10": ("cluster_pdpo", [K, "10"]),
    # the mixture softmax at temperature 1 (the paper's; shipped until 0.3.0), and what was
    # changed with it, one at a time, to find why the smallest type was not served
    "temperature 1": ("cluster_pdpo", [TAU, "1.0"]),
    "temperature 1, K=10": ("cluster_pdpo", [TAU, "1.0", K, "10"]),
    "temperature 1, user lr 0.1": ("cluster_pdpo", [TAU, "1.0", "--model.init_args.user_model_lr", "0.1"]),
    "temperature 1, logits zeros": (
        "cluster_pdpo",
        [TAU, "1.0", "--model.init_args.user_model.init_args.weight_init", "zeros"],
    ),
    "dpo": ("dpo", []),
    # the generic user has tokens of its own, not a mixture of the users' clusters
    "generic tokens": ("cluster_pdpo", [GENERIC, "true"]),
    "generic tokens, K=10": ("cluster_pdpo", [GENERIC, "true", K, "10"]),
    # the generic user is the mean of the seen users' mixtures (not a learned row)
    "population generic": ("cluster_pdpo", [POPULATION, "true"]),
    # user_model_lr 0.01 moves the cluster tokens 10x faster than the LM's lr as well as the
    # mixtures: here the tokens train at the LM's lr and the mixtures move as fast as shipped
    # (1 / temperature: 0.001 / 0.01 = 0.01 / 0.1)
    "tokens at LM lr": ("cluster_pdpo", [TAU, "0.01", "--model.init_args.user_model_lr", "0.001"]),
    # part 1's NLL term on the chosen response (0.2, per response), under the generic user or each
    # user's own mixture: on real text the shipped ClusterPDPO with it left the minority at 0.61-0.75
    "NLL generic": ("cluster_pdpo", [*NLL, "--model.init_args.nll_condition", "generic"]),
    "NLL user": ("cluster_pdpo", [*NLL, "--model.init_args.nll_condition", "user"]),
    # the tiny Llama at SmolLM2-135M's embedding scale (its token embeddings' RMS is 0.136, the tiny
    # model's 0.02): the same user-model lr moves a soft token 7x less relative to its size
    "embedding scale 0.136": ("cluster_pdpo", ["--model.init_args.model.initializer_range", "0.136"]),
}


def data(out: Path, shares: dict[str, float]) -> Path:
    directory = out / "data"
    if not (directory / "test.jsonl").is_file():
        plrlhf(
            ["data", "length", "--out", str(directory), "--users", "20", "--unseen_users", "4"]
            + ["--train_per_user", "100", "--shares", json.dumps(shares)]
        )
    return directory


def per_type(
    metrics: dict[str, float], directory: Path, shares: dict[str, float]
) -> dict[str, tuple[float, float]]:
    """Mean and worst held-out accuracy of the seen users of each type."""
    users = {}
    for line in (directory / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        users[row["user_id"]] = row["group"]
    result = {}
    for taste in shares:
        values = [metrics[f"test/rewards/accuracy/user/{u}"] for u, g in users.items() if g == taste]
        result[taste] = (statistics.mean(values), min(values))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/three-types")
    parser.add_argument(
        "--shares", default=json.dumps(SHARES), help="types and their shares of the users (JSON)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    directory = data(out, json.loads(args.shares))
    files = [f"--data.init_args.{s}" for s in ("train", "validation", "test")]
    paths = [str(directory / f"{s}.jsonl") for s in ("train", "validation", "test")]
    settings = [a for pair in zip(files, paths) for a in pair] + ["--data.init_args.validation", "null"]
    shares = json.loads(args.shares)
    print("| variant | seed | " + " | ".join(f"{t} ({shares[t]:.0%}) mean / worst" for t in shares) + " |")
    print("|---|---|" + "---|" * len(shares))
    for name in args.variants:
        method, extra = VARIANTS[name]
        for seed in args.seeds:
            version = f"{name.replace(' ', '_').replace('=', '').replace(',', '')}-seed{seed}"
            run = out / version
            if not (run / "test" / "test_metrics.json").is_file():
                fit(method, EXPERIMENT, out, version, *settings, "--seed_everything", str(seed), *extra)
                metrics = test(run)
            else:
                metrics = json.loads((run / "test" / "test_metrics.json").read_text())
            cells = [f"{m:.2f} / {w:.2f}" for m, w in per_type(metrics, directory, shares).values()]
            print(f"| {name} | {seed} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
