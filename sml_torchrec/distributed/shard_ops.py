"""Operations on the local shards of sharded tables: reading, loading, transfer in place.

Local shards come from ``state_dict()`` ShardedTensors; each ``Shard.tensor`` is a view of the
fused kernel's weight, so an in-place write is what the next lookup sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from sml_torchrec.modules.transfer import TransferNet, materialize


@dataclass
class LocalShard:
    """A block of a table held by this rank: ``tensor`` = table[row:row+rows, col:col+cols]."""

    tensor: torch.Tensor
    row: int
    col: int

    @property
    def full_rows(self) -> bool:
        return self.col == 0


def table_weights(collection: nn.Module) -> dict[str, torch.Tensor | ShardedTensor]:
    """The weight of every table of an embedding collection, by table name.

    ``collection`` is an ``EmbeddingBagCollection`` or ``EmbeddingCollection``, sharded by DMP
    or not; sharded weights are ShardedTensors whose local shards are the kernel's weights.
    """
    out = {}
    for key, value in collection.state_dict().items():
        kind, _, rest = key.partition(".")
        table, _, leaf = rest.partition(".")
        if kind in ("embedding_bags", "embeddings") and leaf == "weight":
            out[table] = value
    if not out:
        raise TypeError(f"{type(collection).__name__} holds no embedding tables")
    return out


def local_shards(t: torch.Tensor | ShardedTensor) -> list[LocalShard]:
    """This rank's blocks of a table (the whole tensor if it is not sharded)."""
    if isinstance(t, ShardedTensor):
        return [
            LocalShard(s.tensor, s.metadata.shard_offsets[0], s.metadata.shard_offsets[1])
            for s in t.local_shards()
        ]
    return [LocalShard(t, 0, 0)]


def global_shape(t: torch.Tensor | ShardedTensor) -> tuple[int, int]:
    return tuple(t.size())  # type: ignore[return-value]


def gather_full(t: torch.Tensor | ShardedTensor) -> torch.Tensor:
    """The whole table on every rank (O(table) memory and traffic: for small/medium tables)."""
    rows, cols = global_shape(t)
    shards = local_shards(t)
    dtype = shards[0].tensor.dtype if shards else torch.float32
    full = torch.zeros(rows, cols, dtype=dtype)
    for s in shards:
        r, c = s.tensor.shape
        full[s.row : s.row + r, s.col : s.col + c] = s.tensor.detach().cpu()
    if isinstance(t, ShardedTensor) and dist.is_initialized() and dist.get_world_size() > 1:
        # Every element lives in exactly one shard, so a sum assembles the table.
        dist.all_reduce(full)
    return full


@torch.no_grad()
def load_full(t: torch.Tensor | ShardedTensor, full: torch.Tensor) -> None:
    """Copy the matching block of ``full`` into each local shard (any sharding type)."""
    if tuple(full.shape) != global_shape(t):
        raise ValueError(f"table is {global_shape(t)}, got {tuple(full.shape)}")
    for s in local_shards(t):
        r, c = s.tensor.shape
        s.tensor.copy_(full[s.row : s.row + r, s.col : s.col + c].to(s.tensor))


def check_colocated(prev: list[LocalShard], new: list[LocalShard], table: str) -> None:
    a = [(s.row, s.col, tuple(s.tensor.shape)) for s in prev]
    b = [(s.row, s.col, tuple(s.tensor.shape)) for s in new]
    if a != b:
        raise RuntimeError(f"table {table!r}: W_prev shards {a} and W_new shards {b} differ")


@torch.no_grad()
def transfer_in_place(
    net: TransferNet,
    prev: torch.Tensor | ShardedTensor,
    new: torch.Tensor | ShardedTensor,
    table: str,
    chunk_rows: int = 2048,
) -> int:
    """W_t = f(W_{t-1}, Ŵ_t) written into ``prev``'s shards, then copied into ``new``'s.

    Row-wise and table-wise shards hold whole rows: the transfer runs on them locally in chunks,
    with no communication. Column-wise shards hold a column block only, and the transfer mixes
    columns, so those tables are gathered whole first. Returns the number of rows transferred
    on this rank.
    """
    ps, ns = local_shards(prev), local_shards(new)
    check_colocated(ps, ns, table)
    _, cols = global_shape(prev)
    whole_rows = all(s.col == 0 and s.tensor.shape[1] == cols for s in ps)
    # Ranks must agree on whether to gather (a collective): decide from the plan, not locally.
    any_partial = torch.tensor([0 if whole_rows else 1])
    if isinstance(prev, ShardedTensor) and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(any_partial)
    done = 0
    if not any_partial.item():
        for p, n in zip(ps, ns):
            materialize(net, p.tensor, n.tensor, out=p.tensor, chunk_rows=chunk_rows)
            n.tensor.copy_(p.tensor)
            done += p.tensor.shape[0]
        return done
    full_prev, full_new = gather_full(prev), gather_full(new)
    rows_needed = sorted({(s.row, s.tensor.shape[0]) for s in ps})
    for row, count in rows_needed:
        block = torch.empty(count, cols)
        materialize(net, full_prev[row : row + count], full_new[row : row + count], out=block,
                    chunk_rows=chunk_rows)
        full_prev[row : row + count] = block
        done += count
    load_full_local(ps, full_prev)
    load_full_local(ns, full_prev)
    return done


