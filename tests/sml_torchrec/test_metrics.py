import math

import numpy as np
import pytest
import torch

from sml_torchrec.metrics import (
    KS,
    average,
    full_ranking_metrics,
    sample_eval_negatives,
    sampled_ranking_metrics,
    weighted_period_average,
)


def g(r: int) -> float:
    return 1.0 / math.log2(r + 2)


# ---------------------------------------------------------------- full ranking


def test_full_ranking_hand_computed():
    # User 0: truth {3, 7}; ranked 3 at rank 0, 7 at rank 2.  User 1: truth {9}, never ranked.
    topk = torch.tensor([[3, 1, 7, 4], [0, 1, 2, -1]])
    indptr = torch.tensor([0, 2, 3])
    truth = torch.tensor([7, 3, 9])
    m = full_ranking_metrics(topk, indptr, truth, ks=(1, 2, 3))
    assert m["recall@1"].tolist() == [0.5, 0.0]
    assert m["recall@2"].tolist() == [0.5, 0.0]
    assert m["recall@3"].tolist() == [1.0, 0.0]
    assert m["ndcg@1"][0].item() == pytest.approx(1.0)
    assert m["ndcg@2"][0].item() == pytest.approx(g(0) / (g(0) + g(1)))
    assert m["ndcg@3"][0].item() == pytest.approx((g(0) + g(2)) / (g(0) + g(1)))
    assert m["ndcg@3"][1].item() == 0.0


def test_full_ranking_idcg_uses_min_truth_k():
    # 3 relevant items, K = 2: a perfect top-2 scores NDCG 1 but recall 2/3.
    m = full_ranking_metrics(torch.tensor([[5, 6, 0]]), torch.tensor([0, 3]),
                             torch.tensor([5, 6, 8]), ks=(2,))
    assert m["ndcg@2"].item() == pytest.approx(1.0)
    assert m["recall@2"].item() == pytest.approx(2 / 3)


def _full_loop(topk: torch.Tensor, indptr, truth, ks) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {f"{m}@{k}": [] for m in ("recall", "ndcg") for k in ks}
    for u in range(topk.shape[0]):
        rel = set(truth[indptr[u] : indptr[u + 1]].tolist())
        for k in ks:
            top = topk[u, :k].tolist()
            hits = [i in rel for i in top]
            out[f"recall@{k}"].append(sum(hits) / len(rel))
            dcg = sum(g(r) for r, h in enumerate(hits) if h)
            out[f"ndcg@{k}"].append(dcg / sum(g(r) for r in range(min(len(rel), k))))
    return out


def test_full_ranking_matches_loop_on_random_data():
    gen = torch.Generator().manual_seed(0)
    U, n_items, kmax = 40, 60, 20
    topk = torch.stack([torch.randperm(n_items, generator=gen)[:kmax] for _ in range(U)])
    counts = torch.randint(1, 12, (U,), generator=gen)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    truth = torch.cat([torch.randperm(n_items, generator=gen)[:c] for c in counts.tolist()])
    m = full_ranking_metrics(topk, indptr, truth)
    ref = _full_loop(topk, indptr, truth, KS)
    assert set(m) == set(ref)
    for name in ref:
        assert m[name].shape == (U,)
        torch.testing.assert_close(m[name], torch.tensor(ref[name], dtype=torch.float64))
    assert m["recall@20"].sum() > 0  # the random case does contain hits


