"""ASMG as a retraining strategy: a GRU meta generator over the past periods' models.

Paper: Danni Peng, Sinno Jialin Pan, Jie Zhang, Anxiang Zeng, "Learning an Adaptive Meta
Model-Generator for Incrementally Updating Recommender Systems", RecSys 2021. Authors' code:
danni9594/ASMG (TensorFlow 1.4; ``ASMGgru_multi`` is the method, ``IU`` makes its inputs).

Each period t, on the MF tables:

1. **Meta-train the generator** (``modules/meta_generator.py``: a GRU per embedding coordinate,
   one generator per table) over the window of the last n <= L = ``--asmg-window`` input
   models W_{t-n}, ..., W_{t-1}, starting from the GRU state h carried from older periods. The
   output after reading W_{t-n+k} is scored on D_{t-n+k+1} (L0, one sampled negative per
   positive), the n losses weighted linearly (k+1)/Σ, as the authors' "multi" variant with
   ``loss_weight='linear'``. One meta step takes one batch of every target period; an epoch is
   as many steps as D_t has batches (the older periods are split into as many batches). Adam,
   ``--asmg-lr``; ``--epochs`` epochs.
2. **Slide the window:** when it is full, h advances over its oldest model (with the trained
   generator) and that model leaves.
3. **The next input model**, incremental update (IU): the IU tables are trained further on D_t
   alone (``fine_tune``'s update, ``--epochs``), and W_t = IU tables joins the window.
4. **Generate the serving model:** the generator reads the window from h; its last output is
   the model served for period t+1.

D_{t+1} is never used before period t+1 is tested: the generator is trained toward the "next"
period only for models already followed by one, as in the authors' test-then-train order.

Choices the paper leaves open, and what is done here:

* **Only the tables are generated** (MF has no dense weights). Inputs are IU models, as the
  authors' code (it runs ``IU`` first and reads its checkpoints); the shared initial model is the
  first input model, so meta-training starts at the first retraining period with n = 1, and the
  window grows to L (the authors start only once L IU models exist). With ``--biases`` the
  generator still makes the embedding tables only; the served model takes the IU model's biases,
  which the meta loss adds to the generated scores too.
* **Hidden state.** Zero before the first model, then carried from period to period (the
  authors restore it from the previous period's run after its first step): training unrolls
  the GRU over the window only (truncated back-propagation), the state summarises the rest.
* **Defaults** are the authors' MovieLens settings: L = 3, H = 4 hidden units per coordinate,
  Adam with lr 1e-2, batch 1024, no regularisation, the GRU's gates without biases, weights
  Glorot-uniform; their single meta epoch is ``--epochs`` here.

Memory and sharding: the window (L tables) and the GRU state (H tables) of each MF table live in
one sharded ``EmbeddingBagCollection`` (the *bank*) planned with the IU tables' own parameter
shardings, so every bank table has exactly the IU table's shards (table-, row- or column-wise).
Pushing W_t, advancing h and generating the served tables then run on local shards in chunks of
rows, with no communication (the generator never mixes coordinates, so column blocks need no
gather either); only meta-training looks rows up across ranks, through TorchRec, for the ids of
its batches. Per rank that is (L + H + 2) table copies of its shards, whatever the history's
length. The generator's parameters are replicated and their gradients averaged over the ranks in
one all-reduce a step.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from sml_torchrec.data.batching import make_kjt, rank_slice
from sml_torchrec.data.sampling import sample_negatives
from sml_torchrec.distributed.shard_ops import (
    LocalShard,
    copy_table,
    copy_tables,
    global_shape,
    local_shards,
    same_layout,
    table_weights,
    write_blocks,
)
from sml_torchrec.distributed.sharding import shard_model
from sml_torchrec.modules.meta_generator import ColumnGRU
from sml_torchrec.modules.mf import bias_lookup, mf_tables
from sml_torchrec.retrain.model import TABLES, RetrainModel
from sml_torchrec.retrain.strategies.base import Strategy

CHUNK_ROWS = 4096  # rows generated at a time: bounds the working memory of a local shard


class _BankModule(nn.Module):
    """The bank's collection under a module path of its own (``bank``), for DMP."""

    def __init__(self, bank: EmbeddingBagCollection) -> None:
        super().__init__()
        self.bank = bank

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return self.bank(features)


