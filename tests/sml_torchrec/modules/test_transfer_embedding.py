import pytest
import torch
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from sml_torchrec.modules.mf import MatrixFactorization, log_loss, mf_tables
from sml_torchrec.modules.transfer import TransferConfig
from sml_torchrec.modules.transfer_embedding import TransferEmbeddingBagCollection

SMALL = TransferConfig(n1=4, n2=3, hidden=16)


def _tables(pooling=PoolingType.SUM):
    return [
        EmbeddingBagConfig(name="a", embedding_dim=6, num_embeddings=10, feature_names=["f1"],
                           pooling=pooling),
        EmbeddingBagConfig(name="b", embedding_dim=6, num_embeddings=7,
                           feature_names=["f2", "f3"], pooling=pooling),
    ]


def _kjt():
    # stride 3; bags with 0, 1 and several ids, repeated ids across bags and features
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["f1", "f2", "f3"],
        values=torch.tensor([1, 2, 2, 9, 0, 0, 3, 6, 3, 3]),
        lengths=torch.tensor([2, 0, 2, 1, 1, 1, 1, 2, 0], dtype=torch.int32),
    )


@pytest.mark.parametrize("pooling", [PoolingType.SUM, PoolingType.MEAN])
def test_matches_rowwise_transfer_then_pooling(pooling):
    torch.manual_seed(0)
    emb = TransferEmbeddingBagCollection(_tables(pooling), SMALL)
    out = emb(_kjt())
    assert out.keys() == ["f1", "f2", "f3"]
    assert out.values().shape == (3, 6 + 6 + 6)
    w = {}
    for t in ("a", "b"):
        prev = emb.prev.embeddings[t].weight
        new = emb.new.embeddings[t].weight
        w[t] = emb.transfers[t](prev, new).detach()
    d = _kjt().to_dict()
    for f, t in (("f1", "a"), ("f2", "b"), ("f3", "b")):
        jt = d[f]
        expect = []
        for bag in jt.to_dense():
            rows = w[t][bag] if len(bag) else torch.zeros(1, w[t].shape[1])
            v = rows.sum(0)
            if pooling == PoolingType.MEAN and len(bag):
                v = v / len(bag)
            expect.append(v)
        torch.testing.assert_close(out[f], torch.stack(expect), rtol=1e-5, atol=1e-6)


def test_tables_of_other_dims_are_refused_by_name():
    tables = _tables()
    tables[1].embedding_dim = 5
    with pytest.raises(ValueError, match="table 'b' has embedding_dim 5 but table 'a' has 6"):
        TransferEmbeddingBagCollection(tables, SMALL)


def _grads(emb):
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0)
            for n, p in emb.named_parameters()}


def test_modes_route_gradients():
    emb = TransferEmbeddingBagCollection(_tables(), SMALL)
    for mode, expect_new, expect_theta in (("tables", True, False), ("transfer", False, True)):
        emb.zero_grad(set_to_none=True)
        emb.set_mode(mode)
        emb(_kjt()).values().sum().backward()
        g = _grads(emb)
        assert not any(v for n, v in g.items() if n.startswith("prev."))
        assert any(v for n, v in g.items() if n.startswith("new.")) == expect_new
        assert all(v for n, v in g.items() if n.startswith("transfers.")) == expect_theta
    emb.set_mode("frozen")
    assert not emb(_kjt()).values().requires_grad
    with pytest.raises(ValueError, match="mode must be one of"):
        emb.set_mode("both")


def test_transfer_applied_once_per_unique_id(monkeypatch):
    emb = TransferEmbeddingBagCollection(_tables(), SMALL)
    seen = []
    net = emb.transfers["b"]
    orig = type(net).forward

    def spy(self, prev, new, *params):
        seen.append(prev.shape[0])
        return orig(self, prev, new, *params)

    monkeypatch.setattr(type(net), "forward", spy)
    emb.set_mode("transfer")
    emb(_kjt())
    # table a: ids {1,2,9} -> 3 rows; table b (f2 + f3): ids {0,3,6} -> 3 rows
    assert sorted(seen) == [3, 3]


def test_mf_on_transfer_collection_trains():
    torch.manual_seed(0)
    emb = TransferEmbeddingBagCollection(mf_tables(20, 15, 8), SMALL)
    mf = MatrixFactorization(emb)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "item_id", "neg_item_id"],
        values=torch.tensor([0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10]),
        lengths=torch.ones(12, dtype=torch.int32),
    )
    # SML alternates: step 1 trains Ŵ_t through the fixed transfer, step 2 trains Θ.
    opt_tables = torch.optim.Adam(emb.new.parameters(), lr=0.05)
    opt_theta = torch.optim.Adam(emb.transfers.parameters(), lr=0.01)
    losses = []
    for step in range(80):
        mode, opt = ("tables", opt_tables) if step % 2 == 0 else ("transfer", opt_theta)
        emb.set_mode(mode)
        pos, neg, sq = mf(kjt)
        loss = log_loss(pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sq.item() > 0
    assert losses[-1] < 0.5 * losses[0]


def test_replaces_ebc_inside_dlrm():
    """A TorchRec DLRM (not MF) built on the transfer collection trains end to end."""
    torch.manual_seed(0)
    tables = [
        EmbeddingBagConfig(name=f"t{i}", embedding_dim=8, num_embeddings=30,
                           feature_names=[f"c{i}"]) for i in range(2)
    ]
    emb = TransferEmbeddingBagCollection(tables, SMALL)
    model = DLRM(embedding_bag_collection=emb, dense_in_features=4,
                 dense_arch_layer_sizes=[16, 8], over_arch_layer_sizes=[16, 1])
    g = torch.Generator().manual_seed(1)
    b = 64
    ids = torch.randint(0, 30, (2, b), generator=g)
    dense = torch.randn(b, 4, generator=g)
    labels = ((ids[0] % 2) ^ (ids[1] % 3 == 0)).float()
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["c0", "c1"], values=ids.reshape(-1), lengths=torch.ones(2 * b, dtype=torch.int32)
    )
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if ".prev." not in n],
                           lr=0.01)
    emb.set_mode("tables")
    prev_before = emb.prev.embeddings["t0"].weight.detach().clone()
    losses = []
    for _ in range(60):
        logits = model(dense, kjt).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    # W_{t-1} is frozen even though the optimizer was given everything but it by name.
    assert torch.equal(prev_before, emb.prev.embeddings["t0"].weight)
