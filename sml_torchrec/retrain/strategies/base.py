"""The interface every retraining strategy implements, driven by one period loop (``loop.py``).

A strategy is started from the shared initial model, then ``train_period(t)`` is called for
t = init, ..., P-2 in order; afterwards ``model`` serves period t+1 and is tested on D_{t+1}
when t+1 is an online period. During the online phase a strategy may use D_0..D_t only;
during the offline phase SML also uses D_{t+1} (meta-learning toward the next period).
"""

from __future__ import annotations

import torch

from sml_torchrec.data.period_dataset import Interactions, PeriodDataset
from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
from sml_torchrec.retrain.model import RetrainModel, ShardedModel
from sml_torchrec.retrain.progress_bars import bar


class Strategy:
    name = ""
    transfer = False
    # RetrainConfig fields that ``--tune`` selects on the validation periods (tuning.py).
    tuned_fields: tuple[str, ...] = ("table_lr", "epochs", "l2_tables")

    def __init__(self, ds: PeriodDataset, roles: PeriodRoles, cfg: RetrainConfig) -> None:
        self.ds, self.roles, self.cfg = ds, roles, cfg
        self.model: RetrainModel | None = None

    def _new_model(self) -> RetrainModel:
        torch.manual_seed(self.cfg.seed)
        return RetrainModel(self.ds.num_users, self.ds.num_items, self.cfg, self.transfer)

    def start(self, initial: dict[str, torch.Tensor]) -> None:
        self.model = self._new_model()
        self.model.load_tables(initial)

    def trained_models(self) -> list[ShardedModel]:
        """The models whose tables this strategy trains (the served one by default)."""
        return [self.model] if self.model is not None else []

    def start_period(self) -> None:
        """Called before each ``train_period``: with ``cfg.fresh_optimizer``, the tables'
        row-wise Adagrad restarts, so a row trained in earlier periods takes full-size steps on
        D_t again instead of ever smaller ones (measured in the README)."""
        if self.cfg.fresh_optimizer:
            for m in self.trained_models():
                m.reset_table_optimizer()

    def train_period(self, t: int) -> None:
        raise NotImplementedError

    # -- checkpoints: model/optimizer tensors go through DCP, the rest is pickled by rank 0 ----
    def checkpoint_state(self) -> dict:
        """Sharded tensors for DCP: tables, Θ, and the fused (per-shard) optimizer state."""
        if self.model is None:
            return {}
        return {
            "model": self.model.dmp.state_dict(),
            "sparse_optim": self.model.dmp.fused_optimizer.state_dict(),
        }

    def load_checkpoint_state(self, state: dict) -> None:
        if state:
            self.model.dmp.load_state_dict(state["model"])
            self.model.dmp.fused_optimizer.load_state_dict(state["sparse_optim"])

    def extra_state(self) -> dict:
        """Picklable state (rank 0's). Θ's Adam state is replicated, so one copy suffices."""
        if self.model is None or self.model.dense_opt is None:
            return {}
        return {"dense_optim": self.model.dense_opt.state_dict()}

    def load_extra_state(self, extra: dict) -> None:
        if "dense_optim" in extra:
            self.model.dense_opt.load_state_dict(extra["dense_optim"])

    def _seed(self, t: int, k: int) -> int:
        return self.cfg.seed * 1_000_003 + t * 1009 + k

    def _fit_tables(self, data: Interactions, t: int, epochs: int, salt: int = 0) -> None:
        items = self.ds.meta.items_upto[t]
        for e in bar(range(epochs), f"period {t} epochs"):
            self.model.train_epoch(data, items, self._seed(t, 100 * salt + e), "tables")
