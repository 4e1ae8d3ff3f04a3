"""Ranking metrics for the two test protocols of period-by-period retraining.

* Full ranking (the SML paper's protocol): every test user ranks every item; recall@K and
  NDCG@K of the user's relevant items in the top K (:func:`full_ranking_metrics`).
* Sampled ranking (the authors' public code): each test interaction ranks its item among
  sampled negatives (:func:`sample_eval_negatives`, :func:`sampled_ranking_metrics`).

Everything here is plain torch/numpy and needs no process group: per-user (or per-interaction)
values come back as tensors, so callers can sum them across ranks before averaging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

KS: tuple[int, ...] = (5, 10, 20)


def topk_metric(protocol: str) -> str:
    """The name of a protocol's first metric: ``recall`` over all of a user's test items in
    the full protocol, ``hit`` (one positive per test case) in the sampled one."""
    return "recall" if protocol == "full" else "hit"


def metric_keys(protocol: str, ks: Sequence[int] = KS) -> list[str]:
    """results.json's metric keys of ``protocol``: ``recall@K`` (full) or ``hit@K``
    (sampled) for each K, then ``ndcg@K``."""
    return [f"{topk_metric(protocol)}@{k}" for k in ks] + [f"ndcg@{k}" for k in ks]


def upgrade_sampled_keys(row: dict) -> dict:
    """A sampled-protocol row of an older version, whose hit@K was called ``recall@K``."""
    return {("hit" + k[len("recall"):] if k.startswith("recall@") else k): v
            for k, v in row.items()}


def _gains(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Discount 1 / log2(rank + 2) of 0-based ranks 0..n-1: [n]."""
    return 1.0 / torch.log2(torch.arange(n, dtype=dtype) + 2.0)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be non-empty positive cut-offs, got {ks}")
    return ks


def full_ranking_metrics(
    topk_ids: Tensor, truth_indptr: Tensor, truth_items: Tensor, ks: Sequence[int] = KS
) -> dict[str, Tensor]:
    """Per-user recall@K and NDCG@K of a full ranking.

    Args:
        topk_ids: [U, Kmax] int64 item ids ranked best first, Kmax >= max(ks). Negative ids
            (the -1 padding of :func:`~sml_torchrec.distributed.sharded_topk.sharded_topk` when
            fewer than Kmax items could be ranked) never count as hits.
        truth_indptr: [U + 1] CSR row pointer; user u's relevant items are
            ``truth_items[truth_indptr[u]:truth_indptr[u + 1]]``. Every user needs at least one.
        truth_items: [nnz] int64 relevant item ids. Repeats within a user count once.
        ks: cut-offs.

    Returns:
        ``{"recall@K": [U], "ndcg@K": [U]}`` (float64) for each K in ``ks``.
        recall@K = |top-K ∩ truth| / |truth|; NDCG@K = DCG@K / IDCG@K with binary relevance,
        gain 1 / log2(rank + 2) (rank 0-based) and IDCG over min(|truth|, K) hits.
    """
    ks = _check_ks(ks)
    topk_ids = torch.as_tensor(topk_ids).long()
    indptr = torch.as_tensor(truth_indptr).long()
    items = torch.as_tensor(truth_items).long()
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be [U, Kmax], got shape {tuple(topk_ids.shape)}")
    U, kmax = topk_ids.shape
    if kmax < max(ks):
        raise ValueError(f"topk_ids has {kmax} columns, fewer than max(ks) = {max(ks)}")
    if indptr.shape != (U + 1,) or int(indptr[0]) != 0 or int(indptr[-1]) != len(items):
        raise ValueError(
            f"truth_indptr must be [U + 1] = [{U + 1}] from 0 to len(truth_items) = {len(items)}"
        )
    counts = indptr[1:] - indptr[:-1]
    if (counts < 0).any():
        raise ValueError("truth_indptr must be non-decreasing")
    if (counts == 0).any():
        bad = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"users without relevant items cannot be scored (rows {bad} ...)")
    if len(items) and int(items.min()) < 0:
        raise ValueError("truth_items must be non-negative ids")

    # One sorted key per (user, item) makes membership a binary search, for all users at once.
    stride = int(max(int(items.max()) if len(items) else 0, int(topk_ids.max()) if U else 0)) + 1
    owner = torch.repeat_interleave(torch.arange(U), counts)
    truth_keys = torch.unique(owner * stride + items)  # sorted; repeats dropped
    n_truth = torch.bincount(truth_keys // stride, minlength=U).to(torch.float64)

    valid = topk_ids >= 0
    ranked = torch.where(valid, topk_ids, 0)
    dup = torch.sort(torch.where(valid, ranked, -1 - torch.arange(kmax)), dim=1).values
    if (dup[:, 1:] == dup[:, :-1]).any():
        raise ValueError("topk_ids repeats an item within a row")
    keys = torch.arange(U).unsqueeze(1) * stride + ranked
    pos = torch.searchsorted(truth_keys, keys).clamp(max=max(len(truth_keys) - 1, 0))
    hits = (truth_keys[pos] == keys) & valid  # [U, Kmax]

    gains = _gains(kmax)
    dcg = torch.cumsum(hits.to(torch.float64) * gains, dim=1)  # [U, Kmax]
    n_hits = torch.cumsum(hits.to(torch.float64), dim=1)
    ideal = torch.cumsum(gains, dim=0)  # IDCG of i+1 relevant items at the top
    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"recall@{k}"] = n_hits[:, k - 1] / n_truth
    for k in ks:
        idcg = ideal[(n_truth.long().clamp(max=k) - 1)]
        out[f"ndcg@{k}"] = dcg[:, k - 1] / idcg
    return out


