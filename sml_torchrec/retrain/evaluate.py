"""Testing a served model W_{s-1} on period s under both protocols.

* ``full``: every user of D_s ranks every item that exists by the end of period s, with the
  item table's rows scored where they live (``sharded_topk``); recall/NDCG@{5,10,20} averaged
  over users.
* ``sampled``: the authors' protocol: each interaction ranks its item among 999 sampled
  negatives (see ``sml_torchrec.data.eval_candidates``); averaged over interactions.

The test data of a period is prepared once (:class:`PeriodTest`) and shared by all strategies,
so every strategy is scored on exactly the same users and candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from recsys_common.process_group import rank_block, rank_world
from sml_torchrec.data.eval_candidates import SampledCandidates, sample_eval_negatives
from sml_torchrec.data.period_dataset import Interactions, PeriodDataset
from sml_torchrec.distributed.sharded_topk import sharded_topk
from sml_torchrec.metrics import KS, full_ranking_metrics, sampled_metrics_from_ranks
from sml_torchrec.retrain.serving import Served, ServedModel, all_reduce_sum, serve

log = logging.getLogger(__name__)

SAMPLED_EVAL_CHUNK = 256
"""Test interactions the sampled protocol scores at once.

Its working memory is a handful of buffers allocated once per call and reused for every chunk:
the gathered negative rows [chunk, M, d] float32 (``chunk * M * d * 4`` bytes: 32.7 MB at
M = 999, d = 32), their ids [chunk, M] int64, scores [chunk, M] float32 and a mask
[chunk, M] bool, about ``chunk * M * (4 d + 17)`` bytes in all (37 MB at M = 999, d = 32).
Beyond that an evaluation keeps O(1) scalars per test interaction (its rank and metric values,
about 70 bytes), nothing of size M or d per interaction.

Why reused buffers and not just chunks: a fresh [chunk, M, d] block per chunk is freed into
glibc's heap (once one such block has been unmapped, glibc raises its mmap threshold to that
size), and how much of that freed heap stayed resident differed from run to run of the same
command: +0.14 to +0.87 GB over one period's evaluation. Each interaction is still scored by
the same einsum as before, so the results are bit-identical (the scores were also bit-equal
for chunks from 1 to 8192 interactions in a check on CPU).
"""

FULL_EVAL_SCORES = 1 << 22
"""Scores [queries, items] the full protocol holds at once (16 MB of float32): the query
chunk of :func:`~sml_torchrec.distributed.sharded_topk.sharded_topk` is this divided by the
rank's item rows, at most 1024 (its default) and at least 1."""


@dataclass
class PeriodTest:
    period: int
    num_items: int  # items that exist by the end of the period
    users: np.ndarray  # unique users of D_s [U]
    truth_indptr: torch.Tensor  # [U+1]
    truth_items: torch.Tensor  # [nnz]
    data: Interactions
    # This rank's share of the sampled candidates: rows rank_block(len(data)) of the period's
    # [n, M], since a rank scores only its share of the interactions.
    candidates: SampledCandidates | None
    # Ids below these were seen before period s (ids are numbered by first appearance): the
    # others are "cold", first seen in the tested period.
    known_users: int = 0
    known_items: int = 0


def prepare_test(
    ds: PeriodDataset, s: int, protocols: list[str], num_negatives: int, seed: int
) -> PeriodTest:
    d = ds[s]
    pairs = np.unique(d.user_id * ds.num_items + d.item_id)
    pu, pi = pairs // ds.num_items, pairs % ds.num_items
    users, counts = np.unique(pu, return_counts=True)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]))
    candidates = None
    if "sampled" in protocols:
        hist = ds.periods(0, s)
        candidates = sample_eval_negatives(
            hist.user_id, hist.item_id, d.user_id, d.item_id, d.timestamp,
            num_items=ds.num_items, num_negatives=num_negatives, seed=seed + s,
        )
        if candidates.short_pools and rank_world()[0] == 0:
            log.warning(
                "period %d: %d of %d test interactions had fewer than %d candidate negatives; "
                "used the whole pool", s, candidates.short_pools, len(d), num_negatives,
            )
        # Every rank draws the whole period (the draw runs in time order over all of it) but
        # keeps only its share: the [n, M] candidates of every online period are held for the
        # whole run, so this divides that memory by the number of ranks.
        sl = rank_block(len(d))
        if sl.stop - sl.start < len(d):
            candidates = SampledCandidates(candidates.items[sl].clone(),
                                           candidates.valid[sl].clone(), candidates.short_pools)
    return PeriodTest(s, ds.meta.items_upto[s], users, indptr, torch.from_numpy(pi), d,
                      candidates, ds.meta.users_upto[s - 1], ds.meta.items_upto[s - 1])