def load_full_local(shards: list[LocalShard], full: torch.Tensor) -> None:
    for s in shards:
        r, c = s.tensor.shape
        s.tensor.copy_(full[s.row : s.row + r, s.col : s.col + c])


def row_block(t: torch.Tensor | ShardedTensor) -> tuple[torch.Tensor, int]:
    """A contiguous block of whole rows for this rank, blocks disjoint across ranks.

    Row-wise: the local shard itself. Table-wise: the owner has every row, the others none.
    Column-wise: gathered, then split into equal row blocks per rank.
    """
    rows, cols = global_shape(t)
    shards = local_shards(t)
    partial = torch.tensor([int(any(s.tensor.shape[1] != cols for s in shards))])
    multi = isinstance(t, ShardedTensor) and dist.is_initialized() and dist.get_world_size() > 1
    if multi:
        dist.all_reduce(partial)
    if not partial.item():
        if not shards:
            return torch.empty(0, cols), 0
        if len(shards) > 1:
            raise RuntimeError("several whole-row shards on one rank are not supported here")
        return shards[0].tensor.detach(), shards[0].row
    full = gather_full(t)
    world, rank = (dist.get_world_size(), dist.get_rank()) if multi else (1, 0)
    per = -(-rows // world)
    return full[rank * per : (rank + 1) * per], rank * per


def rank_share(ids: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of ``ids``, zero-padded to the same length on every rank
    (sharded lookups need one stride everywhere); :func:`gather_shares` undoes it."""
    per = -(-len(ids) // world_size) if len(ids) else 1
    mine = ids[rank * per : (rank + 1) * per]
    padded = np.zeros(per, dtype=np.int64)
    padded[: len(mine)] = mine
    return padded


def gather_shares(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's ``rows`` (from :func:`rank_share` ids) and drop the padding."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows)
        rows = torch.cat(parts)
    return rows[:n]


def same_layout(a: torch.Tensor | ShardedTensor, b: torch.Tensor | ShardedTensor) -> bool:
    """Whether two tables have the same local shards (offsets and shapes) on every rank.

    A collective when the tables are sharded: every rank gets the same answer.
    """
    mine = [(s.row, s.col, tuple(s.tensor.shape)) for s in local_shards(a)]
    ok = torch.tensor([int(mine == [(s.row, s.col, tuple(s.tensor.shape))
                                    for s in local_shards(b)])])
    if (isinstance(a, ShardedTensor) or isinstance(b, ShardedTensor)) and dist.is_initialized() \
            and dist.get_world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


@torch.no_grad()
def write_blocks(
    dst: torch.Tensor | ShardedTensor, blocks: list[LocalShard], full_shape: tuple[int, int],
    aligned: bool,
) -> None:
    """Write ``blocks`` (this rank's part of a table; the ranks' parts together cover it once)
    into ``dst``.

    ``aligned`` (from :func:`same_layout`, the same on every rank): the blocks are ``dst``'s own
    local shards, in order, and are copied locally; otherwise the table is assembled on every
    rank (O(table) memory, one all-reduce) and each rank loads its shards from it.
    """
    if aligned:
        for s, b in zip(local_shards(dst), blocks):
            s.tensor.copy_(b.tensor)
        return
    full = torch.zeros(full_shape)
    for b in blocks:
        r, c = b.tensor.shape
        full[b.row : b.row + r, b.col : b.col + c] = b.tensor.cpu()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(full)
    load_full(dst, full)


def copy_table(src: torch.Tensor | ShardedTensor, dst: torch.Tensor | ShardedTensor) -> None:
    """``dst`` = ``src``, shard by shard when they are sharded alike, else through a gathered
    table (a collective: every rank calls it)."""
    write_blocks(dst, local_shards(src), global_shape(src), same_layout(src, dst))


def copy_tables(
    src: dict[str, torch.Tensor | ShardedTensor], dst: dict[str, torch.Tensor | ShardedTensor]
) -> None:
    """``dst[name]`` = ``src[name]`` for every table of ``src`` (a collective)."""
    for name, s in src.items():
        copy_table(s, dst[name])
