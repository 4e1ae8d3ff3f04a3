"""The transfer-wrapped collection sharded by TorchRec: its sharded module and its sharder.

Built the way TorchRec shards its own wrapped collections (``fp_embeddingbag.py``):
:class:`TransferEmbeddingBagCollectionSharder` tells the planner about the module's tables and
shards the wrapped module; ``DistributedModelParallel`` calls it like any other sharder::

    sharders = [TransferEmbeddingBagCollectionSharder(), *get_default_sharders()]
    plan = EmbeddingShardingPlanner(topology=...).collective_plan(model, sharders, pg)
    model = DistributedModelParallel(model, device, plan=plan, sharders=sharders)

What :class:`ShardedTransferEmbeddingBagCollection` guarantees:

* **One placement for W_{t-1} and Ŵ_t.** The planner sees each table once (Ŵ_t's weight) and
  both tables are sharded with that one ``ParameterSharding``, so their shards cover the same
  rows and columns on the same ranks, for every sharding type (table-, row-, column-wise), and
  the transfer and :meth:`materialize` run on local shards. The planner's storage estimate
  counts both tables.
* **Ids are distributed once.** ``input_dist`` deduplicates the batch's ids per table and
  sends them to the shards once; both tables are looked up from that one input
  (``compute_and_output_dist``), as TorchRec's train pipelines split a sharded module.
* **Θ stays out of DDP.** Θ is reported among the sharded parameters, so DMP's DDP wrapper
  ignores it, exactly as it ignores embedding weights. The module keeps Θ identical across
  ranks itself: it broadcasts rank 0's Θ when sharded, and in ``"transfer"`` mode passes Θ
  through an identity whose backward averages Θ's gradients over the ranks in one all-reduce.
  A step that gives Θ no gradient (``"tables"``, ``"frozen"``) has no such node and so no
  collective, and the user's own dense parameters keep DMP's default (static-graph) DDP.
* **W_{t-1} never moves.** It is looked up under ``no_grad``: a fused table updates itself
  whenever a gradient reaches it, optimizer or not. Only Ŵ_t's fused optimizer is exposed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import (
    EmbeddingCollectionContext,
    EmbeddingCollectionSharder,
    ShardedEmbeddingCollection,
)
from torchrec.distributed.embedding_types import (
    BaseEmbeddingSharder,
    KJTList,
    ShardedEmbeddingModule,
)
from torchrec.distributed.types import (
    Awaitable,
    LazyAwaitable,
    ParameterSharding,
    QuantizedCommCodecs,
    ShardingEnv,
    ShardingType,
)
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from sml_torchrec.distributed.shard_ops import (
    load_full,
    row_block,
    table_weights,
    transfer_in_place,
)
from sml_torchrec.modules.transfer import materialize
from sml_torchrec.modules.transfer_embedding import (
    TransferEmbeddingBagCollection,
    TransferModes,
    dedup_ids,
    embedding_bag_collection,
    transfer_and_pool,
)

# Sharding types whose kernels keep W_{t-1} and Ŵ_t fused tables on the same shards.
# DATA_PARALLEL is left out: it would make both tables dense DDP parameters.
SHARDING_TYPES = (
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
)


@dataclass
class TransferEmbeddingBagCollectionContext(EmbeddingCollectionContext):
    """The lookup's context (both tables share it) plus what pooling needs afterwards:
    the batch's features and, per feature, the index of each id into its table's unique ids."""

    features: KeyedJaggedTensor | None = None
    inverse: dict[str, torch.Tensor] = field(default_factory=dict)

    def record_stream(self, stream: torch.Stream) -> None:
        super().record_stream(stream)
        if self.features is not None:
            self.features.record_stream(stream)
        for t in self.inverse.values():
            t.record_stream(stream)


class _AverageGradients(torch.autograd.Function):
    """Identity on Θ whose backward averages Θ's gradients over the process group, all
    parameters in one flat all-reduce (unused outputs contribute zeros)."""

    @staticmethod
    def forward(ctx: Any, group: dist.ProcessGroup, *params: torch.Tensor) -> tuple:
        ctx.group = group
        return tuple(p.view_as(p) for p in params)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=ctx.group)
        flat /= dist.get_world_size(ctx.group)
        out, start = [], 0
        for g in grads:
            out.append(flat[start : start + g.numel()].view_as(g))
            start += g.numel()
        return (None, *out)


class _TransferredBags(LazyAwaitable[KeyedTensor]):
    """Waits for both tables' rows, then applies the transfer and pools into bags."""

    def __init__(
        self,
        module: ShardedTransferEmbeddingBagCollection,
        ctx: TransferEmbeddingBagCollectionContext,
        prev: LazyAwaitable[dict[str, JaggedTensor]],
        new: LazyAwaitable[dict[str, JaggedTensor]],
        new_grad: bool,
    ) -> None:
        super().__init__()
        self._module, self._ctx = module, ctx
        self._prev, self._new, self._new_grad = prev, new, new_grad

    def _wait_impl(self) -> KeyedTensor:
        with torch.no_grad():
            prev = {k: jt.values() for k, jt in self._prev.wait().items()}
        with torch.set_grad_enabled(self._new_grad):
            new = {k: jt.values() for k, jt in self._new.wait().items()}
        m = self._module
        return transfer_and_pool(m, self._ctx.features, prev, new, self._ctx.inverse,
                                 m.synced_theta() if m.mode == "transfer" else None)


