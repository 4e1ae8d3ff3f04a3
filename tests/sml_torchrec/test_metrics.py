import math

import pytest
import torch

from sml_torchrec.metrics import KS, full_ranking_metrics, sampled_ranking_metrics


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
