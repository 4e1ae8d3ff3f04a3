"""The transfer-wrapped collection inside a user's own TorchRec model, 2 ranks on gloo.

The model is what a TorchRec engineer writes: a dense feature, a transfer collection for user
and item, an ordinary EBC for a category table with a sharding type of its own, and an MLP;
planned by ``EmbeddingShardingPlanner`` with our sharder among the others and wrapped by plain
``DistributedModelParallel``.
"""

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_common.process_group import run_local
from sml_torchrec.distributed import (
    ShardedTransferEmbeddingBagCollection,
    TransferEmbeddingBagCollectionSharder,
)
from sml_torchrec.distributed.shard_ops import gather_full, load_full, local_shards, table_weights
from sml_torchrec.distributed.sharding import EBCSharder
from sml_torchrec.modules import TransferConfig, TransferEmbeddingBagCollection, set_transfer_mode

D, NU, NI, NC, B = 8, 40, 30, 12, 16
SMALL = TransferConfig(n1=4, n2=3, hidden=16)
OTHER = {"table_wise": "row_wise", "row_wise": "table_wise", "column_wise": "row_wise"}


class UserModel(nn.Module):
    """``forward(batch) -> (loss, logits [B])``: the shape TorchRec's train pipelines call."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.sml = TransferEmbeddingBagCollection([
            EmbeddingBagConfig(name="user", embedding_dim=D, num_embeddings=NU,
                               feature_names=["user_id"]),
            EmbeddingBagConfig(name="item", embedding_dim=D, num_embeddings=NI,
                               feature_names=["item_ids"], pooling=PoolingType.MEAN),
        ], SMALL, device=device)
        self.cat = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="cat", embedding_dim=4, num_embeddings=NC,
                               feature_names=["cat_id"]),
        ], device=device)
        self.dense = nn.Linear(3, 4, device=device)
        self.mlp = nn.Sequential(nn.Linear(2 * D + 8, 16, device=device), nn.ReLU(),
                                 nn.Linear(16, 1, device=device))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.sml(batch.sparse_features)
        c = self.cat(batch.sparse_features)
        x = torch.cat([self.dense(batch.dense_features), e.values(), c.values()], dim=1)
        logits = self.mlp(x).squeeze(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, logits.detach()


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    item_lengths = torch.randint(0, 4, (B,), generator=g)  # empty bags too
    lengths = torch.cat([torch.ones(B, dtype=torch.long), item_lengths,
                         torch.ones(B, dtype=torch.long)])
    values = torch.cat([torch.randint(0, NU, (B,), generator=g),
                        torch.randint(0, NI, (int(item_lengths.sum()),), generator=g),
                        torch.randint(0, NC, (B,), generator=g)])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "item_ids", "cat_id"], values=values, lengths=lengths.int())
    return Batch(dense_features=torch.randn(B, 3, generator=g), sparse_features=kjt,
                 labels=torch.randint(0, 2, (B,), generator=g).float())


def _sharded_model(sharding: str, seed: int = 0) -> DistributedModelParallel:
    torch.manual_seed(seed + dist.get_rank())  # ranks start from different Θ and dense inits
    model = UserModel(torch.device("meta"))
    apply_optimizer_in_backward(RowWiseAdagrad, model.sml.new.parameters(), {"lr": 0.1})
    apply_optimizer_in_backward(RowWiseAdagrad, model.cat.parameters(), {"lr": 0.1})
    sharders = [TransferEmbeddingBagCollectionSharder(), EBCSharder()]
    cw = {"min_partition": D // 2} if sharding == "column_wise" else {}
    constraints = {
        "user": ParameterConstraints(sharding_types=[sharding], **cw),
        "item": ParameterConstraints(sharding_types=[sharding], **cw),
        "cat": ParameterConstraints(sharding_types=[OTHER[sharding]]),
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=dist.get_world_size(), compute_device="cpu"),
        constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.group.WORLD)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan,
                                   sharders=sharders)
    g = torch.Generator().manual_seed(seed)
    dmp.module.sml.reset_tables({"user": torch.randn(NU, D, generator=g) * 0.3,
                                 "item": torch.randn(NI, D, generator=g) * 0.3})
    load_full(table_weights(dmp.module.cat)["cat"], torch.randn(NC, 4, generator=g))
    return dmp


def _gathered(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts)


def _rank_spread(params) -> float:
    """Largest difference of these parameters between ranks."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    g = _gathered(flat)
    return float((g - g[0]).abs().max())


def _tables(sml, which) -> dict:
    return {n: gather_full(w).clone() for n, w in table_weights(getattr(sml, which)).items()}


