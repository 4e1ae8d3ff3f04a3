import numpy as np

from sml_torchrec.data.batching import FEATURES, iterate_batches, num_batches


def _arrays(n):
    return np.arange(n), np.arange(n) + 1000, np.arange(n) + 2000


def test_kjt_keys_lengths_values():
    u, i, j = _arrays(10)
    batches = list(iterate_batches(u, i, j, batch_size=4, shuffle=False))
    assert [b.size for b in batches] == [4, 4, 2]
    kjt = batches[0].features
    assert kjt.keys() == list(FEATURES)
    assert kjt.lengths().tolist() == [1] * 12
    d = kjt.to_dict()
    assert d["user_id"].values().tolist() == [0, 1, 2, 3]
    assert d["item_id"].values().tolist() == [1000, 1001, 1002, 1003]
    assert d["neg_item_id"].values().tolist() == [2000, 2001, 2002, 2003]


def test_shuffle_keeps_triples_together_and_changes_per_seed():
    u, i, j = _arrays(50)
    e0 = [b.features.to_dict() for b in iterate_batches(u, i, j, 8, seed=0)]
    us = np.concatenate([d["user_id"].values().numpy() for d in e0])
    its = np.concatenate([d["item_id"].values().numpy() for d in e0])
    assert sorted(us.tolist()) == list(range(50))
    assert np.array_equal(its, us + 1000)
    e1 = np.concatenate([b.features.to_dict()["user_id"].values().numpy()
                         for b in iterate_batches(u, i, j, 8, seed=1)])
    assert not np.array_equal(us, e1)


def test_ranks_are_disjoint_and_equal_in_batches():
    u, i, j = _arrays(103)
    seen = []
    counts = []
    for r in range(3):
        bs = list(iterate_batches(u, i, j, 10, seed=5, rank=r, world_size=3))
        counts.append(len(bs))
        seen.append(np.concatenate([b.features.to_dict()["user_id"].values().numpy()
                                    for b in bs]))
    assert counts == [num_batches(103, 10, 3)] * 3
    assert all(len(s) == 34 for s in seen)
    allseen = np.concatenate(seen)
    assert len(np.unique(allseen)) == len(allseen) == 102
