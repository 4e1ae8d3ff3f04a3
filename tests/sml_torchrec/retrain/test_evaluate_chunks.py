"""The chunked sampled-protocol scoring ranks exactly as scoring the whole period at once."""

from __future__ import annotations

import pytest
import torch

from sml_torchrec.metrics import KS, sampled_metrics_from_ranks, sampled_ranking_metrics
from sml_torchrec.retrain.evaluate import _sampled_ranks


def _case(n: int = 50, m: int = 40, num_items: int = 30, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Few distinct values, so ties between the positive and its negatives are common.
    items = torch.randint(-2, 3, (num_items, d), generator=g).float()
    items[3] = float("nan")  # a NaN score counts against the positive
    u = torch.randint(-2, 3, (12, d), generator=g).float()
    u_row = torch.randint(0, 12, (n,), generator=g)
    pos_items = torch.randint(0, num_items, (n,), generator=g)
    cand = torch.randint(0, num_items, (n, m), generator=g)
    cand[::3, m - 7 :] = -1  # padded short pools
    return u, u_row, items, pos_items, cand, cand >= 0


def _whole(u, u_row, items, pos_items, cand, valid):
    uv = u[u_row]
    pos = (uv * items[pos_items]).sum(-1)
    neg = torch.einsum("nd,nmd->nm", uv, items[cand.clamp(min=0)])
    return pos, neg


@pytest.mark.parametrize("chunk", [1, 7, 50, 256])
def test_chunked_ranks_equal_whole_period_metrics(chunk):
    args = _case()
    pos, neg = _whole(*args)
    ranks = _sampled_ranks(*args, chunk=chunk)
    assert ranks.dtype == torch.long and ranks.shape == (len(pos),)
    want = sampled_ranking_metrics(pos, neg, args[-1], KS)
    got = sampled_metrics_from_ranks(ranks, KS)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    # The case exercises what the rule is about: ties, NaN rows and padding all occur.
    assert (neg == pos[:, None]).any() and torch.isnan(neg).any() and (~args[-1]).any()
    assert ranks.max() > 0 and (ranks < max(KS)).any()


def test_ranks_of_an_empty_period():
    u, u_row, items, pos_items, cand, valid = _case(n=0)
    assert _sampled_ranks(u, u_row, items, pos_items, cand, valid).shape == (0,)


def test_metrics_from_ranks_rejects_a_matrix():
    with pytest.raises(ValueError, match=r"rank must be \[N\]"):
        sampled_metrics_from_ranks(torch.zeros(2, 3, dtype=torch.long))
