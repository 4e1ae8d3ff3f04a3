"""``--biases``: every MF-based strategy trains a user and an item bias and serves them as two
extra columns, so that served rows score exactly like the trained model; on 2 ranks."""

import numpy as np
import pytest
import torch

from recsys_common.process_group import run_local
from tests.sml_torchrec.retrain.test_popularity_and_cold_ids import _dataset

MF_STRATEGIES = ("sml", "fine_tune", "full_retrain", "sample_based", "incctr", "asmg")
DIM = 4


def _served(path, sharding):
    from sml_torchrec.data.batching import make_kjt
    from sml_torchrec.data.period_dataset import PeriodDataset
    from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
    from sml_torchrec.retrain.serving import gather_rows
    from sml_torchrec.retrain.strategies import strategy_class

    ds = PeriodDataset(path)
    roles = PeriodRoles(num_periods=3, init=1, first_online=2, first_test=2)
    cfg = RetrainConfig(dim=DIM, epochs=2, init_epochs=1, rounds=1, transfer_hidden=8,
                        biases=True, sharding=sharding)
    g = torch.Generator().manual_seed(0)
    initial = {"user": torch.randn(ds.num_users, DIM, generator=g),
               "item": torch.randn(ds.num_items, DIM, generator=g),
               "user_bias": torch.zeros(ds.num_users, 4),
               "item_bias": torch.linspace(-1, 1, ds.num_items)[:, None].repeat(1, 4)}
    users, items, negs = np.array([0, 1, 2, 3, 4]), np.array([0, 2, 3, 6, 7]), np.array([5] * 5)
    out = {}
    for name in MF_STRATEGIES:
        strategy = strategy_class(name)(ds, roles, cfg)
        strategy.start(initial)
        strategy.train_period(1)
        model = strategy.model
        u = model.user_vectors(np.arange(ds.num_users))
        it = gather_rows(*model.item_block(), model.num_items)
        if model.transfer:
            model.embedding.set_mode("frozen")
        with torch.no_grad():
            pos, neg, _ = model.dmp(make_kjt(users, items, negs))
        tables = model.export_tables()
        out[name] = {"users": u, "items": it, "pos": pos, "neg": neg,
                     "item_bias": tables["item_bias"]}
        if model.transfer:  # SML's step 2 trains Θ only: the biases stay as step 1 left them
            model.train_epoch(ds[1], ds.meta.items_upto[1], 7, "transfer")
            after = model.export_tables()
            out[name]["step2_kept_biases"] = all(
                torch.equal(after[k], tables[k]) for k in ("user_bias", "item_bias"))
    return out, initial["item_bias"]


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise"])
def test_served_rows_carry_the_biases_and_score_like_the_model(sharding, tmp_path):
    _dataset(tmp_path / "ds")
    (r0, start), (r1, _) = run_local(_served, 2, (str(tmp_path / "ds"), sharding), threads=1,
                                     backend="gloo", timeout_s=300)
    users, items, negs = [0, 1, 2, 3, 4], [0, 2, 3, 6, 7], [5] * 5
    for name, r in r0.items():
        u, it = r["users"], r["items"]
        assert u.shape[1] == it.shape[1] == DIM + 2, name
        assert torch.equal(u, r1[name]["users"]) and torch.equal(it, r1[name]["items"]), name
        assert torch.all(u[:, DIM] == 1) and torch.all(it[:, DIM + 1] == 1), name
        # [p_u, 1, b_u] . [q_i, b_i, 1] = p_u.q_i + b_i + b_u: the model's own logit.
        torch.testing.assert_close((u[users] * it[items]).sum(-1), r["pos"], msg=name)
        torch.testing.assert_close((u[users] * it[negs]).sum(-1), r["neg"], msg=name)
        bias = r["item_bias"]
        assert torch.equal(bias, bias[:, :1].expand_as(bias)), name  # the 4 columns stay equal
        torch.testing.assert_close(it[:, DIM], bias[:, 0], msg=name)
        assert not torch.allclose(bias, start), name  # trained in period 1
    assert r0["sml"]["step2_kept_biases"]
