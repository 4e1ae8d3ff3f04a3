"""Top-K over a row-wise sharded item table, for full-ranking evaluation.

Every rank holds a contiguous block of item rows and the same (replicated) query vectors. Each
rank scores its block, keeps its own top-k, and only the k best (score, id) candidates per
query travel: ``B * k * world`` numbers instead of the whole ``n_items * d`` table.

Tie rule (here and in :func:`topk_reference`): higher score first, then lower global id. Masked
pairs score -inf; a query with fewer than k unmasked items is padded with score -inf and id -1
(a real score of -inf is treated as masked). Scores must not be NaN.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _world(process_group) -> int:
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(process_group)


def _check(queries: Tensor, items: Tensor, k: int, eq: Tensor | None, ei: Tensor | None) -> None:
    if queries.dim() != 2 or items.dim() != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"need queries [B, d] and items [n, d], got {tuple(queries.shape)} and "
            f"{tuple(items.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if (eq is None) != (ei is None) or (eq is not None and eq.shape != ei.shape):
        raise ValueError("exclude_query and exclude_item must be given together, same shape")


def _ordered_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row of ``scores`` [b, n] (k <= n) by (score desc, column asc).

    ``torch.topk`` does not say which of several items tied at the k-th score it keeps. A row
    where every item tied at that score made it in is already right; only the other rows (rare
    with real-valued scores; rows with fewer than k unmasked items are among them) are redone,
    picking the lowest columns at the threshold. Returns (values [b, k], columns [b, k]).
    """
    n = scores.shape[1]
    # One extra place tells whether the k-th score continues past the cut: an item left out
    # with a score equal to the k-th is exactly a (k+1)-th score equal to the k-th.
    vals, cols = torch.topk(scores, min(k + 1, n), dim=1)
    if torch.isnan(vals).any():  # topk ranks NaN highest, so any NaN in a row shows up here
        raise ValueError("scores contain NaN")
    if n > k:
        crowded = torch.nonzero(vals[:, k] == vals[:, k - 1]).flatten()
        vals, cols = vals[:, :k], cols[:, :k].contiguous()
    else:
        crowded = cols.new_zeros(0)
    thr = vals[:, -1:]
    if len(crowded):
        sub, t = scores[crowded], thr[crowded]
        above, at = sub > t, sub == t
        need = k - above.sum(dim=1, keepdim=True)
        sel = above | (at & (at.cumsum(dim=1) <= need))
        cols[crowded] = torch.nonzero(sel)[:, 1].view(len(crowded), k)
    cols = torch.sort(cols, dim=1).values  # ascending columns, so stable sort breaks ties
    v = scores.gather(1, cols)
    order = torch.sort(v, dim=1, descending=True, stable=True).indices
    return v.gather(1, order), cols.gather(1, order)


def _local_topk(
    queries: Tensor,
    items: Tensor,
    row_offset: int,
    k: int,
    exclude_query: Tensor | None,
    exclude_item: Tensor | None,
    query_chunk: int,
) -> tuple[Tensor, Tensor]:
    """This block's top-k, padded to k: (scores [B, k], global ids [B, k], -1 where masked)."""
    B, n = queries.shape[0], items.shape[0]
    dtype = torch.result_type(queries, items)
    out_v = torch.full((B, k), float("-inf"), dtype=dtype, device=queries.device)
    out_i = torch.full((B, k), -1, dtype=torch.long, device=queries.device)
    if n == 0 or B == 0:
        return out_v, out_i
    kk = min(k, n)
    if exclude_query is not None:
        eq = exclude_query.to(queries.device).long()
        ei = exclude_item.to(queries.device).long() - row_offset
        mine = (ei >= 0) & (ei < n)
        eq, ei = eq[mine], ei[mine]
        order = torch.argsort(eq)
        eq, ei = eq[order], ei[order]
    for c0 in range(0, B, query_chunk):
        c1 = min(B, c0 + query_chunk)
        scores = queries[c0:c1] @ items.T  # [b, n]
        if exclude_query is not None:
            lo, hi = torch.searchsorted(eq, torch.tensor([c0, c1], device=eq.device)).tolist()
            scores[eq[lo:hi] - c0, ei[lo:hi]] = float("-inf")
        v, cols = _ordered_topk(scores, kk)
        out_v[c0:c1, :kk] = v
        out_i[c0:c1, :kk] = cols + row_offset
    out_i[out_v == float("-inf")] = -1
    return out_v, out_i


