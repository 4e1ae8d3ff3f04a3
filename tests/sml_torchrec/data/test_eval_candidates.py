"""The sampled protocol's negatives follow the authors' pools, are seeded and uniform."""

import numpy as np
import pytest
import torch

from sml_torchrec.data.eval_candidates import sample_eval_negatives


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
