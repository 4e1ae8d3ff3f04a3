"""Sharding plans for models built on ``EmbeddingCollection``s (unpooled, per-position rows).

``sharding.plan_sharding`` plans EmbeddingBagCollections only; the sequential recommenders
(GRU4Rec, Caser) read item sequences through EmbeddingCollections. The same rules apply here:
one sharding type for every table, the FUSED kernel (FBGEMM optimizer in backward), every
declared table checked to be in the plan, and dense parameters in DDP with a dynamic graph.
TorchRec's stock EC sharder already offers row-wise sharding on CPU, and it runs on gloo.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.model_parallel import (
    DefaultDataParallelWrapper,
    DistributedModelParallel,
)
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingCollection

from sml_torchrec.distributed.sharding import SHARDING_TYPES


def ec_paths(model: nn.Module) -> dict[str, EmbeddingCollection]:
    return {n: m for n, m in model.named_modules() if isinstance(m, EmbeddingCollection)}


def plan_ec_sharding(
    model: nn.Module, sharding: str, world_size: int, device: torch.device
) -> ShardingPlan:
    """Plan every EC table of ``model`` with one sharding type and the FUSED kernel."""
    if sharding not in SHARDING_TYPES:
        raise ValueError(f"sharding must be one of {sorted(SHARDING_TYPES)}, got {sharding!r}")
    constraints = {}
    for ec in ec_paths(model).values():
        for cfg in ec.embedding_configs():
            c = ParameterConstraints(
                sharding_types=[SHARDING_TYPES[sharding]],
                compute_kernels=[EmbeddingComputeKernel.FUSED.value],
            )
            if sharding == "column_wise":
                c.min_partition = max(4, cfg.embedding_dim // world_size)
            constraints[cfg.name] = c
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device.type),
        constraints=constraints,
    )
    sharders = [EmbeddingCollectionSharder()]
    if dist.is_initialized() and world_size > 1:
        plan = planner.collective_plan(model, sharders, dist.group.WORLD)
    else:
        plan = planner.plan(model, sharders)
    check_ec_plan(model, plan)
    return plan


def check_ec_plan(model: nn.Module, plan: ShardingPlan) -> None:
    """Raise if any table of any EC in ``model`` is missing from ``plan``."""
    for path, ec in ec_paths(model).items():
        planned = plan.plan.get(path, {})
        for cfg in ec.embedding_configs():
            if cfg.name not in planned:
                raise RuntimeError(
                    f"sharding plan has no entry for table {cfg.name!r} of module {path!r} "
                    f"(planned: {sorted(planned)})"
                )


def shard_ec_model(
    model: nn.Module, plan: ShardingPlan, device: torch.device
) -> DistributedModelParallel:
    """Wrap ``model`` in DMP with ``plan``; dense parameters get DDP with a dynamic graph."""
    return DistributedModelParallel(
        module=model,
        device=device,
        plan=plan,
        sharders=[EmbeddingCollectionSharder()],
        data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False),
    )


def ec_table(state: dict, module_path: str, table: str):
    """The (sharded) weight of ``table`` in the EC at ``module_path`` from a state dict."""
    key = f"{module_path}.embeddings.{table}.weight"
    if key not in state:
        raise KeyError(f"no table {key!r} in state dict (has {sorted(state)[:8]}...)")
    return state[key]