def _mean_over_ranks(sums: dict[str, float], count: int) -> dict[str, float]:
    keys = sorted(sums)
    t = all_reduce_sum(torch.tensor([sums[k] for k in keys] + [float(count)],
                                    dtype=torch.float64))
    return {k: float(t[i] / t[-1]) for i, k in enumerate(keys)}


def _sampled_ranks(
    u: torch.Tensor,
    u_row: torch.Tensor,
    items: torch.Tensor,
    pos_items: torch.Tensor,
    cand: torch.Tensor,
    valid: torch.Tensor,
    chunk: int = SAMPLED_EVAL_CHUNK,
) -> torch.Tensor:
    """0-based rank of each test interaction's item among its valid negatives: [n] int64.

    Args:
        u: [U, d] served vectors of the period's distinct users.
        u_row: [n] int64 row of ``u`` of each interaction's user.
        items: [I, d] served item table.
        pos_items: [n] int64 each interaction's own item.
        cand: [n, M] int64 negative ids, -1 for padding (read, never copied whole).
        valid: [n, M] bool, False for padding.
        chunk: interactions scored at once; the buffers below are [chunk, M(, d)] and reused,
            so a period's size changes how often they are filled, not how large they are.

    Same rule as :func:`~sml_torchrec.metrics.sampled_ranking_metrics`: a negative the positive
    does not strictly beat (tie, NaN) counts against it.
    """
    n, M = cand.shape
    d = items.shape[1]
    rank = torch.empty(n, dtype=torch.long)
    b = max(1, min(chunk, n))
    ids = torch.empty(b * M, dtype=torch.long)
    rows = torch.empty(b * M, d, dtype=items.dtype)
    not_beaten = torch.empty(b, M, dtype=torch.bool)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        m = c1 - c0
        uv = u[u_row[c0:c1]]  # [m, d]
        pos = (uv * items[pos_items[c0:c1]]).sum(-1)
        torch.clamp(cand[c0:c1].reshape(-1), min=0, out=ids[: m * M])
        torch.index_select(items, 0, ids[: m * M], out=rows[: m * M])
        neg = torch.einsum("nd,nmd->nm", uv, rows[: m * M].view(m, M, d))
        nb = not_beaten[:m]
        torch.lt(neg, pos.unsqueeze(1), out=nb)
        torch.logical_not(nb, out=nb)
        nb &= valid[c0:c1]
        torch.sum(nb, dim=1, out=rank[c0:c1])
    return rank


def _group(per: dict[str, torch.Tensor], mask: torch.Tensor, count_key: str) -> dict:
    """Means of per-user (full) metrics over ``mask`` [U], with the group's size."""
    n = int(mask.sum())
    return {**({k: float(v[mask].mean()) for k, v in per.items()} if n else {}), count_key: n}


