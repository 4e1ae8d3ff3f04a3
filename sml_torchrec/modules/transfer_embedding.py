"""An EmbeddingBagCollection whose rows are SML transfers of two tables.

``TransferEmbeddingBagCollection`` holds, for every table, the previous period's table
W_{t-1} (``prev``, frozen) and this period's table Ŵ_t (``new``, trained), plus one
:class:`TransferNet` per table in ``transfers`` (Θ). Looking up a KeyedJaggedTensor returns,
per feature, the pooled rows of ``W_t = f_Θ(W_{t-1}, Ŵ_t)``: KJT in, KeyedTensor out, exactly
like an EBC, so it can replace an EBC inside any TorchRec model. This module runs in one
process and knows nothing of sharding; ``sml_torchrec.distributed.transfer_embedding`` has
its sharded form and the sharder that ``DistributedModelParallel`` and the planner use.

The transfer is applied once per *unique* id of a table in the batch, before pooling (it is a
row-wise function, so pooling first would be wrong for bags of several ids). So ``prev`` and
``new`` are unpooled ``EmbeddingCollection``s over the same tables, each table with one
feature of its own name, and the module looks up a KJT of every table's unique ids
(:func:`dedup_ids`). TorchRec's ECs need one embedding dim for all their tables, so the
tables of one collection share theirs.

Which parameters learn is set by :meth:`set_mode`:

* ``"tables"`` (SML step 1): gradients reach Ŵ_t only; Θ is used as a constant.
* ``"transfer"`` (SML step 2): gradients reach Θ only; both tables are constants.
* ``"frozen"``: nothing gets gradients (evaluation, serving).

W_{t-1} never gets a gradient: its rows are detached (sharded, it is looked up under
``no_grad``, because a fused TorchRec table updates itself whenever a gradient reaches it).

After a period, :meth:`materialize` writes W_t into W_{t-1} and starts Ŵ_{t+1} from W_t;
:meth:`served_weights` and :meth:`served_collection` give W_t out for serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import (
    BaseEmbeddingConfig,
    EmbeddingBagConfig,
    EmbeddingConfig,
    PoolingType,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from sml_torchrec.modules.transfer import TransferConfig, TransferNet, materialize

MODES = ("tables", "transfer", "frozen")


class TransferModes:
    """What both the plain and the sharded collection share: the training mode and the λ1 term.

    ``set_transfer_mode(model, mode)`` sets the mode of every such collection in a model.
    """

    mode: str = "tables"
    _reg: torch.Tensor | None = None

    def set_mode(self, mode: str) -> None:
        """``"tables"`` (step 1), ``"transfer"`` (step 2) or ``"frozen"``; see the module doc."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def new_table_sq_norm(self) -> torch.Tensor:
        """Sum of squared Ŵ_t rows used by the last forward (for the λ1‖Ŵ_t‖² term)."""
        if self._reg is None:
            raise RuntimeError("call forward first")
        return self._reg


def set_transfer_mode(model: nn.Module, mode: str) -> int:
    """Set ``mode`` on every transfer-wrapped collection in ``model`` (sharded or not, inside
    DMP or not); returns how many there are."""
    found = [m for m in model.modules() if isinstance(m, TransferModes)]
    for m in found:
        m.set_mode(mode)
    return len(found)