class HistoryBank:
    """Per MF table: the window of input models (slots ``w0..w{L-1}``, a ring) and the GRU
    state (slots ``h0..h{H-1}``, one per hidden unit), as tables sharded like ``like``'s.

    ``lookup`` is a collective (every rank calls it with its own ids); everything else works on
    this rank's shards only.
    """

    def __init__(self, like: RetrainModel, window: int, hidden: int) -> None:
        self.window, self.hidden = window, hidden
        self.tables = mf_tables(like.num_users, like.num_items, like.cfg.dim)
        self.slots = [f"w{s}" for s in range(window)] + [f"h{k}" for k in range(hidden)]
        configs = [
            EmbeddingBagConfig(name=f"{t.name}__{s}", embedding_dim=t.embedding_dim,
                               num_embeddings=t.num_embeddings,
                               feature_names=[f"{f}__{s}" for f in t.feature_names])
            for t in self.tables for s in self.slots
        ]
        module = _BankModule(EmbeddingBagCollection(tables=configs, device=torch.device("meta")))
        like_plan = like.dmp.plan.plan["embedding"]
        plan = EmbeddingModuleShardingPlan({
            f"{t.name}__{s}": copy.deepcopy(like_plan[t.name])
            for t in self.tables for s in self.slots
        })
        self.dmp = shard_model(module, ShardingPlan({"bank": plan}), like.device)
        self.device = like.device
        self.weights = table_weights(self.dmp.module.bank)

    def shards(self, table: str, slot: str) -> list[LocalShard]:
        return local_shards(self.weights[f"{table}__{slot}"])

    @torch.no_grad()
    def put(self, table: str, slot: str, source: torch.Tensor) -> None:
        """Copy a table (sharded like the bank's, else gathered) into ``slot``."""
        copy_table(source, self.weights[f"{table}__{slot}"])

    @torch.no_grad()
    def clear_state(self) -> None:
        for t in self.tables:
            for k in range(self.hidden):
                for s in self.shards(t.name, f"h{k}"):
                    s.tensor.zero_()

    @torch.no_grad()
    def lookup(
        self, ids: dict[str, np.ndarray], window: list[int]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Rows for ``ids`` (per MF feature, [B] each): per feature the window's rows
        ``[B, len(window), d]`` (slots in ``window`` order) and the GRU state ``[B, d, H]``."""
        keys, values = [], []
        for t in self.tables:
            for s in self.slots:
                for f in t.feature_names:
                    keys.append(f"{f}__{s}")
                    values.append(ids[f])
        flat = torch.from_numpy(np.concatenate(values).astype(np.int64))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=flat, lengths=torch.ones(len(flat), dtype=torch.int32))
        rows = self.dmp(kjt.to(self.device)).to_dict()
        out = {}
        for t in self.tables:
            for f in t.feature_names:
                xs = torch.stack([rows[f"{f}__w{s}"] for s in window], dim=1)
                h = torch.stack([rows[f"{f}__h{k}"] for k in range(self.hidden)], dim=-1)
                out[f] = (xs.cpu(), h.cpu())
        return out


def _average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of replicated parameters over the ranks, in one all-reduce."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    start = 0
    for p in params:
        p.grad = flat[start : start + p.numel()].view_as(p).clone()
        start += p.numel()


class ASMG(Strategy):
    """Adaptive sequential model generation; see the module docstring.

    ``model`` serves the generated tables, ``iu`` is the incrementally updated MF that makes the
    input models, ``bank`` holds the window and the GRU state, ``generators`` one
    :class:`ColumnGRU` per table (replicated on every rank).
    """

    name = "asmg"

    def start(self, initial: dict[str, torch.Tensor]) -> None:
        super().start(initial)
        self.iu = self._new_model()
        self.iu.load_tables(initial)
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the same generator on every rank
        self.generators = nn.ModuleDict(
            {name: ColumnGRU(cfg.dim, cfg.asmg_hidden) for name in TABLES})
        self.meta_opt = torch.optim.Adam(self.generators.parameters(), lr=cfg.asmg_lr)
        self.bank = HistoryBank(self.iu, cfg.asmg_window, cfg.asmg_hidden)
        self.bank.clear_state()
        self.pushed = 0  # input models so far; model m sits in slot w{m % L}
        self._push_iu()

    def trained_models(self) -> list[RetrainModel]:
        return [self.iu]  # the served tables are generated, not trained

    # -- the window -------------------------------------------------------------------------
    def _window(self) -> list[int]:
        """Slots of the window's models, oldest first."""
        L = self.cfg.asmg_window
        return [m % L for m in range(max(0, self.pushed - L), self.pushed)]

    def _push_iu(self) -> None:
        slot = f"w{self.pushed % self.cfg.asmg_window}"
        for name, w in table_weights(self.iu.embedding).items():
            self.bank.put(name, slot, w)
        self.pushed += 1

    @torch.no_grad()
    def _advance_state(self) -> None:
        """h <- GRU step over the window's oldest model (which then leaves the window)."""
        oldest = f"w{self._window()[0]}"
        for t in self.bank.tables:
            gen = self.generators[t.name]
            xs = self.bank.shards(t.name, oldest)
            hs = [self.bank.shards(t.name, f"h{k}") for k in range(self.cfg.asmg_hidden)]
            for i, x in enumerate(xs):
                for r in range(0, x.tensor.shape[0], CHUNK_ROWS):
                    rows = slice(r, r + CHUNK_ROWS)
                    h = torch.stack([hk[i].tensor[rows] for hk in hs], dim=-1)
                    h, _ = gen.step(x.tensor[rows], h, x.col)
                    for k, hk in enumerate(hs):
                        hk[i].tensor[rows] = h[..., k]

    @torch.no_grad()
    def _generate(self) -> None:
        """The served tables: the generator's last output over the window, shard by shard."""
        window = self._window()
        served = table_weights(self.model.embedding)
        for t in self.bank.tables:
            gen = self.generators[t.name]
            xs = [self.bank.shards(t.name, f"w{s}") for s in window]
            hs = [self.bank.shards(t.name, f"h{k}") for k in range(self.cfg.asmg_hidden)]
            blocks = []
            for i, first in enumerate(xs[0]):
                out = torch.empty_like(first.tensor)
                for r in range(0, out.shape[0], CHUNK_ROWS):
                    rows = slice(r, r + CHUNK_ROWS)
                    seq = torch.stack([x[i].tensor[rows] for x in xs], dim=1)
                    h = torch.stack([hk[i].tensor[rows] for hk in hs], dim=-1)
                    out[rows] = gen(seq, h, first.col)[0][:, -1]
                blocks.append(LocalShard(out, first.row, first.col))
            bank_table = self.bank.weights[f"{t.name}__w{window[0]}"]
            write_blocks(served[t.name], blocks, global_shape(served[t.name]),
                         same_layout(bank_table, served[t.name]))

    # -- meta-training ------------------------------------------------------------------------
    def _meta_batches(self, t: int, n: int, epoch: int) -> list[list[dict[str, np.ndarray]]]:
        """Per meta step, one batch (user, item, negative ids) of each target period
        D_{t-n+1..t}; every period is split into as many batches as D_t fills."""
        rank, world = self.iu.rank, self.iu.world_size
        per_rank = max(1, self.cfg.batch_size // world)
        steps = max(1, -(-(len(self.ds[t]) // world) // per_rank))
        out: list[list[dict[str, np.ndarray]]] = [[] for _ in range(steps)]
        for k in range(n):
            p = t - n + 1 + k
            d = self.ds[p]
            seed = self._seed(p, 60_000 + 100 * epoch + k)
            neg = sample_negatives(d.user_id, d.item_id, self.ds.meta.items_upto[p], seed)
            order = np.random.default_rng(seed).permutation(len(d))
            mine = order[rank_slice(len(d), rank, world)]
            for s, part in enumerate(np.array_split(mine, steps)):
                out[s].append({"user_id": d.user_id[part], "item_id": d.item_id[part],
                               "neg_item_id": neg[part]})
        return out

    def _meta_step(self, parts: list[dict[str, np.ndarray]], window: list[int]) -> None:
        sizes = [len(p["user_id"]) for p in parts]  # the same on every rank
        if sum(sizes) == 0:
            return
        ids = {f: np.concatenate([p[f] for p in parts]) for f in parts[0]}
        rows = self.bank.lookup(ids, window)
        bias = self._iu_biases(ids)
        weight = torch.arange(1, len(parts) + 1, dtype=torch.float32)
        weight /= weight.sum()
        loss, start = torch.zeros(()), 0
        for k, size in enumerate(sizes):
            if size == 0:
                continue
            out = {}  # the generator's output after model k, for target period k's rows
            for t in self.bank.tables:
                for f in t.feature_names:
                    xs, h = rows[f]
                    ys, _ = self.generators[t.name](xs[start : start + size, : k + 1],
                                                    h[start : start + size])
                    out[f] = ys[:, -1]
            pos = (out["user_id"] * out["item_id"]).sum(-1)
            neg = (out["user_id"] * out["neg_item_id"]).sum(-1)
            if bias is not None:
                b = {f: v[start : start + size] for f, v in bias.items()}
                pos = pos + b["user_id"] + b["item_id"]
                neg = neg + b["user_id"] + b["neg_item_id"]
            loss = loss + weight[k] * (F.softplus(-pos).mean() + F.softplus(neg).mean())
            start += size
        self.meta_opt.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.generators.parameters())
        _average_gradients(params)
        self.meta_opt.step()

    @torch.no_grad()
    def _iu_biases(self, ids: dict[str, np.ndarray]) -> dict[str, torch.Tensor] | None:
        """The IU model's biases [B] per MF feature (a collective), or None without biases:
        the generator makes the embeddings only, the served model takes the IU biases."""
        if self.iu.bias is None:
            return None
        kjt = make_kjt(ids["user_id"], ids["item_id"], ids["neg_item_id"]).to(self.iu.device)
        return {f: v.cpu() for f, v in bias_lookup(self.iu.bias, kjt).items()}

    def _meta_train(self, t: int) -> None:
        window = self._window()
        for e in range(self.cfg.epochs):
            for parts in self._meta_batches(t, len(window), e):
                self._meta_step(parts, window)

    def train_period(self, t: int) -> None:
        self._meta_train(t)
        if self.pushed >= self.cfg.asmg_window:
            self._advance_state()
        items = self.ds.meta.items_upto[t]
        for e in range(self.cfg.epochs):
            self.iu.train_epoch(self.ds[t], items, self._seed(t, e), "tables")
        self._push_iu()
        self._generate()
        copy_tables(self.iu.bias_weights(), self.model.bias_weights())

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """Served, IU and bank tables and the IU tables' optimizer state, through DCP."""
        return {
            "model": self.model.dmp.state_dict(),
            "iu": self.iu.dmp.state_dict(),
            "iu_optim": self.iu.dmp.fused_optimizer.state_dict(),
            "bank": self.bank.dmp.state_dict(),
        }

    def load_checkpoint_state(self, state: dict) -> None:
        self.model.dmp.load_state_dict(state["model"])
        self.iu.dmp.load_state_dict(state["iu"])
        self.iu.dmp.fused_optimizer.load_state_dict(state["iu_optim"])
        self.bank.dmp.load_state_dict(state["bank"])

    def extra_state(self) -> dict:
        """The generators and their Adam state are replicated: rank 0's copy suffices."""
        return {"generators": self.generators.state_dict(),
                "meta_optim": self.meta_opt.state_dict(), "pushed": self.pushed}

    def load_extra_state(self, extra: dict) -> None:
        self.generators.load_state_dict(extra["generators"])
        self.meta_opt.load_state_dict(extra["meta_optim"])
        self.pushed = extra["pushed"]
