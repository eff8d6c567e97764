"""Where the NLL term pulls each user's tokens, against the preference term (issue 12, part 1).

For a few training batches of a P-DPO run, the gradient of each objective term on the user-model
rows of the batch's users: its norm, and its cosine with the preference term's. The NLL term is
taken under the user's own tokens (``nll_user``) and under the generic user's (``nll_generic``,
which leaves the user rows alone). Used on part 1's two-epoch run to choose ``nll_condition``::

    python benchmarks/nll_gradients.py runs/hh-length/individual_pdpo/checkpoints/last.ckpt \\
        data/hh_length_chat/train.jsonl --batches 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from plrlhf import PDPO, PreferenceDataModule
from plrlhf.adapt import load_checkpoint
from plrlhf.losses import chosen_nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a P-DPO training checkpoint (<run>/checkpoints/last.ckpt)")
    parser.add_argument("train", help="the run's training file")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    method, registry, data_args = load_checkpoint(args.checkpoint)
    if not isinstance(method, PDPO):
        raise SystemExit(f"{args.checkpoint}: not a P-DPO run ({type(method).__name__})")
    users = Path(args.checkpoint).resolve().parents[1] / "users.json"
    data = PreferenceDataModule(
        **data_args, train=args.train, user_registry=str(users), batch_size=args.batch_size
    )
    data.setup("fit")
    method.train()
    per_response = method.nll_average == "response"
    weight = method.nll_weight or 1.0
    (table,) = method.user_model.per_user_tables().values()  # one row per user, row 0 generic
    names = ["generic", *registry.users]
    for number, batch in zip(range(args.batches), data.train_dataloader()):
        scores = method.score(batch)
        terms = {
            "preference": method.combine(method.pair_values(scores)),
            "nll_user": weight * chosen_nll(scores["user"], per_response=per_response),
            "nll_generic": weight * chosen_nll(scores["generic"], per_response=per_response),
        }
        rows = {}
        for name, term in terms.items():
            method.zero_grad(set_to_none=True)
            term.backward(retain_graph=True)
            grad = table.weight.grad
            rows[name] = (grad.to_dense() if grad.is_sparse else grad).clone()
        print(f"batch {number}")
        for row in sorted(set(batch["user_ids"].tolist())):
            preference, nll = rows["preference"][row], rows["nll_user"][row]
            cosine = torch.nn.functional.cosine_similarity(preference, nll, dim=0).item()
            print(
                f"  {names[row]:>10}: |preference| {preference.norm():.2e}  |nll_user| {nll.norm():.2e}"
                f" ({nll.norm() / preference.norm():.1f}x, cosine {cosine:+.2f})"
                f"  |nll_generic| {rows['nll_generic'][row].norm():.1e}"
            )
        method.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
