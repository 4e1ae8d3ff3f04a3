"""IncCTR and ASMG on sharded tables, 2 ranks on gloo, every sharding type: what each phase
changes and what it leaves exactly alone, what is identical across ranks, and the shard-local
generation against the same generator applied to the gathered tables."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from recsys_common.process_group import run_local
from sml_torchrec.data.period_dataset import PeriodDataset, write_period_dataset
from sml_torchrec.distributed.shard_ops import gather_full, same_layout, table_weights
from sml_torchrec.retrain.serving import gather_rows

NU, NI, D, P = 30, 24, 8, 6
SHARDINGS = ["table_wise", "row_wise", "column_wise"]


def _dataset(path):
    rng = np.random.default_rng(0)
    n = 90
    user = np.concatenate([np.arange(NU), rng.integers(0, NU, n * P - NU)])
    item = np.concatenate([np.arange(NI), rng.integers(0, NI, n * P - NI)])
    ts = np.arange(n * P)
    write_period_dataset(path, user, item, ts, ts // n, cut="given")


def _setup(path, name, sharding, **extra):
    from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
    from sml_torchrec.retrain.strategies import strategy_class

    ds = PeriodDataset(path)
    cfg = RetrainConfig(dim=D, sharding=sharding, batch_size=32, epochs=1, table_lr=0.1,
                        reservoir_size=50, **extra)
    roles = PeriodRoles(num_periods=P, init=1, first_online=4, first_test=5)
    g = torch.Generator().manual_seed(5)
    initial = {"user": torch.randn(NU, D, generator=g) * 0.3,
               "item": torch.randn(NI, D, generator=g) * 0.3}
    strategy = strategy_class(name)(ds, roles, cfg)
    strategy.start(initial)
    return strategy


def _full(model):
    return {n: gather_full(w).clone() for n, w in table_weights(model.embedding).items()}


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _rank_diff(x):
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return float((parts[0] - parts[1]).abs().max())


# -- IncCTR ---------------------------------------------------------------------------------------
def _incctr(path, sharding):
    s = _setup(path, "incctr", sharding)
    report = {"layout": all(same_layout(table_weights(s.model.embedding)[n],
                                        table_weights(s.teacher.embedding)[n])
                            for n in ("user", "item"))}
    teacher0, student0 = _full(s.teacher), _full(s.model)
    data, items = s.ds[1], s.ds.meta.items_upto[1]
    s.model.train_epoch(data, items, 0, "tables", loss_fn=s._loss)
    report["teacher_moved"] = _max_diff(_full(s.teacher), teacher0)
    report["student_moved"] = _max_diff(_full(s.model), student0)
    s.train_period(1)
    s.train_period(2)
    report["teacher_is_student"] = _max_diff(_full(s.teacher), _full(s.model))
    report["reservoir"] = len(s.reservoir)
    report["served"] = gather_rows(*s.model.item_block(), s.model.num_items)
    return report


def _incctr_pure_distillation(path):
    """λ = 1, no L2, teacher = student: the distillation gradient σ(ŷ) - σ(ỹ) is 0 at the
    start and stays 0, so the student never leaves the teacher."""
    s = _setup(path, "incctr", "row_wise", kd_weight=1.0, l2_tables=0.0)
    before = _full(s.model)
    s.model.train_epoch(s.ds[1], s.ds.meta.items_upto[1], 0, "tables", loss_fn=s._loss)
    return _max_diff(_full(s.model), before)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("succ") / "ds"
    _dataset(path)
    return str(path)


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_incctr_teacher_is_frozen_within_a_period(data_path, sharding):
    r0, r1 = run_local(_incctr, 2, (data_path, sharding), threads=1, timeout_s=240)
    for r in (r0, r1):
        assert r["layout"]  # teacher and student share a plan: the copy is shard-local
        assert r["teacher_moved"] == 0.0
        assert r["student_moved"] > 1e-4
        assert r["teacher_is_student"] == 0.0  # the next period distills this one
        assert r["reservoir"] == 50
    assert torch.equal(r0["served"], r1["served"])


def test_incctr_distillation_alone_does_not_move_the_student(data_path):
    moved = run_local(_incctr_pure_distillation, 2, (data_path,), threads=1, timeout_s=240)
    assert moved == [0.0, 0.0]


# -- ASMG -----------------------------------------------------------------------------------------
def _bank_full(s, table, slot):
    return gather_full(s.bank.weights[f"{table}__{slot}"]).clone()


def _state_full(s, table):
    return torch.stack([_bank_full(s, table, f"h{k}") for k in range(s.cfg.asmg_hidden)], -1)


def _generated_reference(s):
    """The generator applied to the gathered window and state: what every rank should serve."""
    out = {}
    for t in ("user", "item"):
        seq = torch.stack([_bank_full(s, t, f"w{w}") for w in s._window()], dim=1)
        with torch.no_grad():
            out[t] = s.generators[t](seq, _state_full(s, t))[0][:, -1]
    return out


def _asmg(path, sharding):
    s = _setup(path, "asmg", sharding, asmg_window=2, asmg_hidden=3)
    iu = table_weights(s.iu.embedding)
    report = {"layout": all(same_layout(iu[t], s.bank.weights[f"{t}__{slot}"])
                            for t in ("user", "item") for slot in s.bank.slots)}
    # Meta-training moves the generator only: bank, IU and served tables exactly unchanged.
    banks0 = {k: gather_full(w).clone() for k, w in s.bank.weights.items()}
    iu0, served0, gen0 = _full(s.iu), _full(s.model), _flat(s.generators)
    s._meta_train(1)
    banks1 = {k: gather_full(w).clone() for k, w in s.bank.weights.items()}
    report["meta_bank"] = _max_diff(banks1, banks0)
    report["meta_tables"] = max(_max_diff(_full(s.iu), iu0), _max_diff(_full(s.model), served0))
    report["meta_gen"] = float((_flat(s.generators) - gen0).abs().max())
    gen1 = _flat(s.generators)
    report["gen_rank_diff"] = _rank_diff(gen1)
    for t in range(1, 4):  # the window (2) fills, then slides: the GRU state advances
        s.train_period(t)
    report["pushed"], report["window"] = s.pushed, s._window()
    report["gen_rank_diff_later"] = _rank_diff(_flat(s.generators))
    report["state_nonzero"] = float(_state_full(s, "item").abs().max())
    report["generate_err"] = _max_diff(_full(s.model), _generated_reference(s))
    report["newest_is_iu"] = _max_diff(
        {t: _bank_full(s, t, f"w{s._window()[-1]}") for t in ("user", "item")}, _full(s.iu))
    # Advancing the state: one GRU step over the oldest model, shard by shard.
    oldest = {t: _bank_full(s, t, f"w{s._window()[0]}") for t in ("user", "item")}
    h0 = {t: _state_full(s, t) for t in ("user", "item")}
    s._advance_state()
    with torch.no_grad():
        want = {t: s.generators[t].step(oldest[t], h0[t])[0] for t in ("user", "item")}
    report["advance_err"] = _max_diff({t: _state_full(s, t) for t in ("user", "item")}, want)
    report["served"] = gather_rows(*s.model.item_block(), s.model.num_items)
    return report


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_asmg_generator_on_local_shards(data_path, sharding):
    r0, r1 = run_local(_asmg, 2, (data_path, sharding), threads=1, timeout_s=240)
    for r in (r0, r1):
        assert r["layout"]  # every bank table has the IU table's shards
        assert r["meta_bank"] == 0.0 and r["meta_tables"] == 0.0
        assert r["meta_gen"] > 0
        # replicated generator: gradients averaged over ranks, identical after every step
        assert r["gen_rank_diff"] == 0.0 and r["gen_rank_diff_later"] == 0.0
        assert r["pushed"] == 4 and r["window"] == [0, 1]  # models 2 and 3, oldest first
        assert r["state_nonzero"] > 0
        assert r["generate_err"] < 1e-5
        assert r["newest_is_iu"] == 0.0
        assert r["advance_err"] < 1e-5
    assert torch.equal(r0["served"], r1["served"])
