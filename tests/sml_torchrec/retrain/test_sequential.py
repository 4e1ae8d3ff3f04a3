"""GRU4Rec and Caser strategies: sequence building, learning a sequential signal on sharded
tables, and a 2-rank period that keeps the dense (DDP) parameters identical across ranks."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from recsys_common.process_group import run_local
from sml_torchrec.data.period_dataset import Interactions, PeriodDataset, write_period_dataset
from sml_torchrec.data.sequences import PAD, last_items, period_examples, previous_items


def _slow_previous(user, item, ts, L):
    out = np.full((len(user), L), PAD)
    for j in range(len(user)):
        before = [k for k in range(len(user))
                  if user[k] == user[j] and (ts[k] < ts[j] or (ts[k] == ts[j] and k < j))]
        before.sort(key=lambda k: (ts[k], k))
        prev = [item[k] for k in before][-L:]
        if prev:
            out[j, L - len(prev):] = prev
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_previous_items_matches_a_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n = 60
    user = rng.integers(0, 5, n)
    item = rng.integers(0, 30, n)
    ts = rng.integers(0, 15, n)  # many ties: broken by row order
    for L in (1, 3, 8):
        assert np.array_equal(previous_items(user, item, ts, L), _slow_previous(user, item, ts, L))


def test_period_examples_reach_into_history_and_last_items_serve_the_next_period():
    hist = Interactions(np.array([0, 1, 0]), np.array([10, 11, 12]), np.array([1, 2, 3]),
                        np.zeros(3, dtype=np.int32))
    period = Interactions(np.array([1, 0, 0]), np.array([13, 14, 15]), np.array([4, 5, 6]),
                          np.ones(3, dtype=np.int32))
    seqs = period_examples(hist, period, 3)
    assert seqs.tolist() == [[PAD, PAD, 11], [PAD, 10, 12], [10, 12, 14]]
    both = Interactions.concat([hist, period])
    served = last_items(both, np.array([0, 2, 0, 1]), 2)
    assert served.tolist() == [[14, 15], [PAD, PAD], [14, 15], [11, 13]]


# -- learning a sequential signal ---------------------------------------------------------------
NU, NI, PER_USER = 96, 48, 10


def _cyclic_log(seed=0):
    """Users walk a fixed cycle over the items (i -> i+1 mod NI) from random starting points,
    with popularity skewed by how often starts are drawn: the next item is the user's last + 1,
    which a popularity ranking cannot know."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, NI, NU)
    u = np.repeat(np.arange(NU), PER_USER)
    k = np.tile(np.arange(PER_USER), NU)
    i = (start[u] + k) % NI
    ts = k * 1000 + rng.permutation(NU)[u]
    o = np.argsort(ts, kind="stable")
    return Interactions(u[o], i[o], ts[o], np.zeros(len(u), dtype=np.int32))


def _recall_at_20(scores, truth):
    top = torch.topk(scores, 20, dim=1).indices.numpy()
    return float((top == truth[:, None]).any(1).mean())


def _learn(kind):
    from sml_torchrec.modules.caser import CaserConfig
    from sml_torchrec.modules.gru4rec import GRU4RecConfig
    from sml_torchrec.retrain.config import RetrainConfig
    from sml_torchrec.retrain.sequential_model import SequentialModel
    from sml_torchrec.retrain.serving import gather_rows

    torch.manual_seed(0)
    log = _cyclic_log()
    last = log.timestamp >= (PER_USER - 1) * 1000  # each user's last interaction: held out
    train, test = log.select(~last), log.select(last)
    cfg = RetrainConfig(dim=16, table_lr=0.1)
    mcfg = (GRU4RecConfig(seq_len=5, batch_size=64, dense_lr=5e-3) if kind == "gru4rec"
            else CaserConfig(seq_len=5, batch_size=64, dense_lr=5e-3))
    model = SequentialModel(kind, NU, NI, cfg, mcfg)
    empty = Interactions.concat([])
    for e in range(15):
        model.train_epoch(train, empty, NI, seed=e)
    model.set_history(train)
    scores = model.user_vectors(test.user_id) @ gather_rows(*model.item_block(), NI).T
    model_recall = _recall_at_20(scores, test.item_id)
    popular = np.argsort(-np.bincount(train.item_id, minlength=NI), kind="stable")[:20]
    pop_recall = float(np.isin(test.item_id, popular).mean())
    return model_recall, pop_recall


