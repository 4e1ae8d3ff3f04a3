"""Interactions -> shuffled, rank-disjoint mini-batches of KeyedJaggedTensors.

Each example is one positive (user, item) with one sampled negative item, as three
single-id features: ``user_id``, ``item_id``, ``neg_item_id`` (the last two look up the same
item table). Every rank sees a disjoint slice of each epoch's permutation, and every rank gets
the same number of batches (so collective ops in the model never wait on a rank that ran out):
the at most ``world_size - 1`` interactions that do not divide evenly are skipped, a different
few each epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

FEATURES = ("user_id", "item_id", "neg_item_id")


@dataclass
class Batch:
    """``features``: KJT with keys FEATURES, batch size B, one id per key per example."""

    features: KeyedJaggedTensor

    @property
    def size(self) -> int:
        return self.features.stride()

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(self.features.to(device=device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        self.features.record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(self.features.pin_memory())


def make_kjt(user: np.ndarray, item: np.ndarray, neg: np.ndarray) -> KeyedJaggedTensor:
    """A KJT of B examples with one id per feature; values ordered key-major as KJT expects."""
    b = len(user)
    values = torch.from_numpy(np.concatenate([user, item, neg]).astype(np.int64))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(FEATURES),
        values=values,
        lengths=torch.ones(3 * b, dtype=torch.int32),
    )


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    per_rank = n // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def iterate_batches(
    user: np.ndarray,
    item: np.ndarray,
    neg: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Yield this rank's batches for one epoch; ``seed`` should change per epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(user)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    mine = order[rank_slice(n, rank, world_size)]
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        yield Batch(make_kjt(user[idx], item[idx], neg[idx]))


def num_batches(n: int, batch_size: int, world_size: int = 1) -> int:
    return -(-(n // world_size) // batch_size)
