"""Negatives of the sampled test protocol, drawn as the authors' code draws them.

Each test interaction of a period ranks its item among ``M`` items drawn uniformly from its
pool: every item seen in any interaction so far (all of history, plus the period's interactions
up to and including this one, in time order) minus every item this user has had so far (this
one included). :func:`sample_eval_negatives` draws them for a whole period at once: most rows by
vectorised rejection sampling (:func:`_draw_chunk`), the rest by enumerating the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class SampledCandidates:
    """Negatives of each test interaction, in the order of the test arrays.

    items: [N, M] int64 negative item ids, -1 where ``valid`` is False.
    valid: [N, M] bool, False for padding of a pool smaller than M.
    short_pools: how many interactions had a pool smaller than M.
    """

    items: Tensor
    valid: Tensor
    short_pools: int


def _int_array(x, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {a.dtype}")
    return a.astype(np.int64, copy=False)


class _History:
    """Who has interacted with what, and when, as sorted (user, item) keys.

    A key ``user * num_items + item`` is "known at step j" when its time is <= j: history
    pairs have time -1, a test pair the time-order index of its first occurrence.
    """

    def __init__(self, keys: np.ndarray, times: np.ndarray, num_items: int) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.times = times[order]
        self.num_items = num_items

    def excluded(self, user: int, items: np.ndarray, step: int) -> np.ndarray:
        """Bool mask [n] over ``items`` [n]: ``user`` already had the item by ``step``."""
        q = user * self.num_items + items
        if not len(self.keys):
            return np.zeros(q.shape, dtype=bool)
        pos = np.searchsorted(self.keys, q)
        np.minimum(pos, len(self.keys) - 1, out=pos)
        return (self.keys[pos] == q) & (self.times[pos] <= step)

    def known(self, users: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All (row, item) with row r's user ``users[r]`` having the item by ``steps[r]``."""
        lo = np.searchsorted(self.keys, users * self.num_items)
        hi = np.searchsorted(self.keys, (users + 1) * self.num_items)
        n = hi - lo
        row = np.repeat(np.arange(len(users)), n)
        pos = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
        ok = self.times[pos] <= steps[row]
        return row[ok], self.keys[pos[ok]] % self.num_items


# Oversampling: draw enough candidates that the expected number of distinct accepted ones
# exceeds M by a few standard deviations, so the per-row top-up is rarely needed.
_MARGIN_SDS = 4.0
_MAX_DRAWS_PER_NEG = 4  # above this many draws per negative a row is enumerated exactly
_CHUNK_ELEMS = 1 << 22  # candidate draws held at once


def sample_eval_negatives(
    history_users,
    history_items,
    test_users,
    test_items,
    test_timestamps,
    num_items: int,
    num_negatives: int = 999,
    seed: int = 0,
) -> SampledCandidates:
    """Negatives for the sampled protocol, as the authors' code draws them.

    Test interactions are taken in time order (a stable sort by timestamp, so equal times keep
    their input order). For each, the pool is every item seen in any interaction so far (all
    of history, plus the test interactions up to and including this one) minus every item this
    user has interacted with so far (this one included). ``num_negatives`` distinct items are
    drawn uniformly from the pool; a pool of at most that size is used whole, and one strictly
    smaller is counted in ``short_pools`` and padded (id -1, valid False).

    Uniformity: candidates are drawn i.i.d. from the seen items and the user's own rejected;
    the first M distinct survivors in draw order are a uniform M-subset of the pool. A row that
    falls short is completed by a uniform draw without replacement from the rest of its pool,
    which continues the same process. Rows whose pool is small relative to the seen items are
    enumerated instead.

    Args:
        history_users, history_items: [H] int64 interactions before the test period.
        test_users, test_items, test_timestamps: [N] int64 test interactions.
        num_items: ids are in [0, num_items).
        num_negatives: M.
        seed: the draw is a function of the inputs and the seed.

    Returns:
        :class:`SampledCandidates` with rows in the order of the test arrays.
    """
    hu, hi, tu, ti, ts = _checked_inputs(history_users, history_items, test_users, test_items,
                                         test_timestamps, num_items, num_negatives)
    M = int(num_negatives)
    order = np.argsort(ts, kind="stable")
    u, it = tu[order], ti[order]  # by step: step j is the j-th test interaction in time
    first_order, n_seen = _seen_items(hi, it, num_items)
    hist, user_had = _pairs_known(hu, hi, u, it, num_items)
    pool = n_seen - user_had

    rng = np.random.default_rng(seed)
    out = np.full((len(u), M), -1, dtype=np.int64)  # rows in input order: row order[j] is step j
    got = np.zeros(len(u), dtype=np.int64)  # by step
    _draw_large_pools(pool, n_seen, M, u, first_order, hist, rng, order, out, got, num_items)
    _draw_exactly(pool, n_seen, M, u, first_order, hist, rng, order, out, got)
    short = int((pool < M).sum())
    return SampledCandidates(torch.from_numpy(out), torch.from_numpy(out >= 0), short)


