"""An EmbeddingBagCollection whose rows are SML transfers of two tables.

``TransferEmbeddingBagCollection`` holds, for every table, the previous period's table
W_{t-1} (``prev``, frozen) and this period's table Ŵ_t (``new``, trained), plus one
:class:`TransferNet` per table. Looking up a KeyedJaggedTensor returns, per feature, the pooled
rows of ``W_t = f_Θ(W_{t-1}, Ŵ_t)``: KJT in, KeyedTensor out, exactly like an EBC, so it can
replace an EBC inside any TorchRec model.

The transfer is applied once per *unique* id of a table in the batch, before pooling (it is a
row-wise function, so pooling first would be wrong for bags of several ids). So ``prev`` and
``new`` are unpooled ``EmbeddingCollection``s over the same tables, each table with one
feature of its own name, and the module looks up a KJT of every table's unique ids. Sharded,
that makes a lookup move only the rows asked for: a row-wise sharded EC returns rows with one
all-to-all, where a pooled EBC reduce-scatters a [ranks x stride, features x d] block, mostly
zeros for one-id bags (``benchmarks/sml_step.py`` measures what that is worth on 2 ranks).
TorchRec's ECs need one embedding dim for all their tables, so the tables of one collection
share theirs.

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

import dataclasses
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import (
    BaseEmbeddingConfig,
    EmbeddingBagConfig,
    EmbeddingConfig,
    PoolingType,
)
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from sml_torchrec.modules.transfer import TransferConfig, TransferNet

MODES = ("tables", "transfer", "frozen")


class TransferEmbeddingBagCollection(nn.Module):
    """Drop-in EBC returning ``f_Θ(W_{t-1}, Ŵ_t)`` rows, pooled per feature.

    Args:
        tables: table configs (SUM or MEAN pooling); ``prev`` and ``new`` both use them.
        transfer: config of the per-table transfer nets.
        device: where to create the tables (use ``torch.device("meta")`` before sharding).

    Shapes: ``forward(features)`` with a KJT of stride B returns a KeyedTensor whose values are
    ``[B, sum of feature dims]``, keys = the tables' features in table order.
    """

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        transfer: TransferConfig | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        for t in tables:
            if t.pooling not in (PoolingType.SUM, PoolingType.MEAN):
                raise ValueError(f"table {t.name!r}: pooling {t.pooling} is not supported")
            if t.embedding_dim != tables[0].embedding_dim:
                raise ValueError(
                    f"table {t.name!r} has embedding_dim {t.embedding_dim} but table "
                    f"{tables[0].name!r} has {tables[0].embedding_dim}: the tables of one "
                    "TransferEmbeddingBagCollection share one dim (put tables of other dims "
                    "in a second one)"
                )
        self.tables = tables
        lookup_tables = [_lookup_config(t) for t in tables]
        self.prev = EmbeddingCollection(tables=lookup_tables, device=device)
        self.new = EmbeddingCollection(tables=lookup_tables, device=device)
        self.transfers = nn.ModuleDict(
            {t.name: TransferNet(t.embedding_dim, transfer) for t in tables}
        )
        self.mode = "tables"
        self._features = [f for t in tables for f in t.feature_names]
        self._lookup_keys = [t.name for t in tables]
        self._reg: torch.Tensor | None = None

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
    ) -> tuple[KeyedJaggedTensor, dict[str, torch.Tensor]]:
        """KJT of each table's unique ids, and per feature its inverse index into them."""
        uniq: dict[str, torch.Tensor] = {}
        inverse: dict[str, torch.Tensor] = {}
        for t in self.tables:
            vals = [per_feature[f].values() for f in t.feature_names]
            u, inv = torch.unique(torch.cat(vals), return_inverse=True)
            uniq[t.name] = u
            start = 0
            for f, v in zip(t.feature_names, vals):
                inverse[f] = inv[start : start + len(v)]
                start += len(v)
        # This rank's own stride: the EC's input distribution exchanges strides between ranks.
        stride = max([len(u) for u in uniq.values()] + [1])
        lengths = []
        for t in self.tables:
            ln = torch.zeros(stride, dtype=torch.int32, device=uniq[t.name].device)
            ln[: len(uniq[t.name])] = 1
            lengths.append(ln)
        lookup = KeyedJaggedTensor.from_lengths_sync(
            keys=self._lookup_keys, values=torch.cat(list(uniq.values())),
            lengths=torch.cat(lengths),
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
        """Rows of W_{t-1} and Ŵ_t, per table ``[unique ids, d]``, for the deduplicated KJT.

        When both are sharded with one plan (``sml_torchrec.distributed.sharding`` copies Ŵ_t's
        plan onto W_{t-1}), the ids are distributed to the shards once and both modules look
        them up from that input, through the ``input_dist`` / ``compute_and_output_dist``
        split TorchRec's train pipelines use: one round of input all-to-alls a step, not two.
        """
        grad = torch.no_grad() if self.mode != "tables" else nullcontext()
        if not self._shares_input_dist():
            with torch.no_grad():
                prev = self.prev(lookup)
            with grad:
                new = self.new(lookup)
            return _rows(prev), _rows(new)
        ctx = self.new.create_context()
        dist_input = self.new.input_dist(ctx, lookup).wait().wait()
        with torch.no_grad():
            prev_out = self.prev.compute_and_output_dist(ctx, dist_input)
        with grad:
            new_out = self.new.compute_and_output_dist(ctx, dist_input)
        with torch.no_grad():
            prev = prev_out.wait()
        with grad:
            new = new_out.wait()
        return _rows(prev), _rows(new)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        per_feature = features.to_dict()
        lookup, inverse = self._dedup(per_feature)
        prev, new = self._lookup(lookup)
        outputs, reg = [], []
        for t in self.tables:
            rows_prev, rows_new = prev[t.name], new[t.name]
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
                outputs.append(_pool(rows, inverse[f], per_feature[f], t.pooling))
        self._reg = torch.stack(reg).sum()
        return KeyedTensor(
            keys=self._features,
            length_per_key=[o.shape[1] for o in outputs],
            values=torch.cat(outputs, dim=1),
        )


def _lookup_config(t: EmbeddingBagConfig) -> EmbeddingConfig:
    """The table as looked up inside: unpooled, one feature named after the table."""
    base = {f.name: getattr(t, f.name) for f in dataclasses.fields(BaseEmbeddingConfig)
            if f.init}
    return EmbeddingConfig(**{**base, "feature_names": [t.name]})


def _rows(out: dict[str, JaggedTensor]) -> dict[str, torch.Tensor]:
    return {k: jt.values() for k, jt in out.items()}


def _pool(rows: torch.Tensor, inverse: torch.Tensor, jt, pooling: PoolingType) -> torch.Tensor:
    """Pool ``rows[inverse]`` into bags given by the jagged tensor's lengths: ``[B, d]``.

    Empty bags pool to zeros under both SUM and MEAN, as TorchRec's EmbeddingBagCollection.
    """
    lengths = jt.lengths()
    if inverse.numel() == lengths.numel() and bool((lengths == 1).all()):
        return rows.index_select(0, inverse)  # one id per bag (MF): a gather, no pooling
    mode = "mean" if pooling == PoolingType.MEAN else "sum"
    return F.embedding_bag(inverse, rows, jt.offsets(), mode=mode, include_last_offset=True)
