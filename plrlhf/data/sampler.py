"""The training order: global batches, the same for any number of processes, resumable mid-epoch.

Each epoch the triples are cut into *global* batches (``batch_size`` per process times the number
of processes), shuffled or length-grouped from ``seed`` and the epoch alone. Each process takes its
slice of every global batch. So one process with batch 8 and two with batch 4 train on the same
triples in every step, length grouping survives data parallelism, and an interrupted epoch can be
replayed exactly: the order does not depend on any random state a crash would lose.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler


def global_batches(
    size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    lengths: Sequence[int] | None = None,
    bucket_batches: int = 50,
) -> list[list[int]]:
    """Indices ``0..size-1`` cut into batches of ``batch_size`` for one epoch.

    With ``lengths``: shuffle, cut into chunks of ``batch_size * bucket_batches``, sort each chunk
    by length, cut it into batches and shuffle the batches, so members of a batch have similar
    lengths while content and order stay random. Without: shuffled (or file order) batches.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(size))
    if shuffle or lengths is not None:
        rng.shuffle(order)
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, size, batch_size)]
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, size, chunk):
        bucket = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches += [bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size)]
    # The short batch (the epoch's remainder) stays last: the data loader cuts the sampler's
    # indices into batches of batch_size again, so a short batch in the middle would merge with
    # its neighbour, and a resumed epoch would skip a different number of triples than it trained.
    short = batches.pop() if batches and len(batches[-1]) < batch_size else None
    rng.shuffle(batches)
    return batches + [short] if short else batches


class TrainingSampler(DistributedSampler):
    """One process's share of the epoch's global batches (see the module docstring).

    A ``DistributedSampler``, so Lightning uses it as it is instead of injecting its own. A short
    global batch (the epoch's remainder) is filled up from the start of the epoch's order so that
    every process takes the same number of steps (as ``DistributedSampler`` does).
    :meth:`skip_batches` starts the next iteration further in, for resuming.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        bucket_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.size = size
        self.batch_size = batch_size
        self.lengths = list(lengths) if lengths is not None else None
        self.bucket_batches = bucket_batches
        self._skip = 0

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (``batch_size * num_replicas`` triples each)."""
        return global_batches(
            self.size,
            self.batch_size * self.num_replicas,
            self.seed,
            self.epoch,
            self.shuffle,
            self.lengths,
            self.bucket_batches,
        )

    def batches(self) -> list[list[int]]:
        """This process's batches of the epoch, in order."""
        batches = self.global_batches()
        full = self.batch_size * self.num_replicas
        if self.num_replicas > 1:
            flat = [i for b in batches for i in b]
            batches = [b + flat[: full - len(b)] if len(b) < full else b for b in batches]
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return [b[mine] for b in batches if b[mine]]

    def skip_batches(self, count: int) -> None:
        """The next iteration leaves out this epoch's first ``count`` batches (already trained)."""
        self._skip = count

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        for batch in self.batches()[skip:]:
            yield from batch

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.size
        # Every global batch is filled up, so each process takes batch_size from each of them.
        return -(-self.size // (self.batch_size * self.num_replicas)) * self.batch_size


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`TrainingSampler` whose position is saved in checkpoints.

    Lightning stores ``state_dict()`` of a training loader in each checkpoint and hands it back on
    ``--ckpt_path``; the loader then skips the batches of the interrupted epoch that were already
    trained. The count is of batches handed to the training loop (not those prefetched by workers).
    """

    sampler: TrainingSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, TrainingSampler):
            raise TypeError("ResumableDataLoader needs a TrainingSampler")
        self._epoch = 0
        self._delivered = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        self._epoch = self.sampler.epoch
        start = 0
        if self._resume is not None and self._resume["epoch"] == self._epoch:
            start = self._resume["batches"]
        self._resume = None
        self.sampler.skip_batches(start)
        self._delivered = start
        for batch in super().__iter__():
            self._delivered += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._delivered}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = dict(state_dict)
