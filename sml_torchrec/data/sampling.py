"""Negative sampling for training: one unobserved item per positive, vectorised and seeded.

"Unobserved" means: not among the items this user interacted with *in the same period*. The
paper samples "unobserved interactions of u" for each period's data D_t; a period-local set keeps
sampling independent of how much history is loaded and lets an item the user clicked long ago
serve as a negative today (tastes drift). Negatives are drawn uniformly from the items that exist
by the end of the period, ``range(num_items)`` with ``num_items = items_upto[t]``: items that
appear only later have no embedding signal yet and would waste the negative.
"""

from __future__ import annotations

import numpy as np


def sample_negatives(
    user: np.ndarray,
    item: np.ndarray,
    num_items: int,
    seed: int | np.random.Generator,
    max_rounds: int = 100,
) -> np.ndarray:
    """One negative item per (user, item) positive, never an item the user has in these arrays.

    Draws all candidates at once, then redraws only the collisions (a handful of rounds), so the
    cost is a few vectorised passes rather than a loop per interaction.
    """
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    if len(user) == 0:
        return np.zeros(0, dtype=np.int64)
    if item.max() >= num_items:
        raise ValueError(f"item id {int(item.max())} >= num_items {num_items}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    observed = np.unique(user * num_items + item)
    neg = rng.integers(0, num_items, size=len(user))
    todo = np.arange(len(user))
    for _ in range(max_rounds):
        keys = user[todo] * num_items + neg[todo]
        pos = np.searchsorted(observed, keys)
        hit = (pos < len(observed)) & (observed[np.minimum(pos, len(observed) - 1)] == keys)
        todo = todo[hit]
        if len(todo) == 0:
            return neg
        neg[todo] = rng.integers(0, num_items, size=len(todo))
    users_full = np.unique(user[todo])
    raise ValueError(
        f"could not find unobserved items for user(s) {users_full[:5].tolist()} after "
        f"{max_rounds} rounds: they interacted with (almost) all {num_items} items"
    )


def sample_k_negatives(
    user: np.ndarray, item: np.ndarray, num_items: int, k: int, seed: int
) -> np.ndarray:
    """[n, k] negatives: k independent draws of :func:`sample_negatives` (none observed)."""
    return np.stack(
        [sample_negatives(user, item, num_items, seed * 31 + j) for j in range(k)], axis=1
    )
