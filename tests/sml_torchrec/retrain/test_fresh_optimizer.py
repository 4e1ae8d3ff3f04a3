"""A period's table training can restart row-wise Adagrad: zeroing its state is exactly a new
optimizer over the same tables; on 2 ranks, for each sharding type."""

import numpy as np
import pytest
import torch

from recsys_common.process_group import run_local


def _interactions(seed):
    from sml_torchrec.data.period_dataset import Interactions

    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, 12, 200), rng.integers(0, 30, 200)
    z = np.zeros(200, dtype=np.int64)
    return Interactions(u, i, z, z.astype(np.int32))


def _states(model):
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = []
    for state in model.dmp.fused_optimizer.state.values():
        for v in state.values():
            out += [s.tensor.clone() for s in v.local_shards()] if isinstance(v, ShardedTensor) \
                else [v.clone()]
    return out


def _run(sharding):
    from sml_torchrec.retrain.config import RetrainConfig
    from sml_torchrec.retrain.model import RetrainModel

    cfg = RetrainConfig(dim=8, biases=True, sharding=sharding, batch_size=32)
    torch.manual_seed(0)
    trained = RetrainModel(12, 30, cfg, transfer=False)
    trained.train_epoch(_interactions(0), 30, seed=1)
    used = any(bool(s.abs().sum() > 0) for s in _states(trained))
    tables = trained.export_tables()
    trained.reset_table_optimizer()
    zeroed = all(bool(s.abs().sum() == 0) for s in _states(trained))
    fresh = RetrainModel(12, 30, cfg, transfer=False)
    fresh.load_tables(tables)
    for m in (trained, fresh):
        m.train_epoch(_interactions(1), 30, seed=2)
    a, b = trained.export_tables(), fresh.export_tables()
    return used, zeroed, all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise", "column_wise"])
def test_reset_is_a_new_optimizer(sharding):
    for used, zeroed, same in run_local(_run, 2, (sharding,), threads=1, backend="gloo",
                                        timeout_s=300):
        assert used and zeroed and same


def _strategies(path):
    from sml_torchrec.data.period_dataset import PeriodDataset
    from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
    from sml_torchrec.retrain.strategies import strategy_class

    ds = PeriodDataset(path)
    roles = PeriodRoles(num_periods=3, init=1, first_online=2, first_test=2)
    g = torch.Generator().manual_seed(0)
    initial = {"user": torch.randn(ds.num_users, 4, generator=g),
               "item": torch.randn(ds.num_items, 4, generator=g)}
    out = {}
    for name in ("fine_tune", "sml", "asmg", "gru4rec"):
        for fresh in (True, False):
            cfg = RetrainConfig(dim=4, epochs=1, rounds=1, transfer_hidden=8,
                                fresh_optimizer=fresh)
            s = strategy_class(name)(ds, roles, cfg)
            s.start(initial)
            s.train_period(1)
            before = [float(t.abs().sum()) for m in s.trained_models() for t in _states(m)]
            s.start_period()
            after = [float(t.abs().sum()) for m in s.trained_models() for t in _states(m)]
            out[(name, fresh)] = (sum(before), sum(after))
    return out


def test_each_period_starts_a_fresh_optimizer_unless_told_not_to(tmp_path):
    from tests.sml_torchrec.retrain.test_popularity_and_cold_ids import _dataset

    _dataset(tmp_path / "ds")
    out = run_local(_strategies, 1, (str(tmp_path / "ds"),), threads=1, backend="gloo",
                    timeout_s=300)[0]
    for (name, fresh), (before, after) in out.items():
        assert before > 0, name
        assert after == (0 if fresh else before), (name, fresh)
