import numpy as np

from sml_torchrec.data.period_dataset import PeriodDataset
from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic, generate

SMALL = SyntheticConfig(num_users=300, periods=6, initial_items=60, new_items_per_period=30)


def test_deterministic_per_seed():
    a, b = generate(SMALL), generate(SMALL)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.item, b.item)
    assert np.array_equal(a.timestamp, b.timestamp)
    c = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 1}))
    assert len(c.user) != len(a.user) or not np.array_equal(c.item, a.item)


def test_new_items_every_period_and_popularity_shifts(tmp_path):
    build_synthetic(tmp_path / "ds", SMALL)
    ds = PeriodDataset(tmp_path / "ds")
    summary = ds.summary()
    assert all(r["new_items"] > 0 for r in summary)
    # Popularity drifts: the item share distribution changes between consecutive periods
    # by much more than sampling noise would explain (total variation > 0.2).
    n = ds.num_items
    shares = [np.bincount(ds[t].item_id, minlength=n) / ds.count(t) for t in range(ds.num_periods)]
    tv = [0.5 * np.abs(shares[t] - shares[t - 1]).sum() for t in range(1, len(shares))]
    assert min(tv) > 0.2
    # Old items fade: items born at period 0 get a shrinking share.
    born0 = ds.meta.items_upto[0]
    old_share = [s[:born0].sum() for s in shares]
    assert old_share[-1] < 0.5 * old_share[0]


def test_user_tastes_drift():
    # With drift 0, a user's item choices in consecutive periods overlap more than with drift.
    def overlap(drift):
        g = generate(SyntheticConfig(**{**SMALL.__dict__, "drift": drift, "item_lifetime": 1e9,
                                        "popularity_walk": 0.0, "new_items_per_period": 0}))
        j = []
        for t in range(1, 6):
            for u in range(0, 300, 3):
                a = set(g.item[(g.user == u) & (g.period == t - 1)].tolist())
                b = set(g.item[(g.user == u) & (g.period == t)].tolist())
                if a and b:
                    j.append(len(a & b) / len(a | b))
        return np.mean(j)

    assert overlap(0.0) > overlap(0.8) + 0.02