class ShardedTransferEmbeddingBagCollection(
    TransferModes,
    ShardedEmbeddingModule[
        KJTList, tuple[list[torch.Tensor], list[torch.Tensor]], KeyedTensor,
        TransferEmbeddingBagCollectionContext,
    ],
):
    """A :class:`TransferEmbeddingBagCollection` with W_{t-1} and Ŵ_t sharded by one plan.

    Same forward contract (KJT in, KeyedTensor ``[B, features x d]`` out) and the same public
    methods as the unsharded module: ``set_mode``, ``transfer_parameters``, ``materialize``,
    ``reset_tables``, ``served_block``, ``served_weights``, ``served_collection``. The last
    four are collectives: every rank calls them.
    """

    def __init__(
        self,
        module: TransferEmbeddingBagCollection,
        table_name_to_parameter_sharding: dict[str, ParameterSharding],
        ec_sharder: EmbeddingCollectionSharder,
        env: ShardingEnv,
        device: torch.device,
        module_fqn: str | None = None,
    ) -> None:
        super().__init__(qcomm_codecs_registry=ec_sharder.qcomm_codecs_registry)
        unknown = set(table_name_to_parameter_sharding) - {t.name for t in module.tables}
        missing = {t.name for t in module.tables} - set(table_name_to_parameter_sharding)
        if unknown or missing:
            raise ValueError(
                f"sharding plan of {module_fqn or 'the transfer collection'!r} does not match "
                f"its tables: missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        for name, ps in table_name_to_parameter_sharding.items():
            if ps.sharding_type not in SHARDING_TYPES:
                raise ValueError(
                    f"table {name!r}: sharding type {ps.sharding_type!r} is not supported for a "
                    f"transfer-wrapped table (supported: {list(SHARDING_TYPES)})"
                )
        self.tables = module.tables
        self.mode = module.mode
        self._env = env
        self._device = device
        prefix = f"{module_fqn}." if module_fqn else ""
        # One ParameterSharding for both tables: identical shards by construction.
        self.prev: ShardedEmbeddingCollection = ec_sharder.shard(
            module.prev, table_name_to_parameter_sharding, env, device, module_fqn=prefix + "prev"
        )
        self.new: ShardedEmbeddingCollection = ec_sharder.shard(
            module.new, table_name_to_parameter_sharding, env, device, module_fqn=prefix + "new"
        )
        self.transfers = module.transfers
        self._prev_input_dist_ready = False
        self._init_theta(device)
        self._optim = CombinedOptimizer([("new", self.new.fused_optimizer)])

    # -- Θ ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_theta(self, device: torch.device) -> None:
        for net in self.transfers.values():
            if any(p.is_meta for p in net.parameters()):
                net.to_empty(device=device)
                net.reset_parameters()
            else:
                net.to(device)
        if self._group_size() > 1:
            # Each rank initialised Θ from its own generator: rank 0's copy is the one.
            flat = torch.cat([p.reshape(-1) for p in self.transfers.parameters()])
            dist.broadcast(flat, src=dist.get_global_rank(self._env.process_group, 0),
                           group=self._env.process_group)
            start = 0
            for p in self.transfers.parameters():
                p.copy_(flat[start : start + p.numel()].view_as(p))
                start += p.numel()

    def _group_size(self) -> int:
        pg = self._env.process_group
        return 1 if pg is None or not dist.is_initialized() else dist.get_world_size(pg)

    def transfer_parameters(self) -> Iterator[nn.Parameter]:
        """Θ: the parameters of every table's transfer net (for the step-2 optimizer)."""
        return self.transfers.parameters()

    def synced_theta(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each table's Θ as used in ``"transfer"`` mode: gradients averaged over the ranks."""
        names = [t.name for t in self.tables]
        params = [p for n in names for p in self.transfers[n].params()]
        if self._group_size() > 1:
            params = list(_AverageGradients.apply(self._env.process_group, *params))
        out, start = {}, 0
        for n in names:
            k = len(self.transfers[n].params())
            out[n] = tuple(params[start : start + k])
            start += k
        return out

    # -- ShardedModule ------------------------------------------------------------------------
    def create_context(self) -> TransferEmbeddingBagCollectionContext:
        return TransferEmbeddingBagCollectionContext()

    def input_dist(
        self, ctx: TransferEmbeddingBagCollectionContext, features: KeyedJaggedTensor
    ) -> Awaitable[Awaitable[KJTList]]:
        lookup, inverse = dedup_ids(features, self.tables)
        ctx.features, ctx.inverse = features, inverse
        if not self._prev_input_dist_ready:
            # W_{t-1} is looked up from Ŵ_t's distributed input, so its own input dist is never
            # used; TorchRec's train pipelines still expect every sharded collection to have
            # one, and it is built on first use: use it once, on the first batch.
            self.prev.input_dist(self.prev.create_context(), lookup).wait().wait()
            self._prev_input_dist_ready = True
        return self.new.input_dist(ctx, lookup)

    def compute(
        self, ctx: TransferEmbeddingBagCollectionContext, dist_input: KJTList
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            prev = self.prev.compute(ctx, dist_input)
        with torch.set_grad_enabled(self._new_grad()):
            new = self.new.compute(ctx, dist_input)
        return prev, new

    def output_dist(
        self,
        ctx: TransferEmbeddingBagCollectionContext,
        output: tuple[list[torch.Tensor], list[torch.Tensor]],
    ) -> LazyAwaitable[KeyedTensor]:
        grad = self._new_grad()
        with torch.no_grad():
            prev = self.prev.output_dist(ctx, output[0])
        with torch.set_grad_enabled(grad):
            new = self.new.output_dist(ctx, output[1])
        return _TransferredBags(self, ctx, prev, new, grad)

    def compute_and_output_dist(
        self, ctx: TransferEmbeddingBagCollectionContext, input: KJTList
    ) -> LazyAwaitable[KeyedTensor]:
        grad = self._new_grad()
        with torch.no_grad():
            prev = self.prev.compute_and_output_dist(ctx, input)
        with torch.set_grad_enabled(grad):
            new = self.new.compute_and_output_dist(ctx, input)
        return _TransferredBags(self, ctx, prev, new, grad)

    def _new_grad(self) -> bool:
        return self.mode == "tables" and torch.is_grad_enabled()

    @property
    def fused_optimizer(self) -> KeyedOptimizer:
        """Ŵ_t's fused optimizer (W_{t-1} has none: it never gets a gradient)."""
        return self._optim

    def sharded_parameter_names(self, prefix: str = "") -> Iterator[str]:
        # Θ is listed too, so that DMP's DDP leaves it to this module.
        for name, _ in self.named_parameters(prefix):
            yield name

    @property
    def unsharded_module_type(self) -> type[TransferEmbeddingBagCollection]:
        return TransferEmbeddingBagCollection

    # -- the tables ---------------------------------------------------------------------------
    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.tables

    def reset_tables(self, weights: dict[str, torch.Tensor]) -> None:
        """Start a period from ``weights`` (full tables by name): W_{t-1} = Ŵ_t = weights."""
        for which in (self.prev, self.new):
            tensors = table_weights(which)
            for t in self.tables:
                if t.name not in weights:
                    raise KeyError(f"no weights given for table {t.name!r}")
                load_full(tensors[t.name], weights[t.name])

    def materialize(self) -> None:
        """W_t = f_Θ(W_{t-1}, Ŵ_t) into W_{t-1}'s shards, and Ŵ_{t+1} starts from W_t."""
        prev, new = table_weights(self.prev), table_weights(self.new)
        for t in self.tables:
            transfer_in_place(self.transfers[t.name], prev[t.name], new[t.name], t.name)

    @torch.no_grad()
    def served_block(self, table: str) -> tuple[torch.Tensor, int]:
        """This rank's block of W_t rows of ``table`` (blocks disjoint across ranks, every row
        in one) and the id of its first row."""
        block, offset = row_block(table_weights(self.new)[table])
        prev, _ = row_block(table_weights(self.prev)[table])
        out = torch.empty_like(block)
        materialize(self.transfers[table], prev, block, out=out)
        return out, offset

    @torch.no_grad()
    def served_weights(self) -> dict[str, torch.Tensor]:
        """W_t of every table, whole, on every rank (O(table) memory: for export)."""
        out = {}
        for t in self.tables:
            block, offset = self.served_block(t.name)
            full = torch.zeros(t.num_embeddings, t.embedding_dim, dtype=block.dtype)
            full[offset : offset + len(block)] = block.cpu()
            if self._group_size() > 1:
                dist.all_reduce(full, group=self._env.process_group)
            out[t.name] = full
        return out

    def served_collection(self) -> EmbeddingBagCollection:
        """W_t as a plain, unsharded ``EmbeddingBagCollection`` on CPU (for serving)."""
        return embedding_bag_collection(self.tables, self.served_weights())


class TransferEmbeddingBagCollectionSharder(BaseEmbeddingSharder[TransferEmbeddingBagCollection]):
    """Shards a :class:`TransferEmbeddingBagCollection`: the planner plans its tables (each
    once), and both W_{t-1} and Ŵ_t of a table are sharded with the plan of that table.

    On CPU it offers row-wise sharding too (TorchRec's stock sharders offer it for CUDA only,
    although the row-wise kernels and gloo collectives work on CPU).
    """

    def __init__(
        self,
        ec_sharder: EmbeddingCollectionSharder | None = None,
        qcomm_codecs_registry: dict[str, QuantizedCommCodecs] | None = None,
    ) -> None:
        super().__init__(qcomm_codecs_registry=qcomm_codecs_registry)
        self._ec_sharder = ec_sharder or EmbeddingCollectionSharder(
            qcomm_codecs_registry=self.qcomm_codecs_registry
        )

    def shard(
        self,
        module: TransferEmbeddingBagCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedTransferEmbeddingBagCollection:
        return ShardedTransferEmbeddingBagCollection(
            module, params, self._ec_sharder, env, device or torch.device("cpu"),
            module_fqn=module_fqn,
        )

    @property
    def fused_params(self) -> dict[str, Any] | None:
        return self._ec_sharder.fused_params

    def shardable_parameters(
        self, module: TransferEmbeddingBagCollection
    ) -> dict[str, nn.Parameter]:
        return self._ec_sharder.shardable_parameters(module.new)

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return list(SHARDING_TYPES)

    def storage_usage(
        self, tensor: torch.Tensor, compute_device_type: str, compute_kernel: str
    ) -> dict[str, int]:
        # Each planned table is held twice: W_{t-1} and Ŵ_t.
        usage = super().storage_usage(tensor, compute_device_type, compute_kernel)
        return {k: 2 * v for k, v in usage.items()}

    @property
    def module_type(self) -> type[TransferEmbeddingBagCollection]:
        return TransferEmbeddingBagCollection

    @property
    def sharded_module_type(self) -> type[ShardedTransferEmbeddingBagCollection]:
        return ShardedTransferEmbeddingBagCollection