def test_full_ranking_rejects_bad_input():
    topk = torch.tensor([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="without relevant"):
        full_ranking_metrics(topk, torch.tensor([0, 1, 1]), torch.tensor([1]), ks=(2,))
    with pytest.raises(ValueError, match="max\\(ks\\)"):
        full_ranking_metrics(topk, torch.tensor([0, 1, 2]), torch.tensor([1, 3]), ks=(5,))
    with pytest.raises(ValueError, match="repeats"):
        full_ranking_metrics(torch.tensor([[1, 1]]), torch.tensor([0, 1]), torch.tensor([1]),
                             ks=(2,))


# ---------------------------------------------------------------- sampled ranking


def test_sampled_ranking_hand_computed_with_ties_and_padding():
    pos = torch.tensor([0.5, 0.5, 0.5, 0.5])
    neg = torch.tensor([
        [0.1, 0.2, 0.3],  # beats all: rank 0
        [0.9, 0.2, 0.3],  # one higher: rank 1
        [0.5, 0.2, 0.9],  # a tie and a higher: rank 2 (ties count against the positive)
        [0.9, 0.9, 0.9],  # all higher but two are padding: rank 1
    ])
    valid = torch.tensor([[True] * 3, [True] * 3, [True] * 3, [True, False, False]])
    m = sampled_ranking_metrics(pos, neg, valid, ks=(1, 2))
    assert m["hit@1"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert m["hit@2"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert m["ndcg@2"].tolist() == pytest.approx([1.0, g(1), 0.0, g(1)])
    assert m["ndcg@1"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_sampled_constant_scores_get_nothing():
    m = sampled_ranking_metrics(torch.zeros(3), torch.zeros(3, 10), ks=(5,))
    assert m["hit@5"].sum().item() == 0.0


def test_sampled_matches_loop_on_random_data():
    gen = torch.Generator().manual_seed(1)
    N, M = 50, 30
    # Integer scores so that ties happen.
    pos = torch.randint(0, 10, (N,), generator=gen).float()
    neg = torch.randint(0, 10, (N, M), generator=gen).float()
    valid = torch.rand(N, M, generator=gen) > 0.3
    m = sampled_ranking_metrics(pos, neg, valid)
    for n in range(N):
        rank = sum(1 for j in range(M) if valid[n, j] and neg[n, j] >= pos[n])
        for k in KS:
            assert m[f"hit@{k}"][n].item() == float(rank < k)
            assert m[f"ndcg@{k}"][n].item() == pytest.approx(g(rank) if rank < k else 0.0)


# ---------------------------------------------------------------- averages


def test_average_and_weighted_period_average():
    assert average({"a": torch.tensor([1.0, 2.0, 6.0])}) == {"a": 3.0}
    with pytest.raises(ValueError):
        average({"a": torch.zeros(0)})
    out = weighted_period_average([{"a": 1.0, "b": 0.0}, {"a": 4.0, "b": 1.0}], [1, 2])
    assert out == pytest.approx({"a": 3.0, "b": 2 / 3})
    with pytest.raises(ValueError):
        weighted_period_average([{"a": 1.0}, {"b": 1.0}], [1, 1])
    with pytest.raises(ValueError):
        weighted_period_average([{"a": 1.0}], [0])


# ---------------------------------------------------------------- negatives


def _random_log(seed: int, n_hist=150, n_test=120, users=12, items=80, last_item=None):
    rng = np.random.default_rng(seed)
    last_item = last_item or items
    hu = rng.integers(0, users, n_hist)
    hi = rng.integers(0, last_item // 2, n_hist)  # later items appear only in the test
    tu = rng.integers(0, users, n_test)
    ti = rng.integers(0, last_item, n_test)
    ts = rng.integers(0, 40, n_test)  # many equal timestamps
    return hu, hi, tu, ti, ts


def _pools_loop(hu, hi, tu, ti, ts) -> list[set[int]]:
    """The protocol, one test interaction at a time (by input index)."""
    order = sorted(range(len(tu)), key=lambda j: ts[j])  # Python's sort is stable
    seen = set(hi.tolist())
    had: dict[int, set[int]] = {}
    for u, i in zip(hu.tolist(), hi.tolist()):
        had.setdefault(u, set()).add(i)
    pools: list[set[int]] = [set()] * len(tu)
    for j in order:
        u, i = int(tu[j]), int(ti[j])
        seen.add(i)
        had.setdefault(u, set()).add(i)
        pools[j] = seen - had[u]
    return pools


@pytest.mark.parametrize("M", [5, 30])
def test_negatives_follow_the_protocol(M):
    hu, hi, tu, ti, ts = _random_log(0)
    c = sample_eval_negatives(hu, hi, tu, ti, ts, num_items=80, num_negatives=M, seed=3)
    pools = _pools_loop(hu, hi, tu, ti, ts)
    assert c.items.shape == (len(tu), M) and c.valid.shape == (len(tu), M)
    assert c.items.dtype == torch.int64 and c.valid.dtype == torch.bool
    short = 0
    for j, pool in enumerate(pools):
        row = c.items[j][c.valid[j]].tolist()
        assert set(row) <= pool, f"row {j} has items outside its pool"
        assert len(set(row)) == len(row), f"row {j} repeats a negative"
        assert len(row) == min(M, len(pool))
        assert (c.items[j][~c.valid[j]] == -1).all()
        short += len(pool) < M
    assert c.short_pools == short
    if M == 30:
        assert short > 0 and short < len(tu)  # both paths were exercised


def test_negatives_are_reproducible_and_seeded():
    hu, hi, tu, ti, ts = _random_log(1, items=400, last_item=400)
    a = sample_eval_negatives(hu, hi, tu, ti, ts, num_items=400, num_negatives=20, seed=5)
    b = sample_eval_negatives(torch.from_numpy(hu), torch.from_numpy(hi), torch.from_numpy(tu),
                              torch.from_numpy(ti), torch.from_numpy(ts), num_items=400,
                              num_negatives=20, seed=5)
    c = sample_eval_negatives(hu, hi, tu, ti, ts, num_items=400, num_negatives=20, seed=6)
    assert torch.equal(a.items, b.items) and torch.equal(a.valid, b.valid)
    assert not torch.equal(a.items, c.items)


def test_negatives_keep_input_order():
    hu, hi, tu, ti, ts = _random_log(2, items=300, last_item=300)
    perm = np.random.default_rng(0).permutation(len(tu))
    # Distinct timestamps, so presenting the interactions in another order keeps time order.
    ts = np.arange(len(tu)) * 10
    a = sample_eval_negatives(hu, hi, tu, ti, ts, num_items=300, num_negatives=10, seed=0)
    b = sample_eval_negatives(hu, hi, tu[perm], ti[perm], ts[perm], num_items=300,
                              num_negatives=10, seed=0)
    # The draw depends only on the time order, so row perm[j] of a is row j of b.
    assert torch.equal(a.items[torch.from_numpy(perm)], b.items)
    pools = _pools_loop(hu, hi, tu[perm], ti[perm], ts[perm])
    for j in range(len(perm)):
        assert set(b.items[j].tolist()) <= pools[j]


def test_negatives_are_roughly_uniform():
    # One user, large pool: every allowed item should be drawn about equally often.
    hu = np.array([0, 0], dtype=np.int64)
    hi = np.array([0, 1], dtype=np.int64)
    n_items, reps = 50, 400
    tu = np.zeros(reps, dtype=np.int64)
    ti = np.full(reps, 2, dtype=np.int64)
    ts = np.zeros(reps, dtype=np.int64)
    hi_all = np.concatenate([hi, np.arange(3, n_items)])  # item 3.. seen via another user
    hu_all = np.concatenate([hu, np.ones(n_items - 3, dtype=np.int64)])
    c = sample_eval_negatives(hu_all, hi_all, tu, ti, ts, num_items=n_items, num_negatives=10)
    counts = np.bincount(c.items.flatten().numpy(), minlength=n_items)
    assert counts[:3].sum() == 0  # the user's own items
    allowed = counts[3:]
    expected = reps * 10 / (n_items - 3)
    assert allowed.min() > 0.6 * expected and allowed.max() < 1.4 * expected
