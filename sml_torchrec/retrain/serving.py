"""A model as it is served to one test period, the same way for every strategy.

Evaluation reads a model through a small protocol (:class:`ServedModel`): the vectors of some
users, and this rank's block of item rows. :func:`serve` asks each once per tested period, so
both protocols score the same vectors (for SML, the transfer runs over the item table once).

**Never-trained ids.** A user or item first seen in the tested period s has no row any model
learned from: the tables still hold their initial values, and a sequential model encodes an
empty history. The rule, the same for every strategy (popularity included, where a never-seen
item's count is a trained row's 0): such an id is served the mean of the served rows of the ids
seen before period s (users ``0..users_upto[s-1]-1``, items ``0..items_upto[s-1]-1``; ids are
numbered by first appearance). That is the model's answer for "someone we know nothing about":
an average known user, or an item scored like an average known one. Measured against serving
the rows as they are (``--never-trained untrained``) in the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

NEVER_TRAINED_RULES = ("mean", "untrained")

USER_MEAN_CHUNK = 1 << 16
"""Known users whose vectors are computed at once for their mean (bounds its memory)."""


class ServedModel(Protocol):
    """What evaluation reads of a model: every strategy's model provides it."""

    num_items: int

    def user_vectors(self, users: np.ndarray) -> Tensor:
        """[U] user ids -> [U, d] served vectors, identical on every rank (a collective)."""

    def item_block(self) -> tuple[Tensor, int]:
        """This rank's block of served item rows (disjoint across ranks, together all items)
        and the id of its first row."""


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over the ranks, in place (``t`` itself on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


@dataclass
class Served:
    """One model served to one period: ``user_vectors`` [U, d] of ``users`` [U] and this
    rank's ``item_block`` [n, d] of rows ``offset..offset+n-1``, the rule applied to both."""

    users: np.ndarray
    user_vectors: Tensor
    item_block: Tensor
    offset: int
    num_items: int
    _table: Tensor | None = field(default=None, repr=False)

    def item_table(self) -> Tensor:
        """All served item rows [num_items, d] on every rank (a collective; gathered once)."""
        if self._table is None:
            self._table = gather_rows(self.item_block, self.offset, self.num_items)
        return self._table


def gather_rows(block: Tensor, offset: int, num_rows: int) -> Tensor:
    """Every rank's block of rows (disjoint, from :meth:`ServedModel.item_block`) as one
    [num_rows, d] table on every rank (a collective)."""
    full = torch.zeros(num_rows, block.shape[1], dtype=block.dtype)
    full[offset : offset + len(block)] = block
    return all_reduce_sum(full)


def known_user_mean(model: ServedModel, known_users: int) -> Tensor:
    """Mean served vector of users ``0..known_users-1`` [d] (a collective), in chunks."""
    total = None
    for start in range(0, known_users, USER_MEAN_CHUNK):
        ids = np.arange(start, min(known_users, start + USER_MEAN_CHUNK), dtype=np.int64)
        part = model.user_vectors(ids).to(torch.float64).sum(0)
        total = part if total is None else total + part
    return (total / known_users).to(torch.float32)


def known_item_mean(block: Tensor, offset: int, known_items: int) -> Tensor:
    """Mean of item rows ``0..known_items-1`` over every rank's block [d] (a collective)."""
    mine = block[: max(0, min(len(block), known_items - offset))]
    sums = torch.cat([mine.to(torch.float64).sum(0), torch.tensor([float(len(mine))],
                                                                   dtype=torch.float64)])
    sums = all_reduce_sum(sums)
    return (sums[:-1] / sums[-1].clamp(min=1)).to(block.dtype)


def serve(
    model: ServedModel, users: np.ndarray, known_users: int, known_items: int,
    rule: str = "mean",
) -> Served:
    """Serve ``model`` to a period whose ids below ``known_users`` / ``known_items`` were seen
    in training: ``users``' vectors and this rank's item rows, never-trained ids per ``rule``."""
    if rule not in NEVER_TRAINED_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {NEVER_TRAINED_RULES}")
    users = np.asarray(users, dtype=np.int64)
    queries = model.user_vectors(users)
    block, offset = model.item_block()
    if rule == "mean":
        # ``users`` are the same on every rank, so every rank takes the same branch.
        cold_users = torch.from_numpy(users >= known_users)
        if known_users > 0 and bool(cold_users.any()):
            queries = queries.clone()
            queries[cold_users] = known_user_mean(model, known_users).to(queries.dtype)
        # Every rank joins the item mean's all-reduce, whether or not it holds cold rows.
        if known_items > 0 and known_items < model.num_items:
            mean = known_item_mean(block, offset, known_items)
            cold = max(0, known_items - offset)
            if cold < len(block):
                block = block.clone()
                block[cold:] = mean
    return Served(users, queries, block, offset, model.num_items)