class TransferEmbeddingBagCollection(TransferModes, nn.Module):
    """Drop-in EBC returning ``f_Θ(W_{t-1}, Ŵ_t)`` rows, pooled per feature.

    Args:
        tables: table configs (SUM or MEAN pooling, one embedding dim); ``prev`` and ``new``
            both use them.
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
        check_tables(tables)
        self.tables = tables
        lookup_tables = [_lookup_config(t) for t in tables]
        self.prev = EmbeddingCollection(tables=lookup_tables, device=device)
        self.new = EmbeddingCollection(tables=lookup_tables, device=device)
        self.transfers = nn.ModuleDict(
            {t.name: TransferNet(t.embedding_dim, transfer) for t in tables}
        )
        if device is not None and device.type != "meta":
            self.transfers.to(device)  # on meta, Θ stays real on CPU until it is sharded
        self.mode = "tables"

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """Same as ``EmbeddingBagCollection.embedding_bag_configs`` (models read dims here)."""
        return self.tables

    def transfer_parameters(self) -> Iterator[nn.Parameter]:
        """Θ: the parameters of every table's transfer net (for the step-2 optimizer)."""
        return self.transfers.parameters()

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        lookup, inverse = dedup_ids(features, self.tables)
        prev = _rows(self.prev(lookup))
        new = _rows(self.new(lookup))
        return transfer_and_pool(self, features, prev, new, inverse)

    # -- the served tables ----------------------------------------------------------------------
    def _weights(self, which: EmbeddingCollection) -> dict[str, torch.Tensor]:
        return {t.name: which.embeddings[t.name].weight for t in self.tables}

    @torch.no_grad()
    def reset_tables(self, weights: dict[str, torch.Tensor]) -> None:
        """Start a period from ``weights`` (full tables by name): W_{t-1} = Ŵ_t = weights."""
        for which in (self.prev, self.new):
            for name, w in self._weights(which).items():
                w.copy_(_full_table(weights, name, tuple(w.shape)))

    @torch.no_grad()
    def materialize(self) -> None:
        """W_t = f_Θ(W_{t-1}, Ŵ_t) into W_{t-1}, and Ŵ_{t+1} starts from W_t."""
        prev, new = self._weights(self.prev), self._weights(self.new)
        for t in self.tables:
            materialize(self.transfers[t.name], prev[t.name], new[t.name], out=prev[t.name])
            new[t.name].copy_(prev[t.name])

    @torch.no_grad()
    def served_block(self, table: str) -> tuple[torch.Tensor, int]:
        """Rows of W_t of ``table`` and the id of the first one (here: all rows, from 0)."""
        prev, new = self._weights(self.prev)[table], self._weights(self.new)[table]
        out = torch.empty_like(new)
        materialize(self.transfers[table], prev, new, out=out)
        return out, 0

    def served_weights(self) -> dict[str, torch.Tensor]:
        """W_t of every table, by name: what this collection serves."""
        return {t.name: self.served_block(t.name)[0] for t in self.tables}

    def served_collection(self) -> EmbeddingBagCollection:
        """W_t as a plain ``EmbeddingBagCollection`` with the same tables (for serving)."""
        return embedding_bag_collection(self.tables, self.served_weights())


def check_tables(tables: list[EmbeddingBagConfig]) -> None:
    """Refuse, by table name, what a transfer-wrapped collection cannot hold."""
    if not tables:
        raise ValueError("a TransferEmbeddingBagCollection needs at least one table")
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


def embedding_bag_collection(
    tables: list[EmbeddingBagConfig], weights: dict[str, torch.Tensor]
) -> EmbeddingBagCollection:
    """A plain EBC over ``tables`` holding ``weights`` (full tables by name), on CPU."""
    ebc = EmbeddingBagCollection(tables=[dataclasses.replace(t) for t in tables])
    with torch.no_grad():
        for t in tables:
            w = ebc.embedding_bags[t.name].weight
            w.copy_(_full_table(weights, t.name, tuple(w.shape)))
    return ebc


def _full_table(weights: dict[str, torch.Tensor], name: str, shape: tuple) -> torch.Tensor:
    if name not in weights:
        raise KeyError(f"no weights given for table {name!r} (given: {sorted(weights)})")
    if tuple(weights[name].shape) != shape:
        raise ValueError(f"table {name!r} is {shape}, got {tuple(weights[name].shape)}")
    return weights[name]