def sampled_ranking_metrics(
    pos_scores: Tensor,
    neg_scores: Tensor,
    neg_valid: Tensor | None = None,
    ks: Sequence[int] = KS,
) -> dict[str, Tensor]:
    """Per-interaction hit@K and NDCG@K of a positive ranked among sampled negatives.

    The positive's 0-based rank is the number of valid negatives it does not strictly beat:
    a negative scoring the same as the positive (a tie) counts against it, and so does a NaN on
    either side. This is the pessimistic rule: a model that gives every item the same score
    gets rank M and zero metrics rather than a perfect score.

    Args:
        pos_scores: [N] score of each interaction's own item.
        neg_scores: [N, M] scores of its negatives.
        neg_valid: [N, M] bool, False for padding (a pool that had fewer than M items);
            None means all valid.
        ks: cut-offs.

    Returns:
        ``{"hit@K": [N], "ndcg@K": [N]}`` (float64): hit@K = 1[rank < K],
        NDCG@K = 1 / log2(rank + 2) if rank < K else 0.
    """
    ks = _check_ks(ks)
    pos = torch.as_tensor(pos_scores)
    neg = torch.as_tensor(neg_scores)
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(
            f"need pos_scores [N] and neg_scores [N, M], got {tuple(pos.shape)} and "
            f"{tuple(neg.shape)}"
        )
    beaten = neg < pos.unsqueeze(1)  # False for ties and NaN: they count against the positive
    not_beaten = ~beaten
    if neg_valid is not None:
        neg_valid = torch.as_tensor(neg_valid, dtype=torch.bool)
        if neg_valid.shape != neg.shape:
            raise ValueError(f"neg_valid must be {tuple(neg.shape)}, got {tuple(neg_valid.shape)}")
        not_beaten &= neg_valid
    return sampled_metrics_from_ranks(not_beaten.sum(dim=1), ks)


def sampled_metrics_from_ranks(rank: Tensor, ks: Sequence[int] = KS) -> dict[str, Tensor]:
    """Per-interaction hit@K and NDCG@K from the positive's 0-based rank [N] (int64).

    The rank is what :func:`sampled_ranking_metrics` computes from the scores; callers that
    score in chunks keep only this [N] vector, not the [N, M] scores.

    Returns:
        ``{"hit@K": [N], "ndcg@K": [N]}`` (float64), as :func:`sampled_ranking_metrics`.
    """
    ks = _check_ks(ks)
    rank = torch.as_tensor(rank)
    if rank.dim() != 1:
        raise ValueError(f"rank must be [N], got shape {tuple(rank.shape)}")
    gain = 1.0 / torch.log2(rank.to(torch.float64) + 2.0)
    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"hit@{k}"] = (rank < k).to(torch.float64)
    for k in ks:
        out[f"ndcg@{k}"] = torch.where(rank < k, gain, torch.zeros_like(gain))
    return out


def average(per_user: dict[str, Tensor]) -> dict[str, float]:
    """Mean of each per-user (or per-interaction) metric tensor; raises on an empty one."""
    out = {}
    for name, v in per_user.items():
        v = torch.as_tensor(v)
        if v.numel() == 0:
            raise ValueError(f"metric {name!r} has no values to average")
        out[name] = float(v.to(torch.float64).mean())
    return out