@pytest.mark.parametrize("kind", ["gru4rec", "caser"])
def test_model_beats_popularity_on_a_sequential_log(kind):
    (model_recall, pop_recall), = run_local(_learn, 1, (kind,), threads=1, backend="gloo",
                                            timeout_s=300)
    assert pop_recall < 0.6
    assert model_recall > max(0.8, pop_recall + 0.25), (model_recall, pop_recall)


# -- two ranks, one period of the strategy -----------------------------------------------------
def _tiny_dataset(path):
    rng = np.random.default_rng(0)
    parts = []
    for t in range(3):
        n = 120
        user = rng.integers(0, 30, n)
        item = rng.integers(0, 20 + 5 * t, n)
        parts.append((user, item, np.sort(rng.integers(0, 1000, n)) + 1000 * t,
                      np.full(n, t, dtype=np.int32)))
    user, item, ts, period = (np.concatenate(x) for x in zip(*parts))
    # ids numbered by first appearance, as every period dataset is
    _, uf = np.unique(user, return_index=True)
    _, itf = np.unique(item, return_index=True)
    umap = np.empty(user.max() + 1, dtype=np.int64)
    umap[np.unique(user)[np.argsort(uf)]] = np.arange(len(uf))
    imap = np.empty(item.max() + 1, dtype=np.int64)
    imap[np.unique(item)[np.argsort(itf)]] = np.arange(len(itf))
    write_period_dataset(path, umap[user], imap[item], ts, period, cut="given")


def _one_period(path, kind):
    from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
    from sml_torchrec.retrain.evaluate import evaluate, prepare_test
    from sml_torchrec.retrain.serving import gather_rows
    from sml_torchrec.retrain.strategies import strategy_class

    ds = PeriodDataset(path)
    cfg = RetrainConfig(dim=8, epochs=2, init_epochs=2, table_lr=0.1)
    roles = PeriodRoles(num_periods=3, init=1, first_online=2, first_test=2)
    strategy = strategy_class(kind)(ds, roles, cfg)
    strategy.start({})
    dense = strategy.model.inner.encoder
    before = torch.cat([p.detach().flatten().clone() for p in dense.parameters()])
    strategy.train_period(1)
    after = torch.cat([p.detach().flatten() for p in dense.parameters()])
    gathered = [torch.empty_like(after) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, after)
    test = prepare_test(ds, 2, ["full", "sampled"], 10, 0)
    metrics = evaluate(strategy.model, test, ["full", "sampled"])
    uv = strategy.model.user_vectors(test.users)
    return {
        "moved": float((after - before).abs().max()),
        "rank_diff": float((gathered[0] - gathered[1]).abs().max()),
        "user_vectors": uv,
        "items": gather_rows(*strategy.model.item_block(), strategy.model.num_items),
        "block_rows": len(strategy.model.item_block()[0]),
        "metrics": metrics,
        "ckpt_keys": sorted(strategy.checkpoint_state()),
    }


@pytest.mark.parametrize("kind", ["gru4rec", "caser"])
def test_two_ranks_keep_dense_parameters_identical(kind, tmp_path):
    _tiny_dataset(tmp_path / "ds")
    r0, r1 = run_local(_one_period, 2, (str(tmp_path / "ds"), kind), threads=1,
                       backend="gloo", timeout_s=300)
    assert r0["moved"] > 1e-4  # the encoder did train
    assert r0["rank_diff"] == 0.0 and r1["rank_diff"] == 0.0
    assert torch.equal(r0["user_vectors"], r1["user_vectors"])
    assert torch.equal(r0["items"], r1["items"])
    width = 8 if kind == "gru4rec" else 16
    assert r0["items"].shape[1] == width
    assert r0["block_rows"] + r1["block_rows"] == r0["items"].shape[0]  # disjoint blocks
    assert r0["metrics"] == r1["metrics"]
    assert 0.0 <= r0["metrics"]["full"]["recall@20"] <= 1.0
    assert r0["ckpt_keys"] == ["model", "sparse_optim"]
