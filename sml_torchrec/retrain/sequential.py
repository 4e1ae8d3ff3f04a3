"""The paper's sequential baselines, GRU4Rec and Caser, as retraining strategies.

How they are retrained (one choice for both, stated here because the paper does not say):

* **Initial model.** The shared initial MF tables are *not* used: a sequential model's item
  rows are scored against a sequence encoder's output, not against MF user rows, so they live
  in another space (and Caser's output rows are 2d wide). Instead, at the first retraining
  period the model is trained from a seeded random init on D_0..D_{init-1} (the data the
  initial MF saw) for ``init_epochs`` epochs.
* **Each period t.** Fine-tuned on D_t's interactions for ``epochs`` epochs, warm-started from
  the previous period (tables, dense weights and both optimizers' states carry over). Every
  example's input is the user's previous L items over D_0..D_t up to that interaction, so a
  sequence crosses period boundaries.
* **Serving period t+1.** A user's vector encodes their last L items of D_0..D_t (a user with no
  history gets the encoder's empty-sequence vector); item rows are the output item table.

Tables live in TorchRec ``EmbeddingCollection``s sharded by the planner (``cfg.sharding``,
row-wise by default, which works for ECs on CPU/gloo) with FBGEMM's fused row-wise Adagrad in
backward (``table_lr``, as MF); the encoder (GRU / convolutions) is DDP-replicated by DMP and
stepped by a dense Adam. Model settings (L, negatives, batch size, dense lr) are the module
configs' defaults (:class:`GRU4RecConfig`, :class:`CaserConfig`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from sml_torchrec.data.batching import rank_slice
from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.data.sampling import sample_negatives
from sml_torchrec.data.sequences import last_items, period_examples
from sml_torchrec.distributed.shard_ops import (
    gather_full,
    gather_shares,
    load_full,
    rank_share,
    row_block,
    table_weights,
)
from sml_torchrec.distributed.sharding import plan_sharding, shard_model
from sml_torchrec.modules.caser import Caser, CaserConfig
from sml_torchrec.modules.gru4rec import GRU4Rec, GRU4RecConfig
from sml_torchrec.modules.sequence import (
    ITEM_OUT_TABLE,
    SequentialRecommender,
    input_kjt,
    output_kjt,
)
from sml_torchrec.retrain.config import RetrainConfig
from sml_torchrec.retrain.model import world
from sml_torchrec.retrain.strategy import Strategy

INIT_STD = 0.05  # N(0, INIT_STD²) rows for every table, drawn from the run's seed


def sample_k_negatives(
    user: np.ndarray, item: np.ndarray, num_items: int, k: int, seed: int
) -> np.ndarray:
    """[n, k] negatives: k independent draws of :func:`sample_negatives` (none observed)."""
    return np.stack(
        [sample_negatives(user, item, num_items, seed * 31 + j) for j in range(k)], axis=1
    )


class SequentialModel:
    """A sharded GRU4Rec or Caser with its optimizers, training epoch and serving methods.

    Serving interface (what ``evaluate`` and the loop call): :meth:`user_vectors`,
    :meth:`item_block`, :meth:`item_table`; :meth:`set_history` says which interactions a
    served user's sequence is read from. ``dmp`` and ``dense_opt`` are what the strategy's
    checkpoint hooks save.
    """

    def __init__(
        self, kind: str, num_users: int, num_items: int, cfg: RetrainConfig,
        mcfg: GRU4RecConfig | CaserConfig, device: torch.device | None = None,
    ) -> None:
        self.cfg, self.mcfg = cfg, mcfg
        self.num_users, self.num_items = num_users, num_items
        self.device = device or torch.device("cpu")
        self.rank, self.world_size = world()
        meta = torch.device("meta")
        if kind == "gru4rec":
            module: SequentialRecommender = GRU4Rec(num_items, cfg.dim, mcfg, device=meta)
        elif kind == "caser":
            module = Caser(num_users, num_items, cfg.dim, mcfg, device=meta)
        else:
            raise ValueError(f"unknown sequential model {kind!r}")
        module.encoder.to(self.device)
        self.module = module
        for ec in (module.input_emb, module.output_emb):
            apply_optimizer_in_backward(RowWiseAdagrad, ec.parameters(), {"lr": cfg.table_lr})
        plan = plan_sharding(module, cfg.sharding, self.world_size, self.device)
        self.dmp = shard_model(module, plan, self.device)
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

    def full_tables(self) -> dict[str, torch.Tensor]:
        return {name: gather_full(t) for name, t in self.tables().items()}

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

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """All output item rows [num_items, d_out] on every rank."""
        block, offset = self.item_block()
        width = self.tables()[ITEM_OUT_TABLE].size()[1]
        full = torch.zeros(self.num_items, width)
        full[offset : offset + len(block)] = block
        if self.world_size > 1:
            dist.all_reduce(full)
        return full


class SequentialStrategy(Strategy):
    """Fine-tunes a sequential model on each period; see the module docstring.

    Checkpoints go through the base class's hooks: tables, dense weights and the fused
    optimizer state through DCP, the dense Adam state from rank 0. The served history is
    recomputed from the dataset by the next ``train_period``, so it is not saved.
    """

    kind = ""
    model_config: type = GRU4RecConfig

    def start(self, initial: dict[str, torch.Tensor]) -> None:
        del initial  # not used: see the module docstring
        torch.manual_seed(self.cfg.seed)
        self.model = SequentialModel(self.kind, self.ds.num_users, self.ds.num_items, self.cfg,
                                     self.model_config())

    def train_period(self, t: int) -> None:
        init = self.roles.init
        if t == init:
            data = self.ds.periods(0, init)
            for e in range(self.cfg.init_epochs):
                self.model.train_epoch(data, Interactions.concat([]),
                                       self.ds.meta.items_upto[init - 1], self._seed(t, 7000 + e))
        history = self.ds.periods(0, t)
        for e in range(self.cfg.epochs):
            self.model.train_epoch(self.ds[t], history, self.ds.meta.items_upto[t],
                                   self._seed(t, e))
        self.model.set_history(Interactions.concat([history, self.ds[t]]))


class GRU4RecStrategy(SequentialStrategy):
    name = "gru4rec"
    kind = "gru4rec"
    model_config = GRU4RecConfig


class CaserStrategy(SequentialStrategy):
    name = "caser"
    kind = "caser"
    model_config = CaserConfig