def _user_model_run(sharding: str) -> dict:
    rank = dist.get_rank()
    dmp = _sharded_model(sharding)
    sml = dmp.module.sml
    report = {"sharded": isinstance(sml, ShardedTransferEmbeddingBagCollection),
              "plan_types": sorted({ps.sharding_type for ps in dmp.plan.plan["sml"].values()}),
              "cat_type": dmp.plan.plan["cat"]["cat"].sharding_type}
    # W_{t-1} and Ŵ_t of a table hold the same rows and columns on every rank.
    report["same_shards"] = all(
        [(s.row, s.col, tuple(s.tensor.shape)) for s in local_shards(w)]
        == [(s.row, s.col, tuple(s.tensor.shape))
            for s in local_shards(table_weights(sml.new)[n])]
        for n, w in table_weights(sml.prev).items())
    report["theta_spread_start"] = _rank_spread(sml.transfer_parameters())
    dense = [p for _, p in in_backward_optimizer_filter(dmp.named_parameters())]
    opt = torch.optim.Adam(dense, lr=0.01)
    report["prev_changes"], report["new_changes"], report["theta_changes"] = [], [], []
    for step in range(10):
        mode = "tables" if step % 2 == 0 else "transfer"
        set_transfer_mode(dmp, mode)
        prev0, new0 = _tables(sml, "prev"), _tables(sml, "new")
        theta0 = torch.cat([p.detach().reshape(-1).clone() for p in sml.transfer_parameters()])
        loss, _ = dmp(_batch(100 * step + rank))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        prev1, new1 = _tables(sml, "prev"), _tables(sml, "new")
        theta1 = torch.cat([p.detach().reshape(-1) for p in sml.transfer_parameters()])
        report["prev_changes"].append(max(float((prev1[n] - prev0[n]).abs().max())
                                          for n in prev0))
        report["new_changes"].append((mode, max(float((new1[n] - new0[n]).abs().max())
                                                for n in new0)))
        report["theta_changes"].append((mode, float((theta1 - theta0).abs().max())))
    report["theta_spread"] = _rank_spread(sml.transfer_parameters())
    report["mlp_spread"] = _rank_spread(list(dmp.module.mlp.parameters())
                                        + list(dmp.module.dense.parameters()))
    # materialize() on local shards equals the transfer net's reference on the whole tables.
    prev, new = _tables(sml, "prev"), _tables(sml, "new")
    expect = {n: sml.transfers[n].reference(prev[n], new[n]).detach() for n in prev}
    served = sml.served_weights()
    ebc = sml.served_collection()
    report["served_collection"] = (type(ebc).__name__, float(max(
        (ebc.embedding_bags[n].weight.detach() - served[n]).abs().max() for n in served)))
    sml.materialize()
    after_prev, after_new = _tables(sml, "prev"), _tables(sml, "new")
    report["materialize_err"] = max(float((after_prev[n] - expect[n]).abs().max())
                                    for n in expect)
    report["served_err"] = max(float((served[n] - expect[n]).abs().max()) for n in expect)
    report["new_is_w_t"] = all(torch.equal(after_new[n], after_prev[n]) for n in expect)
    return report


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise"])
def test_user_model_with_plain_dmp(sharding):
    for r in run_local(_user_model_run, 2, (sharding,), timeout_s=240):
        assert r["sharded"] and r["plan_types"] == [sharding]
        assert r["cat_type"] == OTHER[sharding]  # the user's own table keeps its own type
        assert r["same_shards"]
        assert r["theta_spread_start"] == 0  # ranks built Θ from different seeds
        # W_{t-1} bit-identical throughout; Ŵ_t moves in table steps only, Θ in transfer steps.
        assert r["prev_changes"] == [0.0] * 10
        assert all((v > 0) == (mode == "tables") for mode, v in r["new_changes"])
        assert all((v > 0) == (mode == "transfer") for mode, v in r["theta_changes"])
        # Θ and the user's dense parameters stay bit-identical across ranks.
        assert r["theta_spread"] == 0
        assert r["mlp_spread"] == 0
        assert r["materialize_err"] < 1e-5 and r["served_err"] < 1e-5
        assert r["new_is_w_t"]
        assert r["served_collection"][0] == "EmbeddingBagCollection"
        assert r["served_collection"][1] == 0


def _pipeline_run(sharding: str) -> dict:
    """The same steps through ``TrainPipelineSparseDist`` and through plain calls."""
    rank = dist.get_rank()
    batches = [_batch(7 * i + rank) for i in range(4)]
    modes = ["tables", "transfer", "tables", "tables"]
    finals = []
    for pipelined in (False, True):
        dmp = _sharded_model(sharding, seed=5)
        opt = torch.optim.Adam(
            [p for _, p in in_backward_optimizer_filter(dmp.named_parameters())], lr=0.01)
        losses = []
        if pipelined:
            pipe = TrainPipelineSparseDist(dmp, opt, torch.device("cpu"))
            it = iter(batches)
            for mode in modes:
                set_transfer_mode(dmp, mode)
                losses.append(pipe.progress(it))
        else:
            for mode, b in zip(modes, batches):
                set_transfer_mode(dmp, mode)
                loss, _ = dmp(b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        sml = dmp.module.sml
        finals.append({"mlp": [p.detach().clone() for p in dmp.module.mlp.parameters()],
                       "theta": [p.detach().clone() for p in sml.transfer_parameters()],
                       "new": _tables(sml, "new")})
        if pipelined:
            report = {"pipelined_steps": len(losses)}
    plain, piped = finals
    report["mlp_diff"] = max(float((a - b).abs().max()) for a, b in zip(plain["mlp"], piped["mlp"]))
    report["theta_diff"] = max(float((a - b).abs().max())
                               for a, b in zip(plain["theta"], piped["theta"]))
    report["new_diff"] = max(float((plain["new"][n] - piped["new"][n]).abs().max())
                             for n in plain["new"])
    return report


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise"])
def test_train_pipeline_matches_plain_steps(sharding):
    for r in run_local(_pipeline_run, 2, (sharding,), timeout_s=240):
        assert r["pipelined_steps"] == 4
        assert r["mlp_diff"] < 1e-6 and r["theta_diff"] < 1e-6 and r["new_diff"] < 1e-6