def _truth_subset(test: PeriodTest, keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The truth CSR restricted to the pairs ``keep`` [nnz]: (users kept [U] bool, indptr,
    items); a user is kept when any of their pairs is."""
    counts = test.truth_indptr[1:] - test.truth_indptr[:-1]
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
    sub = torch.bincount(owner[keep], minlength=len(counts))
    rows = sub > 0
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sub[rows], 0)])
    return rows, indptr, test.truth_items[keep]


def _full(served: Served, test: PeriodTest) -> dict:
    """Full ranking: overall, and split by cold/warm users and by the truth's cold/warm items."""
    kmax = max(KS)
    block, offset = served.item_block, served.offset
    # Only items that exist by the end of period s are candidates.
    block = block[: max(0, min(len(block), test.num_items - offset))]
    chunk = max(1, min(1024, FULL_EVAL_SCORES // max(1, len(block))))
    _, ids = sharded_topk(served.user_vectors, block, offset, kmax, query_chunk=chunk)
    per_user = full_ranking_metrics(ids, test.truth_indptr, test.truth_items, KS)
    out: dict = {k: float(v.mean()) for k, v in per_user.items()}
    out["users"] = len(test.users)
    cold_user = torch.from_numpy(test.users >= test.known_users)
    split = {"cold_users": _group(per_user, cold_user, "users"),
             "warm_users": _group(per_user, ~cold_user, "users")}
    cold_item = test.truth_items >= test.known_items
    for name, keep in (("cold_items", cold_item), ("warm_items", ~cold_item)):
        rows, indptr, items = _truth_subset(test, keep)
        per = full_ranking_metrics(ids[rows], indptr, items, KS) if rows.any() else {}
        split[name] = _group(per, torch.ones(int(rows.sum()), dtype=torch.bool), "users")
    out["cold_warm"] = split
    return out


def _sampled(served: Served, test: PeriodTest) -> dict:
    """Sampled ranking over this rank's share of the interactions, averaged over all ranks;
    also over the interactions of cold/warm users and of cold/warm items."""
    items = served.item_table()
    n = len(test.data)
    sl = rank_block(n)
    if len(test.candidates.items) != sl.stop - sl.start:
        raise ValueError("test.candidates is not this rank's share; use prepare_test")
    user_id, item_id = test.data.user_id[sl], test.data.item_id[sl]
    u_row = torch.from_numpy(np.searchsorted(served.users, user_id))
    # A copy: the period's columns are read-only views of parquet buffers.
    ranks = _sampled_ranks(served.user_vectors, u_row, items, torch.tensor(item_id),
                           test.candidates.items, test.candidates.valid)
    m = sampled_metrics_from_ranks(ranks, KS)
    out: dict = _mean_over_ranks({k: float(v.sum()) for k, v in m.items()}, len(ranks))
    out["interactions"] = n
    cold_user = torch.from_numpy(user_id >= test.known_users)
    cold_item = torch.from_numpy(item_id >= test.known_items)
    split = {}
    for name, mask in (("cold_users", cold_user), ("warm_users", ~cold_user),
                       ("cold_items", cold_item), ("warm_items", ~cold_item)):
        count = torch.tensor([float(mask.sum())])
        total = int(all_reduce_sum(count).item())
        group = _mean_over_ranks({k: float(v[mask].sum()) for k, v in m.items()},
                                 int(mask.sum())) if total else {}
        split[name] = {**group, "interactions": total}
    out["cold_warm"] = split
    return out


@torch.no_grad()
def evaluate(model: ServedModel, test: PeriodTest, protocols: list[str],
             never_trained: str = "mean") -> dict:
    """Metrics of the served model on ``test``: ``{"full": {...}, "sampled": {...}}``.

    The model is served once (:func:`~sml_torchrec.retrain.serving.serve`, which applies the
    never-trained-id rule) and both protocols score those same vectors. Each protocol's dict
    holds the metrics, its count (``users`` / ``interactions``) and ``cold_warm``: the same
    metrics over the test users (or interactions) of users first seen in this period
    (``cold_users``) or before (``warm_users``), and over the test interactions whose item is
    first seen in this period (``cold_items``) or before (``warm_items``), each with its count.
    """
    served = serve(model, test.users, test.known_users, test.known_items, never_trained)
    out: dict[str, dict] = {}
    if "full" in protocols:
        out["full"] = _full(served, test)
    if "sampled" in protocols and test.candidates is not None:
        out["sampled"] = _sampled(served, test)
    return out
