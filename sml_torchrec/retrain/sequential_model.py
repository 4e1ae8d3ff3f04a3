"""GRU4Rec and Caser on sharded TorchRec tables, as the retraining strategies use them.

Tables live in TorchRec ``EmbeddingCollection``s sharded by the planner (``cfg.sharding``,
row-wise by default, which works for ECs on CPU/gloo) with FBGEMM's fused row-wise Adagrad in
backward (``table_lr``, as MF); the encoder (GRU / convolutions) is DDP-replicated by DMP and
stepped by a dense Adam. Model settings (L, negatives, batch size, dense lr) are the module
configs' defaults (:class:`GRU4RecConfig`, :class:`CaserConfig`). How the strategies train
them period by period: ``strategies/sequential.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from sml_torchrec.data.batching import rank_slice
from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.data.sampling import sample_k_negatives
from sml_torchrec.data.sequences import input_kjt, last_items, output_kjt, period_examples
from sml_torchrec.distributed.shard_ops import (
    gather_shares,
    load_full,
    rank_share,
    row_block,
    table_weights,
)
from sml_torchrec.modules.caser import Caser, CaserConfig
from sml_torchrec.modules.gru4rec import GRU4Rec, GRU4RecConfig
from sml_torchrec.modules.sequence import ITEM_OUT_TABLE, SequentialRecommender
from sml_torchrec.retrain.config import RetrainConfig
from sml_torchrec.retrain.model import ShardedModel

INIT_STD = 0.05  # N(0, INIT_STD²) rows for every table, drawn from the run's seed


class SequentialModel(ShardedModel):
    """A sharded GRU4Rec or Caser with its optimizers, training epoch and serving methods.

    Serves like every :class:`ShardedModel`; :meth:`set_history` says which interactions a
    served user's sequence is read from.
    """

    def __init__(
        self, kind: str, num_users: int, num_items: int, cfg: RetrainConfig,
        mcfg: GRU4RecConfig | CaserConfig, device: torch.device | None = None,
    ) -> None:
        self.mcfg, self.num_users = mcfg, num_users
        meta = torch.device("meta")
        if kind == "gru4rec":
            module: SequentialRecommender = GRU4Rec(num_items, cfg.dim, mcfg, device=meta)
        elif kind == "caser":
            module = Caser(num_users, num_items, cfg.dim, mcfg, device=meta)
        else:
            raise ValueError(f"unknown sequential model {kind!r}")
        module.encoder.to(device or torch.device("cpu"))
        for ec in (module.input_emb, module.output_emb):
            apply_optimizer_in_backward(RowWiseAdagrad, ec.parameters(), {"lr": cfg.table_lr})
        super().__init__(module, num_items, cfg, device)
        self.inner = self.dmp.module
        # The encoder only: the fused tables are stepped in backward.
        self.dense_opt = torch.optim.Adam(self.inner.encoder.parameters(), lr=mcfg.dense_lr)
        self._init_tables()
        self.history = Interactions.concat([])

    # -- tables -------------------------------------------------------------------------------
    def tables(self) -> dict[str, object]:
        """Name -> (sharded) weight of every table."""
        return {**table_weights(self.inner.input_emb), **table_weights(self.inner.output_emb)}

    def _init_tables(self) -> None:
        # DMP initialises each shard on its own; a full table drawn from the seed and copied
        # into the shards gives the same model on any number of ranks.
        g = torch.Generator().manual_seed(self.cfg.seed)
        for _, t in sorted(self.tables().items()):
            rows, cols = t.size()
            load_full(t, torch.randn(rows, cols, generator=g) * INIT_STD)

    # -- training -----------------------------------------------------------------------------
    def train_epoch(
        self, data: Interactions, history: Interactions, num_items: int, seed: int
    ) -> float:
        """One epoch over ``data`` (each example's sequence may reach into ``history``)."""
        if len(data) == 0:
            return float("nan")
        m = self.mcfg
        seqs = period_examples(history, data, m.seq_len)
        neg = sample_k_negatives(data.user_id, data.item_id, num_items, m.num_negatives, seed)
        order = np.random.default_rng(seed).permutation(len(data))
        mine = order[rank_slice(len(data), self.rank, self.world_size)]
        batch = max(1, m.batch_size // self.world_size)
        self.dmp.train()
        # Dropout draws from a generator seeded by the epoch (and rank), not from whatever the
        # global RNG holds: a run resumed from a checkpoint then trains exactly as the
        # uninterrupted one did.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 7919 + self.rank)
            return self._epoch(data, seqs, neg, mine, batch)

    def _epoch(self, data: Interactions, seqs: np.ndarray, neg: np.ndarray, mine: np.ndarray,
               batch: int) -> float:
        losses = []
        for start in range(0, len(mine), batch):
            idx = mine[start : start + batch]
            users = data.user_id[idx] if self.inner.uses_user else None
            inputs = input_kjt(seqs[idx], users).to(self.device)
            outputs = output_kjt(data.item_id[idx], neg[idx]).to(self.device)
            pos, negs, sq = self.dmp(inputs, outputs)
            loss = self.inner.loss(pos, negs) + self.cfg.l2_tables * sq / len(idx)
            self.dense_opt.zero_grad(set_to_none=True)
            loss.backward()  # tables are stepped in backward (fused); DDP all-reduces the rest
            self.dense_opt.step()
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else float("nan")

    def set_history(self, history: Interactions) -> None:
        """Serve from these interactions: a user's vector encodes their last L items here."""
        self.history = history

    # -- serving ------------------------------------------------------------------------------
    @torch.no_grad()
    def user_vectors(self, users: np.ndarray) -> torch.Tensor:
        """Served user vectors for ``users`` [U] -> [U, d_out], identical on every rank.

        A collective: every rank must call it with the same users.
        """
        users = np.asarray(users, dtype=np.int64)
        padded = rank_share(users, self.rank, self.world_size)
        seqs = last_items(self.history, padded, self.mcfg.seq_len)
        self.dmp.eval()
        kjt = input_kjt(seqs, padded if self.inner.uses_user else None).to(self.device)
        return gather_shares(self.inner.encode(kjt).cpu(), len(users))

    @torch.no_grad()
    def item_block(self) -> tuple[torch.Tensor, int]:
        """This rank's block of output item rows (disjoint across ranks) and its first id."""
        block, offset = row_block(self.tables()[ITEM_OUT_TABLE])
        return block.cpu(), offset