def weighted_period_average(
    per_period: list[dict[str, float]], weights: list[int]
) -> dict[str, float]:
    """Average of per-period metric averages, period p weighted by ``weights[p]``.

    With weights = test interactions per period this equals the mean over all interactions
    pooled; with equal weights it is the plain mean over periods. Every period must report the
    same metric names; weights must be non-negative with a positive sum.
    """
    if len(per_period) != len(weights):
        raise ValueError(f"{len(per_period)} periods but {len(weights)} weights")
    if not per_period:
        raise ValueError("no periods to average")
    names = set(per_period[0])
    for i, row in enumerate(per_period):
        if set(row) != names:
            raise ValueError(f"period {i} has metrics {sorted(row)}, expected {sorted(names)}")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    return {n: float(np.dot(w, [row[n] for row in per_period]) / w.sum()) for n in per_period[0]}


# ------------------------------------------------------------------------------------------
# Sampled-protocol candidates


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
    hu = _int_array(history_users, "history_users")
    hi = _int_array(history_items, "history_items")
    tu = _int_array(test_users, "test_users")
    ti = _int_array(test_items, "test_items")
    ts = _int_array(test_timestamps, "test_timestamps")
    if len(hu) != len(hi):
        raise ValueError(f"history_users has {len(hu)} rows, history_items {len(hi)}")
    if not len(tu) == len(ti) == len(ts):
        raise ValueError(f"test arrays differ in length: {len(tu)}, {len(ti)}, {len(ts)}")
    M = int(num_negatives)
    if M < 0 or num_items < 1:
        raise ValueError(f"need num_negatives >= 0 and num_items >= 1, got {M}, {num_items}")
    for name, a in (("history_items", hi), ("test_items", ti)):
        if a.size and (a.min() < 0 or a.max() >= num_items):
            raise ValueError(f"{name} must lie in [0, {num_items})")
    for name, a in (("history_users", hu), ("test_users", tu)):
        if a.size and a.min() < 0:
            raise ValueError(f"{name} must be non-negative")

    N = len(tu)
    order = np.argsort(ts, kind="stable")
    u, it = tu[order], ti[order]
    steps = np.arange(N, dtype=np.int64)

    # Items in order of first appearance: the seen items at step j are a prefix of it.
    hist_seen = np.zeros(num_items, dtype=bool)
    hist_seen[hi] = True
    first_items, first_pos = np.unique(it, return_index=True)
    fresh = ~hist_seen[first_items]
    new_items, new_pos = first_items[fresh], first_pos[fresh]
    o = np.argsort(new_pos)
    new_items, new_pos = new_items[o], new_pos[o]
    first_order = np.concatenate([np.flatnonzero(hist_seen), new_items])
    n_seen = int(hist_seen.sum()) + np.searchsorted(new_pos, steps, side="right")

    # (user, item) pairs with the step from which each is known; only test users matter.
    test_user_set = np.unique(tu)
    hkeys = np.unique((hu * num_items + hi)[np.isin(hu, test_user_set)])
    tkeys, tfirst = np.unique(u * num_items + it, return_index=True)
    new_pair = ~np.isin(tkeys, hkeys, assume_unique=True)
    hist = _History(
        np.concatenate([hkeys, tkeys[new_pair]]),
        np.concatenate([np.full(len(hkeys), -1, np.int64), tfirst[new_pair]]),
        num_items,
    )

    # Pool size = seen items - the user's distinct items so far (all of which are seen).
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
    pool = n_seen - user_hist - user_new

    rng = np.random.default_rng(seed)
    out = np.full((N, M), -1, dtype=np.int64)  # rows in input order: row order[j] is step j
    got = np.zeros(N, dtype=np.int64)  # by step

    # Draws needed so the expected distinct accepted count reaches M + margin:
    # accepted draws hit pool items uniformly, so E[distinct] = P (1 - (1 - 1/n)^c).
    target = M + _MARGIN_SDS * math.sqrt(M) + 4
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(pool > target, target / np.maximum(pool, 1), 1.0)
        draws = np.ceil(-np.log1p(-frac) * n_seen)
    vector_rows = np.flatnonzero((pool > target) & (draws <= _MAX_DRAWS_PER_NEG * M + 64))
    if M > 0 and len(vector_rows):
        # Widest rows first, so a chunk's first row fixes its width and similar draw counts
        # share a chunk (dense rectangles, bounded memory).
        vector_rows = vector_rows[np.argsort(-draws[vector_rows], kind="stable")]
        start = 0
        while start < len(vector_rows):
            width = int(draws[vector_rows[start]])
            rows = vector_rows[start : start + max(1, _CHUNK_ELEMS // width)]
            _draw_chunk(
                rows, width, M, u, n_seen, first_order, hist, rng, order[rows], out, got,
                num_items,
            )
            start += len(rows)

    # Short, small-pool or unlucky rows: enumerate the pool and finish the draw exactly.
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

    valid = out >= 0
    short = int((pool < M).sum())
    return SampledCandidates(torch.from_numpy(out), torch.from_numpy(valid), short)


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