def _merge(vals: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best k of candidate lists [B, m] by (score desc, id asc); -inf entries become id -1."""
    by_id = torch.argsort(ids, dim=1, stable=True)
    vals, ids = vals.gather(1, by_id), ids.gather(1, by_id)
    by_score = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    vals, ids = vals.gather(1, by_score), ids.gather(1, by_score)
    ids = torch.where(vals == float("-inf"), torch.full_like(ids, -1), ids)
    return vals, ids


def sharded_topk(
    queries: Tensor,
    local_items: Tensor,
    row_offset: int,
    k: int,
    exclude_query: Tensor | None = None,
    exclude_item: Tensor | None = None,
    process_group=None,
    *,
    query_chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Top-k items of each query over an item table split row-wise across ranks.

    Args:
        queries: [B, d], the same on every rank.
        local_items: [n_local, d], this rank's rows, global ids row_offset .. row_offset +
            n_local - 1. n_local may be 0 and may be smaller than k.
        row_offset: global id of this rank's first row.
        k: how many items per query.
        exclude_query, exclude_item: [E] (query index, global item id) pairs to mask out, the
            same on every rank (each rank applies those in its block).
        process_group: the group to merge over; None is the default group. Without an
            initialised process group, or with one rank, this is the local computation.
        query_chunk: queries scored at once, bounding memory at query_chunk x n_local scores.

    Returns:
        (scores [B, k], global ids [B, k]), identical on every rank and equal to
        :func:`topk_reference` over the concatenated table; padded with (-inf, -1) when fewer
        than k items are unmasked.
    """
    _check(queries, local_items, k, exclude_query, exclude_item)
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
    vals, ids = _local_topk(
        queries, local_items, row_offset, k, exclude_query, exclude_item, query_chunk
    )
    world = _world(process_group)
    if world == 1:
        return vals, ids
    # One collective for both: float64 holds any float32 score and any id below 2^53 exactly.
    packed = torch.stack([vals.to(torch.float64), ids.to(torch.float64)])  # [2, B, k]
    parts = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(parts, packed, group=process_group)
    allc = torch.cat(parts, dim=2)  # [2, B, world * k]
    return _merge(allc[0].to(vals.dtype), allc[1].long(), k)


def topk_reference(
    queries: Tensor,
    items: Tensor,
    k: int,
    exclude_query: Tensor | None = None,
    exclude_item: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Single-process top-k over the whole table [n, d] by a full stable sort (slow, plain).

    Same tie rule and padding as :func:`sharded_topk`: (scores [B, k], ids [B, k]).
    """
    _check(queries, items, k, exclude_query, exclude_item)
    scores = queries @ items.T
    if exclude_query is not None:
        scores[exclude_query.long(), exclude_item.long()] = float("-inf")
    # Columns are in id order, so a stable descending sort puts lower ids first among ties.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    vals = scores.gather(1, order)
    ids = torch.where(vals == float("-inf"), torch.full_like(order, -1), order)
    B, m = vals.shape
    if m < k:
        vals = torch.cat([vals, vals.new_full((B, k - m), float("-inf"))], dim=1)
        ids = torch.cat([ids, ids.new_full((B, k - m), -1)], dim=1)
    return vals, ids


def gather_full_topk(
    queries: Tensor,
    local_items: Tensor,
    row_offset: int,
    k: int,
    exclude_query: Tensor | None = None,
    exclude_item: Tensor | None = None,
    process_group=None,
    *,
    query_chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """The baseline: all-gather the whole item table to every rank, then rank it there.

    Same arguments and result as :func:`sharded_topk` (the ranking kernel is the same, so a
    benchmark of the two measures moving the table, not a different top-k). The blocks must
    tile 0 .. n_items - 1 without gaps or overlaps.
    """
    _check(queries, local_items, k, exclude_query, exclude_item)
    world = _world(process_group)
    if world == 1:
        return _local_topk(queries, local_items, row_offset, k, exclude_query, exclude_item,
                           query_chunk)
    meta = torch.tensor([row_offset, local_items.shape[0]], dtype=torch.long)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=process_group)
    offsets, sizes = zip(*(m.tolist() for m in metas))
    n_max = max(sizes)
    # all_gather needs equal shapes: pad every block to the largest.
    padded = local_items.new_zeros((n_max, local_items.shape[1]))
    padded[: local_items.shape[0]] = local_items
    blocks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded, group=process_group)
    total = sum(sizes)
    table = local_items.new_empty((total, local_items.shape[1]))
    covered = torch.zeros(total, dtype=torch.bool)
    for off, n, blk in zip(offsets, sizes, blocks):
        if off < 0 or off + n > total or covered[off : off + n].any():
            raise ValueError(f"row blocks {list(zip(offsets, sizes))} do not tile the table")
        table[off : off + n] = blk[:n]
        covered[off : off + n] = True
    return _local_topk(queries, table, 0, k, exclude_query, exclude_item, query_chunk)
