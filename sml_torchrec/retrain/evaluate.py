"""Testing a served model W_{s-1} on period s under both protocols.

* ``full``: every user of D_s ranks every item that exists by the end of period s, with the
  item table's rows scored where they live (``sharded_topk``); recall/NDCG@{5,10,20} averaged
  over users.
* ``sampled``: the authors' protocol: each interaction ranks its item among 999 sampled
  negatives (see ``sml_torchrec.metrics.sample_eval_negatives``); averaged over interactions.

The test data of a period is prepared once (:class:`PeriodTest`) and shared by all strategies,
so every strategy is scored on exactly the same users and candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from recsys_common.process_group import rank_world
from sml_torchrec.data.period_dataset import Interactions, PeriodDataset
from sml_torchrec.distributed.sharded_topk import sharded_topk
from sml_torchrec.metrics import (
    KS,
    SampledCandidates,
    full_ranking_metrics,
    sample_eval_negatives,
    sampled_ranking_metrics,
)
from sml_torchrec.retrain.model import RetrainModel

log = logging.getLogger(__name__)


@dataclass
class PeriodTest:
    period: int
    num_items: int  # items that exist by the end of the period
    users: np.ndarray  # unique users of D_s [U]
    truth_indptr: torch.Tensor  # [U+1]
    truth_items: torch.Tensor  # [nnz]
    data: Interactions
    candidates: SampledCandidates | None


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
    return PeriodTest(s, ds.meta.items_upto[s], users, indptr, torch.from_numpy(pi), d,
                      candidates)


def _mean_over_ranks(sums: dict[str, float], count: int) -> dict[str, float]:
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return {k: float(t[i] / t[-1]) for i, k in enumerate(keys)}


@torch.no_grad()
def evaluate(model: RetrainModel, test: PeriodTest, protocols: list[str]) -> dict:
    """Metrics of the served model on ``test``: ``{"full": {...}, "sampled": {...}}``."""
    out: dict[str, dict[str, float]] = {}
    kmax = max(KS)
    if "full" in protocols:
        queries = model.user_vectors(test.users)
        block, offset = model.item_block()
        # Only items that exist by the end of period s are candidates.
        block = block[: max(0, min(len(block), test.num_items - offset))]
        _, ids = sharded_topk(queries, block, offset, kmax)
        per_user = full_ranking_metrics(ids, test.truth_indptr, test.truth_items, KS)
        out["full"] = {k: float(v.mean()) for k, v in per_user.items()}
        out["full"]["users"] = len(test.users)
    if "sampled" in protocols and test.candidates is not None:
        items = model.item_table()
        rank, world_size = rank_world()
        n = len(test.data)
        per = -(-n // world_size)
        sl = slice(rank * per, min(n, (rank + 1) * per))
        users = test.data.user_id[sl]
        u = model.user_vectors(np.unique(test.data.user_id))
        uid = np.unique(test.data.user_id)
        uvec = u[torch.from_numpy(np.searchsorted(uid, users))]
        pos = (uvec * items[torch.from_numpy(test.data.item_id[sl])]).sum(-1)
        cand = test.candidates.items[sl].clamp(min=0)
        # Chunked: [chunk, 999, d] gathered rows at a time, not [n, 999, d].
        negs = torch.cat([
            torch.einsum("nd,nmd->nm", uvec[i : i + 256], items[cand[i : i + 256]])
            for i in range(0, len(cand), 256)
        ]) if len(cand) else torch.zeros(0, cand.shape[1])
        m = sampled_ranking_metrics(pos, negs, test.candidates.valid[sl], KS)
        out["sampled"] = _mean_over_ranks({k: float(v.sum()) for k, v in m.items()}, len(pos))
        out["sampled"]["interactions"] = n
    return out
