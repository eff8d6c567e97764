"""Length-grouped sampling: batches of similar lengths, so little of each batch is padding."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffled buckets of similar length.

    Each epoch: shuffle all indices, cut them into chunks of ``batch_size * bucket_batches``, sort
    each chunk by length, cut it into batches and shuffle the order of all batches. Batches stay
    random in content and order, but their members have similar lengths. Deterministic given
    ``seed`` and the epoch (Lightning calls :meth:`set_epoch`).
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, bucket_batches: int = 50, seed: int = 0
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        chunk = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(order), chunk):
            bucket = sorted(order[start : start + chunk], key=self.lengths.__getitem__)
            batches += [bucket[i : i + self.batch_size] for i in range(0, len(bucket), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return len(self.lengths)
