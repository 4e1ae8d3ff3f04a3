"""Sharding plans for the library's own models, and wrapping a model in DMP.

* Row-wise sharding on CPU: TorchRec's stock EBC sharder offers ROW_WISE only for CUDA/MTIA,
  although the row-wise kernels and gloo collectives work on CPU; :class:`EBCSharder` adds it.
* The transfer-wrapped collection has its own sharder
  (:class:`~sml_torchrec.distributed.transfer_embedding.TransferEmbeddingBagCollectionSharder`),
  which gives W_{t-1} and Ŵ_t of a table one placement and keeps Θ out of DDP; a model that
  holds one is planned and wrapped like any other TorchRec model.
* Every table the model declares must be in the plan (TorchRec has shipped planners that
  silently dropped tables), checked before the model is built.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ModuleSharder, ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import BaseEmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from sml_torchrec.distributed.names import SHARDING_NAMES
from sml_torchrec.distributed.transfer_embedding import TransferEmbeddingBagCollectionSharder
from sml_torchrec.modules.transfer_embedding import TransferEmbeddingBagCollection

SHARDING_TYPES = {name: ShardingType(name).value for name in SHARDING_NAMES}


class EBCSharder(EmbeddingBagCollectionSharder):
    """The stock EBC sharder, plus row-wise sharding on CPU (gloo)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        if compute_device_type == "cpu":
            types += [t for t in (ShardingType.ROW_WISE.value,) if t not in types]
        return types


def sharders() -> list[ModuleSharder[nn.Module]]:
    """Sharders for every collection the library builds: pooled (EBC), per-position (EC) and
    transfer-wrapped."""
    return [TransferEmbeddingBagCollectionSharder(), EBCSharder(), EmbeddingCollectionSharder()]


def embedding_tables(model: nn.Module) -> dict[str, list[BaseEmbeddingConfig]]:
    """Table configs of every embedding collection the planner plans, by module path."""
    out: dict[str, list[BaseEmbeddingConfig]] = {}
    inside_transfer: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside_transfer):
            continue  # the transfer collection's own ECs are planned through it
        if isinstance(m, (EmbeddingBagCollection, TransferEmbeddingBagCollection)):
            out[name] = m.embedding_bag_configs()
            if isinstance(m, TransferEmbeddingBagCollection):
                inside_transfer.append(name)
        elif isinstance(m, EmbeddingCollection):
            out[name] = m.embedding_configs()
    return out


def plan_sharding(
    model: nn.Module,
    sharding: str,
    world_size: int,
    device: torch.device,
    process_group: dist.ProcessGroup | None = None,
) -> ShardingPlan:
    """Plan every table of ``model`` with one sharding type and the FUSED kernel (the library's
    runs compare strategies on one layout; a user's own model can use any plan)."""
    if sharding not in SHARDING_TYPES:
        raise ValueError(f"sharding must be one of {sorted(SHARDING_TYPES)}, got {sharding!r}")
    constraints = {}
    for configs in embedding_tables(model).values():
        for cfg in configs:
            c = ParameterConstraints(
                sharding_types=[SHARDING_TYPES[sharding]],
                compute_kernels=[EmbeddingComputeKernel.FUSED.value],
            )
            if sharding == "column_wise":
                # Ask for one column block per rank (the planner would otherwise keep whole
                # small tables on one rank, which is table-wise in disguise).
                c.min_partition = max(4, cfg.embedding_dim // world_size)
            constraints[cfg.name] = c
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device.type),
        constraints=constraints,
    )
    if process_group is not None or (dist.is_initialized() and world_size > 1):
        plan = planner.collective_plan(model, sharders(), process_group or dist.group.WORLD)
    else:
        plan = planner.plan(model, sharders())
    check_plan(model, plan)
    return plan


def check_plan(model: nn.Module, plan: ShardingPlan) -> None:
    """Raise if any table of any embedding collection in ``model`` is missing from ``plan``."""
    for path, configs in embedding_tables(model).items():
        planned = plan.plan.get(path, {})
        for cfg in configs:
            if cfg.name not in planned:
                raise RuntimeError(
                    f"sharding plan has no entry for table {cfg.name!r} of module {path!r} "
                    f"(planned: {sorted(planned)})"
                )


def shard_model(
    model: nn.Module, plan: ShardingPlan, device: torch.device
) -> DistributedModelParallel:
    """``DistributedModelParallel`` with ``plan`` and the library's sharders, nothing else."""
    return DistributedModelParallel(module=model, device=device, plan=plan, sharders=sharders())
