"""An EmbeddingBagCollection whose rows are SML transfers of two tables.

``TransferEmbeddingBagCollection`` holds, for every table, the previous period's table
W_{t-1} (``prev``, frozen) and this period's table Ŵ_t (``new``, trained), both plain
``EmbeddingBagCollection``s with identical configs, plus one :class:`TransferNet` per table.
Looking up a KeyedJaggedTensor returns, per feature, the pooled rows of
``W_t = f_Θ(W_{t-1}, Ŵ_t)``: KJT in, KeyedTensor out, exactly like an EBC, so it can replace an
EBC inside any TorchRec model, and ``DistributedModelParallel`` shards ``prev`` and ``new``
like any other EBC.

The transfer is applied once per *unique* id of a table in the batch, before pooling (it is a
row-wise function, so pooling first would be wrong for bags of several ids). To do that the
module looks up a deduplicated KJT: for each table, its first feature carries the unique ids
one per bag and its other features carry empty bags.

Which parameters learn is set by :attr:`mode`:

* ``"tables"`` (SML step 1): gradients reach Ŵ_t only; Θ is used with detached parameters.
* ``"transfer"`` (SML step 2): gradients reach Θ only; both tables are looked up without grad.
* ``"frozen"``: nothing gets gradients (evaluation).

W_{t-1} is always looked up under ``torch.no_grad()``: with TorchRec's fused kernels a table
with no optimizer attached is still updated by FBGEMM's default fused SGD if any gradient
reaches it, and ``requires_grad_(False)`` does not prevent that. When ``prev`` and ``new`` are
sharded with one plan, the deduplicated ids are distributed to the shards once for both.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from sml_torchrec.modules.transfer import TransferConfig, TransferNet

MODES = ("tables", "transfer", "frozen")


class TransferEmbeddingBagCollection(nn.Module):
    """Drop-in EBC returning ``f_Θ(W_{t-1}, Ŵ_t)`` rows, pooled per feature.

    Args:
        tables: table configs (SUM or MEAN pooling); ``prev`` and ``new`` both use them.
        transfer: config of the per-table transfer nets.
        device: where to create the tables (use ``torch.device("meta")`` before sharding).
        stride_fn: maps the local lookup stride to the one to use. Sharded EBCs need the same
            stride on every rank, so the distributed layer sets this to a max over ranks;
            unsharded use needs nothing.

    Shapes: ``forward(features)`` with a KJT of stride B returns a KeyedTensor whose values are
    ``[B, sum of feature dims]``, keys = the tables' features in table order.
    """

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        transfer: TransferConfig | None = None,
        device: torch.device | None = None,
        stride_fn: Callable[[int], int] | None = None,
    ) -> None:
        super().__init__()
        for t in tables:
            if t.pooling not in (PoolingType.SUM, PoolingType.MEAN):
                raise ValueError(f"table {t.name!r}: pooling {t.pooling} is not supported")
        self.tables = tables
        self.prev = EmbeddingBagCollection(tables=tables, device=device)
        self.new = EmbeddingBagCollection(tables=tables, device=device)
        self.transfers = nn.ModuleDict(
            {t.name: TransferNet(t.embedding_dim, transfer) for t in tables}
        )
        self.mode = "tables"
        self._features = [f for t in tables for f in t.feature_names]
        self._reg: torch.Tensor | None = None
        self.stride_fn = stride_fn

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """Same as ``EmbeddingBagCollection.embedding_bag_configs`` (models read dims here)."""
        return self.tables

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def new_table_sq_norm(self) -> torch.Tensor:
        """Sum of squared Ŵ_t rows used by the last forward (for the λ1‖Ŵ_t‖² term)."""
        if self._reg is None:
            raise RuntimeError("call forward first")
        return self._reg

    def _dedup(
        self, per_feature: dict[str, JaggedTensor]
    ) -> tuple[KeyedJaggedTensor, dict[str, tuple[torch.Tensor, int]]]:
        """KJT of each table's unique ids, and per feature its inverse index into them."""
        uniq: dict[str, torch.Tensor] = {}
        inverse: dict[str, tuple[torch.Tensor, int]] = {}
        for t in self.tables:
            vals = [per_feature[f].values() for f in t.feature_names]
            u, inv = torch.unique(torch.cat(vals), return_inverse=True)
            uniq[t.name] = u
            start = 0
            for f, v in zip(t.feature_names, vals):
                inverse[f] = (inv[start : start + len(v)], len(u))
                start += len(v)
        stride = max([len(u) for u in uniq.values()] + [1])
        if self.stride_fn is not None:
            stride = self.stride_fn(stride)
        values, lengths = [], []
        for t in self.tables:
            u = uniq[t.name]
            for k in range(len(t.feature_names)):
                n = len(u) if k == 0 else 0
                values.append(u[:n])
                ln = torch.zeros(stride, dtype=torch.int32, device=u.device)
                ln[:n] = 1
                lengths.append(ln)
        lookup = KeyedJaggedTensor.from_lengths_sync(
            keys=self._features, values=torch.cat(values), lengths=torch.cat(lengths)
        )
        return lookup, inverse

    def _shares_input_dist(self) -> bool:
        """Whether ``prev`` and ``new`` are sharded modules with one and the same plan."""
        plans = [getattr(m, "module_sharding_plan", None) for m in (self.prev, self.new)]
        return (
            plans[0] is not None
            and plans[0] == plans[1]
            and all(hasattr(m, "compute_and_output_dist") for m in (self.prev, self.new))
        )

    def _lookup(
        self, lookup: KeyedJaggedTensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pooled rows of W_{t-1} and Ŵ_t, per feature, for the deduplicated KJT.

        When both are sharded with one plan (``sml_torchrec.distributed.sharding`` copies Ŵ_t's
        plan onto W_{t-1}), the ids are distributed to the shards once and both modules look
        them up from that input, through the ``input_dist`` / ``compute_and_output_dist``
        split TorchRec's train pipelines use: one round of input all-to-alls a step, not two.
        """
        grad = torch.no_grad() if self.mode != "tables" else nullcontext()
        if not self._shares_input_dist():
            with torch.no_grad():
                prev = self.prev(lookup).to_dict()
            with grad:
                new = self.new(lookup).to_dict()
            return prev, new
        ctx = self.new.create_context()
        dist_input = self.new.input_dist(ctx, lookup).wait().wait()
        with torch.no_grad():
            prev_out = self.prev.compute_and_output_dist(ctx, dist_input)
        with grad:
            new_out = self.new.compute_and_output_dist(ctx, dist_input)
        with torch.no_grad():
            prev = prev_out.wait().to_dict()
        with grad:
            new = new_out.wait().to_dict()
        return prev, new

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        per_feature = features.to_dict()
        lookup, inverse = self._dedup(per_feature)
        prev, new = self._lookup(lookup)
        outputs, reg = [], []
        for t in self.tables:
            first = t.feature_names[0]
            n = inverse[first][1]
            rows_prev, rows_new = prev[first][:n], new[first][:n]
            net = self.transfers[t.name]
            if self.mode == "transfer":
                rows = net(rows_prev, rows_new)
            else:
                # Θ is a constant here: no gradient work for it, and DDP sees no Θ gradients.
                consts = tuple(t.detach() for t in net.params())
                with torch.no_grad() if self.mode == "frozen" else nullcontext():
                    rows = net(rows_prev, rows_new, consts)
            reg.append(rows_new.pow(2).sum())
            for f in t.feature_names:
                outputs.append(_pool(rows, inverse[f][0], per_feature[f], t.pooling))
        self._reg = torch.stack(reg).sum()
        return KeyedTensor(
            keys=self._features,
            length_per_key=[o.shape[1] for o in outputs],
            values=torch.cat(outputs, dim=1),
        )


def _pool(rows: torch.Tensor, inverse: torch.Tensor, jt, pooling: PoolingType) -> torch.Tensor:
    """Pool ``rows[inverse]`` into bags given by the jagged tensor's lengths: ``[B, d]``.

    Empty bags pool to zeros under both SUM and MEAN, as TorchRec's EmbeddingBagCollection.
    """
    lengths = jt.lengths()
    if inverse.numel() == lengths.numel() and bool((lengths == 1).all()):
        return rows.index_select(0, inverse)  # one id per bag (MF): a gather, no pooling
    mode = "mean" if pooling == PoolingType.MEAN else "sum"
    return F.embedding_bag(inverse, rows, jt.offsets(), mode=mode, include_last_offset=True)
