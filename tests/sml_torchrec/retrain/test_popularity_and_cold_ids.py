"""The popularity anchors against a hand-computed example, and the never-trained-id rule applied
identically by every strategy's served model, on 2 ranks."""

import math

import numpy as np
import pytest
import torch

from recsys_common.process_group import run_local
from sml_torchrec.data.period_dataset import PeriodDataset, write_period_dataset

# (user, item) per period, in time order; ids are numbered by first appearance.
PERIODS = [
    [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2), (3, 3), (3, 4), (3, 5), (3, 6)],
    [(0, 2), (1, 2), (2, 3), (1, 3), (2, 6)],
    [(0, 4), (2, 1), (4, 7)],  # user 4 and item 7 are first seen here: cold
]


def _dataset(path):
    rows = [(u, i, t) for t, period in enumerate(PERIODS) for u, i in period]
    u, i, t = (np.array(x, dtype=np.int64) for x in zip(*rows))
    write_period_dataset(path, u, i, np.arange(len(u)) * 10, t.astype(np.int32), cut="given")


def _popularity(path, name):
    from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
    from sml_torchrec.retrain.evaluate import evaluate, prepare_test
    from sml_torchrec.retrain.strategies import strategy_class

    ds = PeriodDataset(path)
    roles = PeriodRoles(num_periods=3, init=1, first_online=2, first_test=2)
    strategy = strategy_class(name)(ds, roles, RetrainConfig())
    strategy.start({})
    strategy.train_period(1)
    return evaluate(strategy.model, prepare_test(ds, 2, ["full"], 3, 0), ["full"])["full"]


def _g(rank):
    return 1 / math.log2(rank + 2)


# Counts served for period 2. pop (D_0 + D_1): items 0..6 = 3, 2, 3, 3, 1, 1, 2; the cold item
# 7 gets their mean 15/7, so the ranking is 0, 2, 3, 7, 1, 6, 4, 5. recent_pop (D_1 only):
# 0, 0, 2, 2, 0, 0, 1, and 7 gets 5/7: 2, 3, 6, 7, 0, 1, 4, 5. Period 2's truth: user 0 -> item
# 4, user 2 -> item 1, user 4 (cold) -> item 7 (cold).
EXPECTED = {
    # 0-based ranks of each user's item: pop 6, 4, 3; recent_pop 6, 5, 3.
    "pop": {"recall@5": 2 / 3, "ndcg@5": (_g(4) + _g(3)) / 3, "recall@10": 1.0,
            "ndcg@10": (_g(6) + _g(4) + _g(3)) / 3,
            "cold_users": 1.0, "warm_users": 0.5, "cold_items": 1.0, "warm_items": 0.5},
    "recent_pop": {"recall@5": 1 / 3, "ndcg@5": _g(3) / 3, "recall@10": 1.0,
                   "ndcg@10": (_g(6) + _g(5) + _g(3)) / 3,
                   "cold_users": 1.0, "warm_users": 0.0, "cold_items": 1.0, "warm_items": 0.0},
}


@pytest.mark.parametrize("name", ["pop", "recent_pop"])
def test_popularity_matches_a_hand_computed_ranking(name, tmp_path):
    _dataset(tmp_path / "ds")
    r0, r1 = run_local(_popularity, 2, (str(tmp_path / "ds"), name), threads=1,
                       backend="gloo", timeout_s=120)
    assert r0 == r1
    want = EXPECTED[name]
    for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"):
        assert r0[k] == pytest.approx(want[k]), k
    assert r0["users"] == 3
    split = r0["cold_warm"]
    for group in ("cold_users", "warm_users", "cold_items", "warm_items"):
        assert split[group]["recall@5"] == pytest.approx(want[group]), group
    assert (split["cold_users"]["users"], split["warm_users"]["users"]) == (1, 2)


# -- the never-trained-id rule ------------------------------------------------------------------
def _served_rows(path, biases):
    from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
    from sml_torchrec.retrain.serving import gather_rows, serve
    from sml_torchrec.retrain.strategies import STRATEGY_NAMES, strategy_class

    ds = PeriodDataset(path)
    roles = PeriodRoles(num_periods=3, init=1, first_online=2, first_test=2)
    cfg = RetrainConfig(dim=4, epochs=1, init_epochs=1, rounds=1, transfer_hidden=8,
                        biases=biases)
    g = torch.Generator().manual_seed(0)
    initial = {"user": torch.randn(ds.num_users, 4, generator=g),
               "item": torch.randn(ds.num_items, 4, generator=g)}
    if biases:
        initial |= {"user_bias": torch.randn(ds.num_users, 1, generator=g).repeat(1, 4),
                    "item_bias": torch.randn(ds.num_items, 1, generator=g).repeat(1, 4)}
    known_users, known_items = ds.meta.users_upto[1], ds.meta.items_upto[1]
    users = np.arange(ds.num_users)
    out = {}
    for name in STRATEGY_NAMES:
        strategy = strategy_class(name)(ds, roles, cfg)
        strategy.start(initial)
        strategy.train_period(1)
        model = strategy.model
        raw_users = model.user_vectors(users)
        raw_items = gather_rows(*model.item_block(), model.num_items)
        served = serve(model, users, known_users, known_items, "mean")
        untrained = serve(model, users, known_users, known_items, "untrained")
        out[name] = {
            "raw_users": raw_users, "raw_items": raw_items,
            "users": served.user_vectors, "items": served.item_table(),
            "untrained_users": untrained.user_vectors, "untrained_items": untrained.item_table(),
        }
    return out, known_users, known_items


@pytest.mark.parametrize("biases", [False, True])
def test_never_trained_ids_get_the_mean_of_known_rows_in_every_strategy(biases, tmp_path):
    from sml_torchrec.retrain.strategies import STRATEGY_NAMES

    _dataset(tmp_path / "ds")
    (r0, ku, ki), (r1, _, _) = run_local(_served_rows, 2, (str(tmp_path / "ds"), biases),
                                         threads=1, backend="gloo", timeout_s=300)
    assert (ku, ki) == (4, 7)  # user 4 and item 7 are cold in period 2
    assert set(r0) == set(STRATEGY_NAMES)
    for name, r in r0.items():
        for kind, known in (("users", ku), ("items", ki)):
            raw, got = r["raw_" + kind], r[kind]
            assert torch.equal(got, r1[name][kind]), (name, kind)  # same on both ranks
            assert torch.equal(got[:known], raw[:known]), (name, kind)  # known rows untouched
            mean = raw[:known].double().mean(0).float()
            assert torch.allclose(got[known:], mean.expand_as(got[known:]), atol=1e-6), \
                (name, kind)
            assert torch.equal(r["untrained_" + kind], raw), (name, kind)
        # The rule changes something: no model already served the cold rows as the mean.
        if name not in ("pop", "recent_pop"):
            assert not torch.allclose(r["raw_items"][ki:], r["items"][ki:]), name
