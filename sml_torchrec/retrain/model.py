"""Sharded models as the retraining strategies use them, and the MF model itself.

:class:`ShardedModel` is what every model here shares: a module sharded by plain DMP with the
library's sharders, and the served-model protocol evaluation reads (user vectors, this rank's
block of item rows). :class:`RetrainModel` is MF, plain or transfer-wrapped; the sequential
models are in ``sequential_model.py``.

The MF model is built the way a TorchRec user builds theirs: an unsharded module on the meta
device (``MatrixFactorization`` over an ``EmbeddingBagCollection`` or a
``TransferEmbeddingBagCollection``), FBGEMM's fused row-wise Adagrad attached to the trained
tables, a plan from the planner with the library's sharders, and plain DMP. The tables and Θ
are reached only through the collections' public methods. Θ is stepped by a separate Adam.
Works on one process without any process group too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_common.process_group import rank_world
from sml_torchrec.data.batching import FEATURES, iterate_batches
from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.data.sampling import sample_negatives
from sml_torchrec.distributed.shard_ops import (
    gather_full,
    gather_shares,
    load_full,
    rank_share,
    row_block,
    table_weights,
)
from sml_torchrec.distributed.sharding import plan_sharding, shard_model
from sml_torchrec.modules.mf import (
    ITEM_BIAS_TABLE,
    ITEM_TABLE,
    USER_TABLE,
    MatrixFactorization,
    bias_lookup,
    bias_tables,
    log_loss,
    mf_tables,
)
from sml_torchrec.modules.transfer_embedding import TransferEmbeddingBagCollection
from sml_torchrec.retrain.config import RetrainConfig

TABLES = (USER_TABLE, ITEM_TABLE)


class ShardedModel:
    """A module sharded by DMP, with its dense optimizer, served to evaluation.

    Subclasses build the unsharded module (tables on the meta device, fused optimizers attached)
    and implement the served-model protocol: :meth:`user_vectors` and :meth:`item_block`.
    ``dmp`` and ``dense_opt`` are what checkpoints save.
    """

    def __init__(
        self, module: nn.Module, num_items: int, cfg: RetrainConfig,
        device: torch.device | None = None,
    ) -> None:
        self.cfg, self.num_items = cfg, num_items
        self.device = device or torch.device("cpu")
        self.rank, self.world_size = rank_world()
        plan = plan_sharding(module, cfg.sharding, self.world_size, self.device)
        self.dmp = shard_model(module, plan, self.device)
        self.dense_opt: torch.optim.Optimizer | None = None

    @torch.no_grad()
    def reset_table_optimizer(self) -> None:
        """Restart the tables' fused row-wise Adagrad: every accumulator back to 0, as a new
        optimizer has it (this rank's shards; no collective)."""
        for state in self.dmp.fused_optimizer.state.values():
            for v in state.values():
                local = [s.tensor for s in v.local_shards()] if isinstance(v, ShardedTensor) \
                    else [v]
                for t in local:
                    t.zero_()

    def user_vectors(self, users: np.ndarray) -> torch.Tensor:
        """Served user vectors for ``users`` [U] -> [U, d], identical on every rank (a
        collective: every rank calls it with the same users)."""
        raise NotImplementedError

    def item_block(self) -> tuple[torch.Tensor, int]:
        """This rank's block of served item rows (blocks disjoint across ranks, together all
        items) and the id of its first row."""
        raise NotImplementedError


class RetrainModel(ShardedModel):
    """MF over sharded tables; ``transfer=True`` makes it SML's f_Θ(W_{t-1}, Ŵ_t) model.

    ``embedding`` is the sharded collection (a ``ShardedTransferEmbeddingBagCollection`` for
    SML, TorchRec's sharded EBC otherwise); ``bias`` the sharded EBC of the user and item
    biases with ``cfg.biases`` (trained like the tables, by fused row-wise Adagrad; outside the
    transfer, so SML fits them in step 1 only), else None.

    Served rows carry the biases as two extra columns, users [p_u, 1, b_u] and items
    [q_i, b_i, 1], so that a dot product of served rows is the trained logit.
    """

    def __init__(
        self, num_users: int, num_items: int, cfg: RetrainConfig, transfer: bool,
        device: torch.device | None = None,
    ) -> None:
        self.transfer, self.num_users = transfer, num_users
        meta = torch.device("meta")
        tables = mf_tables(num_users, num_items, cfg.dim)
        if transfer:
            emb = TransferEmbeddingBagCollection(tables, cfg.transfer_config(), device=meta)
            trained = emb.new.parameters()
        else:
            emb = EmbeddingBagCollection(tables=tables, device=meta)
            trained = emb.parameters()
        apply_optimizer_in_backward(RowWiseAdagrad, trained, {"lr": cfg.table_lr})
        bias = None
        if cfg.biases:
            bias = EmbeddingBagCollection(tables=bias_tables(num_users, num_items), device=meta)
            apply_optimizer_in_backward(RowWiseAdagrad, bias.parameters(), {"lr": cfg.table_lr})
        super().__init__(MatrixFactorization(emb, bias), num_items, cfg, device)
        self.mf: MatrixFactorization = self.dmp.module
        self.embedding, self.bias = self.mf.embedding, self.mf.bias
        if transfer:
            self.dense_opt = torch.optim.Adam(
                self.embedding.transfer_parameters(), lr=cfg.transfer_lr,
                weight_decay=2 * cfg.l2_transfer,
            )

    # -- tables -------------------------------------------------------------------------------
    def bias_weights(self) -> dict[str, torch.Tensor]:
        """The bias tables by name (sharded), empty without biases."""
        return table_weights(self.bias) if self.bias is not None else {}

    def load_tables(self, full: dict[str, torch.Tensor]) -> None:
        """Set W (plain) or both W_{t-1} and Ŵ_t (transfer), and the biases, to the given full
        tables (as :meth:`export_tables` returns them)."""
        if self.transfer:
            self.embedding.reset_tables({name: full[name] for name in TABLES})
        else:
            for name, weight in table_weights(self.embedding).items():
                load_full(weight, full[name])
        for name, weight in self.bias_weights().items():
            load_full(weight, full[name])

    def export_tables(self) -> dict[str, torch.Tensor]:
        """Full tables of the model being served (with the bias tables, if any)."""
        if self.transfer:
            out = self.embedding.served_weights()
        else:
            out = {name: gather_full(w) for name, w in table_weights(self.embedding).items()}
        return out | {name: gather_full(w) for name, w in self.bias_weights().items()}

    def materialize(self) -> None:
        """W_t = f(W_{t-1}, Ŵ_t) into the W_{t-1} tables, then Ŵ_{t+1} starts from W_t."""
        self.embedding.materialize()

    # -- training -----------------------------------------------------------------------------
    def train_epoch(
        self, data: Interactions, num_items: int, seed: int, step: str = "tables",
        loss_fn: Callable[[KeyedJaggedTensor, torch.Tensor, torch.Tensor], torch.Tensor]
        | None = None,
    ) -> float:
        """One epoch over ``data`` (split disjointly across ranks); returns the mean loss.

        ``step="tables"``: update the tables only (plain MF, or SML step 1);
        ``step="transfer"``: update Θ only (SML step 2). ``loss_fn(features, pos, neg)``
        replaces the log loss L0 (the L2 term is added to it as usual).
        """
        if len(data) == 0:
            return float("nan")
        neg = sample_negatives(data.user_id, data.item_id, num_items, seed)
        batch = self.cfg.batch_size if step == "tables" else self.cfg.transfer_batch_size
        batch = max(1, batch // self.world_size)
        if self.transfer:
            self.embedding.set_mode(step)
        self.mf.train_bias = step == "tables"
        losses = []
        for b in iterate_batches(data.user_id, data.item_id, neg, batch, seed=seed,
                                 rank=self.rank, world_size=self.world_size):
            pos, negs, sq = self.dmp(b.features.to(self.device))
            loss = log_loss(pos, negs) if loss_fn is None else loss_fn(b.features, pos, negs)
            if step == "tables":
                if self.transfer:  # λ1 applies to the Ŵ_t rows behind the batch
                    sq = self.embedding.new_table_sq_norm() + self.mf.bias_sq_norm
                loss = loss + self.cfg.l2_tables * sq / b.size
            else:
                self.dense_opt.zero_grad(set_to_none=True)
            loss.backward()
            if step == "transfer":
                self.dense_opt.step()
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else float("nan")

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def user_vectors(self, users: np.ndarray) -> torch.Tensor:
        """Served user rows for ``users`` [U] -> [U, d], identical on every rank."""
        padded = rank_share(users, self.rank, self.world_size)
        per = len(padded)
        lengths = torch.zeros(len(FEATURES) * per, dtype=torch.int32)
        lengths[:per] = 1
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=list(FEATURES), values=torch.from_numpy(padded), lengths=lengths
        ).to(self.device)
        if self.transfer:
            self.embedding.set_mode("frozen")
        rows = self.embedding(kjt).to_dict()["user_id"].cpu()
        if self.bias is not None:
            b = bias_lookup(self.bias, kjt)["user_id"].cpu()[:, None]
            rows = torch.cat([rows, torch.ones_like(b), b], dim=1)
        return gather_shares(rows, len(users))

    @torch.no_grad()
    def item_block(self) -> tuple[torch.Tensor, int]:
        """This rank's block of served item rows (disjoint across ranks) and its first id."""
        if self.transfer:
            block, offset = self.embedding.served_block(ITEM_TABLE)
        else:
            block, offset = row_block(table_weights(self.embedding)[ITEM_TABLE])
        block = block.cpu()
        if self.bias is not None:  # O(items) floats on every rank: small next to the table
            b = gather_full(self.bias_weights()[ITEM_BIAS_TABLE]).mean(-1, keepdim=True)
            b = b[offset : offset + len(block)]
            block = torch.cat([block, b, torch.ones_like(b)], dim=1)
        return block, offset