def _checked_inputs(history_users, history_items, test_users, test_items, test_timestamps,
                    num_items: int, num_negatives: int) -> tuple[np.ndarray, ...]:
    """The five id arrays as int64 numpy, after checking lengths and ranges."""
    hu = _int_array(history_users, "history_users")
    hi = _int_array(history_items, "history_items")
    tu = _int_array(test_users, "test_users")
    ti = _int_array(test_items, "test_items")
    ts = _int_array(test_timestamps, "test_timestamps")
    if len(hu) != len(hi):
        raise ValueError(f"history_users has {len(hu)} rows, history_items {len(hi)}")
    if not len(tu) == len(ti) == len(ts):
        raise ValueError(f"test arrays differ in length: {len(tu)}, {len(ti)}, {len(ts)}")
    if int(num_negatives) < 0 or num_items < 1:
        raise ValueError(f"need num_negatives >= 0 and num_items >= 1, got {num_negatives}, "
                         f"{num_items}")
    for name, a in (("history_items", hi), ("test_items", ti)):
        if a.size and (a.min() < 0 or a.max() >= num_items):
            raise ValueError(f"{name} must lie in [0, {num_items})")
    for name, a in (("history_users", hu), ("test_users", tu)):
        if a.size and a.min() < 0:
            raise ValueError(f"{name} must be non-negative")
    return hu, hi, tu, ti, ts


