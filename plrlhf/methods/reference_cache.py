"""Reference log-probs of the training data, computed in one pass and kept on disk.

The reference model never changes during training, so its log-probs of each training triple are a
constant: computing them once removes the reference forward from every training step (and every
epoch, and every later run on the same data and model).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

Batch = dict[str, Tensor]


def cache_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def compute_reference_table(
    batches: Iterable[Batch],
    size: int,
    reference_logps: Callable[[Batch], tuple[Tensor, Tensor]],
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    progress: bool = True,
) -> Tensor:
    """``(size, 2)`` float32 table of (chosen, rejected) reference log-probs by example index.

    With ``world_size > 1`` each process scores every ``world_size``-th batch and ``reduce_sum``
    (a sum over processes) assembles the table on all of them. Every process runs the same number
    of forwards (the last round's idle processes score a batch again and drop it): sharded models
    gather weights collectively in each forward.
    """
    table = torch.zeros(size, 2, dtype=torch.float32, device=device)
    seen = torch.zeros(size, dtype=torch.float32, device=device)
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = tqdm(
        batches, total=total, desc="reference log-probs", disable=not progress or rank != 0, unit="batch"
    )
    count = 0
    first: Batch | None = None
    for i, batch in enumerate(bar):
        count += 1
        first = batch if first is None else first
        if i % world_size != rank:
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        chosen, rejected = reference_logps(batch)
        table[batch["index"]] = torch.stack([chosen, rejected], dim=-1).float()
        seen[batch["index"]] = 1.0
    if world_size > 1 and count % world_size and rank >= count % world_size and first is not None:
        reference_logps({k: v.to(device) for k, v in first.items()})
    if reduce_sum is not None and world_size > 1:
        table, seen = reduce_sum(table), reduce_sum(seen)
    missing = int((seen == 0).sum())
    if missing:
        raise RuntimeError(f"reference log-probs missing for {missing} of {size} training examples")
    return table


def load_or_compute(path: Path | None, compute: Callable[[], Tensor], is_writer: bool) -> tuple[Tensor, bool]:
    """The table at ``path`` if it exists, else ``compute()`` (saved to ``path`` by the writer).

    Returns the table and whether it came from disk.
    """
    if path is not None and path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True), True
    table = compute()
    if path is not None and is_writer:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(table.cpu(), tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache
    return table, False
