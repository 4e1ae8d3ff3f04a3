"""Ranking metrics for the two test protocols of period-by-period retraining.

* Full ranking (the SML paper's protocol): every test user ranks every item; recall@K and
  NDCG@K of the user's relevant items in the top K (:func:`full_ranking_metrics`).
* Sampled ranking (the authors' public code): each test interaction ranks its item among
  sampled negatives (:func:`sampled_ranking_metrics`; the negatives are drawn by
  ``sml_torchrec.data.eval_candidates``).

Everything here is plain torch/numpy and needs no process group: per-user (or per-interaction)
values come back as tensors, so callers can sum them across ranks before averaging.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _check_full_inputs(
    topk_ids: Tensor, truth_indptr: Tensor, truth_items: Tensor, ks: tuple[int, ...]
) -> tuple[Tensor, Tensor, Tensor]:
    """(topk_ids [U, Kmax], relevant items per user [U], truth_items [nnz]) as int64, checked."""
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
    return topk_ids, counts, items


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
    topk_ids, counts, items = _check_full_inputs(topk_ids, truth_indptr, truth_items, ks)
    U, kmax = topk_ids.shape

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