def dedup_ids(
    features: KeyedJaggedTensor, tables: list[EmbeddingBagConfig]
) -> tuple[KeyedJaggedTensor, dict[str, torch.Tensor]]:
    """The ids to look up: a KJT with one key per table (the table's name) holding each of its
    unique ids once, and per feature the index of each of its ids into them.

    Every table gets the same stride (this rank's largest count of unique ids), padded with
    empty bags.
    """
    per_feature = features.to_dict()
    uniq: dict[str, torch.Tensor] = {}
    inverse: dict[str, torch.Tensor] = {}
    for t in tables:
        vals = [per_feature[f].values() for f in t.feature_names]
        u, inv = torch.unique(torch.cat(vals), return_inverse=True)
        uniq[t.name] = u
        start = 0
        for f, v in zip(t.feature_names, vals):
            inverse[f] = inv[start : start + len(v)]
            start += len(v)
    stride = max([len(u) for u in uniq.values()] + [1])
    lengths = []
    for t in tables:
        ln = torch.zeros(stride, dtype=torch.int32, device=uniq[t.name].device)
        ln[: len(uniq[t.name])] = 1
        lengths.append(ln)
    lookup = KeyedJaggedTensor.from_lengths_sync(
        keys=[t.name for t in tables], values=torch.cat(list(uniq.values())),
        lengths=torch.cat(lengths),
    )
    return lookup, inverse


def transfer_and_pool(
    module: TransferModes | nn.Module,
    features: KeyedJaggedTensor,
    prev: dict[str, torch.Tensor],
    new: dict[str, torch.Tensor],
    inverse: dict[str, torch.Tensor],
    theta: dict[str, tuple[torch.Tensor, ...]] | None = None,
) -> KeyedTensor:
    """``W_t`` rows for the looked-up unique ids, pooled into the features' bags.

    ``prev`` / ``new``: per table ``[unique ids, d]`` rows of W_{t-1} and Ŵ_t; ``theta``
    optionally replaces each table's Θ (the sharded module passes Θ through its gradient
    all-reduce). Sets the module's λ1 term. Returns a KeyedTensor ``[B, features x d]``.
    """
    mode = module.mode
    per_feature = features.to_dict()
    outputs, reg, keys = [], [], []
    for t in module.tables:
        net = module.transfers[t.name]
        rows_prev = prev[t.name].detach()
        rows_new = new[t.name] if mode == "tables" else new[t.name].detach()
        if mode == "transfer":
            rows = net(rows_prev, rows_new, None if theta is None else theta[t.name])
        else:
            # Θ is a constant here: no gradient work for it.
            consts = tuple(p.detach() for p in net.params())
            rows = net(rows_prev, rows_new, consts)
        reg.append(rows_new.pow(2).sum())
        for f in t.feature_names:
            outputs.append(_pool(rows, inverse[f], per_feature[f], t.pooling))
            keys.append(f)
    module._reg = torch.stack(reg).sum()
    return KeyedTensor(
        keys=keys, length_per_key=[o.shape[1] for o in outputs], values=torch.cat(outputs, dim=1)
    )


def _lookup_config(t: EmbeddingBagConfig) -> EmbeddingConfig:
    """The table as looked up inside: unpooled, one feature named after the table."""
    base = {f.name: getattr(t, f.name) for f in dataclasses.fields(BaseEmbeddingConfig)
            if f.init}
    return EmbeddingConfig(**{**base, "feature_names": [t.name]})


def _rows(out: dict[str, JaggedTensor]) -> dict[str, torch.Tensor]:
    return {k: jt.values() for k, jt in out.items()}


def _pool(
    rows: torch.Tensor, inverse: torch.Tensor, jt: JaggedTensor, pooling: PoolingType
) -> torch.Tensor:
    """Pool ``rows[inverse]`` into bags given by the jagged tensor's lengths: ``[B, d]``.

    Empty bags pool to zeros under both SUM and MEAN, as TorchRec's EmbeddingBagCollection.
    """
    lengths = jt.lengths()
    if inverse.numel() == lengths.numel() and bool((lengths == 1).all()):
        return rows.index_select(0, inverse)  # one id per bag (MF): a gather, no pooling
    mode = "mean" if pooling == PoolingType.MEAN else "sum"
    return F.embedding_bag(inverse, rows, jt.offsets(), mode=mode, include_last_offset=True)