def _seen_items(hi: np.ndarray, it: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Items in order of first appearance [S] and how many are seen at each step [N]: the
    items seen at step j are ``first_order[:n_seen[j]]``."""
    hist_seen = np.zeros(num_items, dtype=bool)
    hist_seen[hi] = True
    first_items, first_pos = np.unique(it, return_index=True)
    fresh = ~hist_seen[first_items]
    new_items, new_pos = first_items[fresh], first_pos[fresh]
    o = np.argsort(new_pos)
    new_items, new_pos = new_items[o], new_pos[o]
    first_order = np.concatenate([np.flatnonzero(hist_seen), new_items])
    steps = np.arange(len(it), dtype=np.int64)
    n_seen = int(hist_seen.sum()) + np.searchsorted(new_pos, steps, side="right")
    return first_order, n_seen


def _pairs_known(hu: np.ndarray, hi: np.ndarray, u: np.ndarray, it: np.ndarray,
                 num_items: int) -> tuple[_History, np.ndarray]:
    """The (user, item) pairs with the step from which each is known (only test users
    matter), and how many distinct items each step's user has had by then [N]."""
    N = len(u)
    hkeys = np.unique((hu * num_items + hi)[np.isin(hu, np.unique(u))])
    tkeys, tfirst = np.unique(u * num_items + it, return_index=True)
    new_pair = ~np.isin(tkeys, hkeys, assume_unique=True)
    hist = _History(
        np.concatenate([hkeys, tkeys[new_pair]]),
        np.concatenate([np.full(len(hkeys), -1, np.int64), tfirst[new_pair]]),
        num_items,
    )
    # Distinct items before the period, plus the new pairs among this user's steps so far.
    hist_users, hist_counts = np.unique(hkeys // num_items, return_counts=True)
    user_hist = np.zeros(N, dtype=np.int64)
    if len(hist_users):
        idx = np.searchsorted(hist_users, u).clip(max=len(hist_users) - 1)
        hit = hist_users[idx] == u
        user_hist[hit] = hist_counts[idx[hit]]
    flag = np.zeros(N, dtype=np.int64)
    flag[tfirst[new_pair]] = 1
    by_user = np.argsort(u, kind="stable")  # time order within each user
    csum = np.cumsum(flag[by_user])
    starts = np.r_[0, np.flatnonzero(np.diff(u[by_user])) + 1] if N else np.zeros(0, np.int64)
    group_len = np.diff(np.r_[starts, N])
    before = np.repeat(np.r_[0, csum][starts], group_len)
    user_new = np.empty(N, dtype=np.int64)
    user_new[by_user] = csum - before
    return hist, user_hist + user_new


def _draw_large_pools(pool: np.ndarray, n_seen: np.ndarray, M: int, u: np.ndarray,
                      first_order: np.ndarray, hist: _History, rng: np.random.Generator,
                      order: np.ndarray, out: np.ndarray, got: np.ndarray,
                      num_items: int) -> None:
    """Rejection-sample every row whose pool is large next to M, in chunks of similar width."""
    # Draws needed so the expected distinct accepted count reaches M + margin:
    # accepted draws hit pool items uniformly, so E[distinct] = P (1 - (1 - 1/n)^c).
    target = M + _MARGIN_SDS * math.sqrt(M) + 4
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(pool > target, target / np.maximum(pool, 1), 1.0)
        draws = np.ceil(-np.log1p(-frac) * n_seen)
    vector_rows = np.flatnonzero((pool > target) & (draws <= _MAX_DRAWS_PER_NEG * M + 64))
    if M == 0 or not len(vector_rows):
        return
    # Widest rows first, so a chunk's first row fixes its width and similar draw counts share
    # a chunk (dense rectangles, bounded memory).
    vector_rows = vector_rows[np.argsort(-draws[vector_rows], kind="stable")]
    start = 0
    while start < len(vector_rows):
        width = int(draws[vector_rows[start]])
        rows = vector_rows[start : start + max(1, _CHUNK_ELEMS // width)]
        _draw_chunk(rows, width, M, u, n_seen, first_order, hist, rng, order[rows], out, got,
                    num_items)
        start += len(rows)


def _draw_exactly(pool: np.ndarray, n_seen: np.ndarray, M: int, u: np.ndarray,
                  first_order: np.ndarray, hist: _History, rng: np.random.Generator,
                  order: np.ndarray, out: np.ndarray, got: np.ndarray) -> None:
    """Short, small-pool or unlucky rows: enumerate the pool and finish the draw exactly."""
    for j in np.flatnonzero(got < np.minimum(pool, M)):
        seen = first_order[: n_seen[j]]
        cand = seen[~hist.excluded(u[j], seen, j)]
        if len(cand) != pool[j]:  # the counting above and the enumeration must agree
            raise AssertionError(f"pool of step {j}: counted {pool[j]}, found {len(cand)}")
        row = out[order[j]]
        if got[j]:
            cand = cand[~np.isin(cand, row[: got[j]])]
        take = min(M - got[j], len(cand))
        row[got[j] : got[j] + take] = rng.choice(cand, size=take, replace=False)
        got[j] += take


def _draw_chunk(
    rows: np.ndarray,
    width: int,
    M: int,
    u: np.ndarray,
    n_seen: np.ndarray,
    first_order: np.ndarray,
    hist: _History,
    rng: np.random.Generator,
    dest: np.ndarray,
    out: np.ndarray,
    got: np.ndarray,
    num_items: int,
) -> None:
    """Rejection-sample rows [R] at once: ``width`` draws each, the first M distinct survivors.

    Writes row r's negatives to ``out[dest[r]]`` and their count to ``got[rows[r]]``.
    """
    R = len(rows)
    cand = first_order[rng.integers(0, n_seen[rows][:, None], size=(R, width))]
    # One flat sort of bit-packed keys (row, item, draw position + 1), with each of the user's
    # own items added at position 0: within a (row, item) group the first entry is then either
    # the user's item (reject the whole group) or the item's first draw (accept it), and
    # repeats come after their first draw. Shifts, not division: int64 division is slow.
    cb = int(width).bit_length()  # position bits (positions 0..width)
    ib = max(1, int(num_items - 1).bit_length())
    if int(R - 1).bit_length() + ib + cb > 63:
        raise ValueError(f"num_items = {num_items} too large to pack sampling keys")
    xr, xi = hist.known(u[rows], rows)
    row_ids = np.arange(R, dtype=np.int64)
    keys = np.concatenate([
        (((row_ids[:, None] << ib) | cand) << cb | np.arange(1, width + 1)).ravel(),
        ((xr << ib) | xi) << cb,
    ])
    keys.sort()
    group = keys >> cb
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(group[1:], group[:-1], out=first[1:])
    first &= (keys & ((1 << cb) - 1)) != 0
    acc = keys[first]
    # Accepted draws re-sorted by (row, position): rank within the row in draw order.
    acc = ((acc >> (ib + cb)) << cb) | (acc & ((1 << cb) - 1))
    acc.sort()
    acc_row = acc >> cb
    starts = np.searchsorted(acc_row, row_ids)
    rank = np.arange(len(acc)) - starts[acc_row]
    keep = rank < M
    acc_row, rank = acc_row[keep], rank[keep]
    out[dest[acc_row], rank] = cand[acc_row, (acc[keep] & ((1 << cb) - 1)) - 1]
    got[rows] = np.minimum(np.diff(np.r_[starts, len(acc)]), M)
