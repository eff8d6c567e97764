"""Reference log-probs of the training data, computed in one pass and kept on disk.

The reference model never changes during training, so its log-probs of each training triple are a
constant: computing them once removes the reference forward from every training step (and every
epoch, and every later run on the same data and model).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from plrlhf.io import atomic_write_bytes
from plrlhf.packing import row_widths

Batch = dict[str, Tensor]


def _by_length(dataset: Sequence[Any], shared_prompt: bool) -> list[int]:
    """Indices of ``dataset`` by the width of its rows in the layout; file order for a dataset
    that does not report its lengths."""
    if not hasattr(dataset, "lengths"):
        return list(range(len(dataset)))
    return np.argsort(row_widths(dataset.lengths(), shared_prompt), kind="stable").tolist()


def cache_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


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


def _checksum(table: Tensor) -> str:
    return hashlib.sha256(table.contiguous().cpu().numpy().tobytes()).hexdigest()


def read_table(path: Path, key: str, rows: int) -> tuple[Tensor | None, str]:
    """The table cached at ``path`` if it is the entry for ``key`` with ``rows`` rows and intact
    contents; else ``None`` and why not."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            table = handle.get_tensor("reference_logps")
    except Exception as error:  # any unreadable file is a miss, whatever the library raises
        return None, f"unreadable ({type(error).__name__}: {error})"
    if metadata.get("key") != key:
        return None, "written for other data or another reference model"
    if tuple(table.shape) != (rows, 2) or table.dtype != torch.float32:
        return None, f"shape {tuple(table.shape)} {table.dtype}, expected ({rows}, 2) float32"
    if metadata.get("sha256") != _checksum(table):
        return None, "its values do not match their checksum"
    return table, ""


def write_table(path: Path, key: str, table: Tensor) -> None:
    """Store ``table`` with its key and checksum, atomically (a unique temporary file, renamed)."""
    table = table.detach().float().cpu().contiguous()
    data = save({"reference_logps": table}, metadata={"key": key, "sha256": _checksum(table)})
    atomic_write_bytes(path, data)


def load_or_compute(
    path: Path | None, key: str, rows: int, compute: Callable[[], Tensor], is_writer: bool
) -> tuple[Tensor, str]:
    """The cached table at ``path`` if it is intact and for ``key``, else ``compute()`` (saved by
    the writer). Returns the table and what happened, for the log."""
    if path is not None and path.exists():
        table, problem = read_table(path, key, rows)
        if table is not None:
            return table, f"loaded from {path}"
        rank_zero_warn(f"reference cache {path} not used: {problem}; recomputing")
    table = compute()
    if path is None:
        return table, "computed"
    if is_writer:
        write_table(path, key, table)
    return table, f"computed, saved to {path}"


def dataset_fingerprint(dataset: Sequence[Any]) -> str:
    """A digest of the token ids of every example, in order: the data, the tokenizer and every
    length setting as the reference sees them (a dataset may provide its own ``fingerprint``)."""
    own = getattr(dataset, "fingerprint", None)
    if isinstance(own, str):
        return own
    digest = hashlib.sha256(str(len(dataset)).encode())
    for example in dataset:
        for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
            ids = getattr(example, name)
            digest.update(len(ids).to_bytes(4, "little"))
            digest.update(array("q", ids).tobytes())
    return digest.hexdigest()


class PrecomputedReference:
    """Reference log-probs of the training triples, computed once before training (or read from
    the on-disk cache) and looked up by example index in every training step.

    The method owns one and calls :meth:`prepare` when training starts: it reads the training
    loader Lightning built (its dataset and collate function), not the data module.
    """

    def __init__(self, cache_dir: str | None) -> None:
        self.cache_dir = cache_dir
        self.table: Tensor | None = None

    def lookup(self, index: Tensor) -> tuple[Tensor, Tensor]:
        assert self.table is not None
        values = self.table[index]
        return values[:, 0], values[:, 1]

    def prepare(self, method: Any, trainer: Any) -> None:
        if self.table is not None:
            return
        train = trainer.train_dataloader
        # Every triple once, whatever sampler the training loader has (processes split the batches
        # between them below), shortest first: the table is keyed by example index, so the order
        # is free, and batches of similar lengths pad little (relabeled HH's 1,591 training triples
        # in shared-prompt rows: 43% padding in file order, 0.5% sorted).
        order = _by_length(train.dataset, getattr(method, "shared_prompt", False))
        batches = [order[i : i + train.batch_size] for i in range(0, len(order), train.batch_size)]
        loader = DataLoader(train.dataset, batch_sampler=batches, collate_fn=train.collate_fn)
        path, key = None, ""
        if self.cache_dir is not None:
            key = cache_key(dataset_fingerprint(train.dataset), method.policy.reference_fingerprint())
            path = Path(self.cache_dir) / f"{key[:32]}.safetensors"

        def compute() -> Tensor:
            return compute_reference_table(
                loader,
                len(loader.dataset),
                lambda batch: method(batch, output="reference"),
                method.device,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                reduce_sum=lambda t: trainer.strategy.reduce(t, reduce_op="sum"),
            )

        table, source = load_or_compute(path, key, len(loader.dataset), compute, trainer.is_global_zero)
        rank_zero_info(f"reference log-probs of {len(table)} training triples {source}")
        self.table = table.to(method.device)
