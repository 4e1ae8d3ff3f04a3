"""Shared machinery of the trained baselines: the trainer, per-η caching, data views, MF, the
cross-domain mapping stage and small helpers. Each baseline module only states its model.

Protocol shared by all of them (the CATN setting): a method may read every *visible* rating
and document of :class:`~catn.data.dataset.EtaData`: all source-domain ratings (cold-start
users included), target-domain ratings of training and target-only users, and the documents
built from them. Cold-start users' target ratings are only labels: ``data.val`` is used for
early stopping and model selection, ``data.test`` only by :mod:`catn.train` for the score.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from catn.data.dataset import EtaData

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- trainer

@dataclass(frozen=True)
class FitConfig:
    """Adam on a loss over rows, early stopping on a validation MSE."""

    lr: float = 0.01
    max_epochs: int = 300
    patience: int = 15  # epochs without a better validation MSE before stopping
    batch_size: int | None = None  # None: full batch (one step per epoch)
    weight_decay: float = 0.0
    seed: int = 0


@dataclass
class FitResult:
    best_epoch: int
    best_val_mse: float
    epochs_run: int


def fit(module: nn.Module, batch_loss: Callable[[torch.Tensor], torch.Tensor], num_rows: int,
        val_mse: Callable[[], float] | None, cfg: FitConfig) -> FitResult:
    """Train ``module`` on ``batch_loss(row_indices)``; keep the weights of the best epoch.

    With ``val_mse`` None it runs exactly ``cfg.max_epochs`` epochs (the refit after a holdout
    picked the epoch count). ``val_mse`` runs under ``no_grad`` with the module in eval mode.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = num_rows if cfg.batch_size is None else max(1, min(cfg.batch_size, num_rows))
    best_val, best_state, best_epoch = math.inf, None, 0
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        module.train()
        order = torch.randperm(num_rows, generator=gen) if bs < num_rows else \
            torch.arange(num_rows)
        for lo in range(0, num_rows, bs):
            loss = batch_loss(order[lo:lo + bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val_mse is None:
            continue
        module.eval()
        with torch.no_grad():
            v = float(val_mse())
        if v < best_val - 1e-7:
            best_val, best_state, best_epoch = v, copy.deepcopy(module.state_dict()), epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return FitResult(best_epoch=best_epoch if val_mse else epoch, best_val_mse=best_val,
                     epochs_run=epoch)


@dataclass
class Stage:
    """A model bound to a set of training rows: ``loss(batch)`` indexes those rows;
    ``predict(rows)`` scores any rows of the same domain (e.g. held-out ones)."""

    module: nn.Module
    loss: Callable[[torch.Tensor], torch.Tensor]
    predict: Callable[[np.ndarray], torch.Tensor]
    num_rows: int


def fit_holdout_refit(build: Callable[[np.ndarray], Stage], ratings: np.ndarray,
                      cfg: FitConfig, holdout: float = 0.1) -> Stage:
    """Single-domain stages have no cold-start labels to stop on: pick the epoch count on a
    seeded ``holdout`` share of the rows, then refit on all rows for that many epochs (so
    cold-start users keep all their source ratings)."""
    n = len(ratings)
    perm = np.random.default_rng(cfg.seed + 7).permutation(n)
    n_hold = int(n * holdout)
    hold, keep = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    epochs = cfg.max_epochs
    if n_hold > 0:
        s = build(keep)
        target = torch.as_tensor(ratings[hold])
        res = fit(s.module, s.loss, s.num_rows,
                  lambda: float(((s.predict(hold) - target) ** 2).mean()), cfg)
        epochs = max(res.best_epoch, 1)
    final = build(np.arange(n))
    fit(final.module, final.loss, final.num_rows, None, replace(cfg, max_epochs=epochs))
    return final


# --------------------------------------------------------------------------- caching

def cached_predictor(fit_fn: Callable[[EtaData], Scorer]) -> Callable[
        [EtaData, np.ndarray, np.ndarray], np.ndarray]:
    """Turn ``fit_fn(data) -> scorer(users, items)`` into a registry predictor that fits once
    per :class:`EtaData` object (held weakly: a finished η frees its model) and clips scores
    to the visible rating range."""
    cache: dict[int, tuple[weakref.ref, Scorer, tuple[float, float]]] = {}

    def predict(data: EtaData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        hit = cache.get(id(data))
        if hit is None or hit[0]() is not data:
            for k in [k for k, v in cache.items() if v[0]() is None]:
                del cache[k]
            r = np.concatenate([data.visible_s[2], data.visible_t[2]])
            hit = (weakref.ref(data), fit_fn(data), (float(r.min()), float(r.max())))
            cache[id(data)] = hit
        out = np.asarray(hit[1](np.asarray(users), np.asarray(items)), dtype=np.float32)
        return np.clip(out, *hit[2])

    predict.__doc__ = fit_fn.__doc__
    predict.__name__ = fit_fn.__name__
    return predict


# --------------------------------------------------------------------------- data views

def sizes(data: EtaData) -> tuple[int, int, int]:
    """(num_users, num_items_source, num_items_target)."""
    return len(data.user_source_offset), len(data.item_mean_s), len(data.item_mean_t)


def training_users(data: EtaData) -> np.ndarray:
    """Overlapping training users: those with training pairs in both domains."""
    return np.intersect1d(data.train_s[0], data.train_t[0])


def rating_matrix(users: np.ndarray, items: np.ndarray, values: np.ndarray, num_users: int,
                  num_items: int) -> torch.Tensor:
    """Dense (num_users, num_items) matrix with ``values`` at the observed cells, 0 elsewhere."""
    m = torch.zeros(num_users, num_items)
    m[torch.as_tensor(users), torch.as_tensor(items)] = torch.as_tensor(values,
                                                                        dtype=torch.float32)
    return m


def centred_rating_matrix(data: EtaData, domain: str, rows: np.ndarray | None = None
                          ) -> torch.Tensor:
    """Users × items of one domain: rating minus item mean where observed, 0 elsewhere."""
    u, i, r = data.visible_s if domain == "s" else data.visible_t
    if rows is not None:
        u, i, r = u[rows], i[rows], r[rows]
    mean = data.item_mean_s if domain == "s" else data.item_mean_t
    nu, ns, nt = sizes(data)
    return rating_matrix(u, i, r - mean[i], nu, ns if domain == "s" else nt)


def tfidf(docs: np.ndarray, vocab_ids: np.ndarray) -> torch.Tensor:
    """L2-normalised TF-IDF rows of token-id documents over the words ``vocab_ids``."""
    index = np.full(int(max(docs.max(initial=0), vocab_ids.max(initial=0))) + 1, -1)
    index[vocab_ids] = np.arange(len(vocab_ids))
    col = index[docs]
    row = np.broadcast_to(np.arange(docs.shape[0])[:, None], docs.shape)
    ok = (col >= 0) & (docs > 0)
    tf = np.zeros((docs.shape[0], len(vocab_ids)), dtype=np.float32)
    np.add.at(tf, (row[ok], col[ok]), 1.0)
    df = (tf > 0).sum(0)
    idf = np.log((1 + docs.shape[0]) / (1 + df)) + 1.0
    x = tf * idf
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    return torch.from_numpy(x.astype(np.float32))


def frequent_words(*docs: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` most frequent word ids (id 0 is padding) across the documents."""
    tokens = np.concatenate([d.ravel() for d in docs])
    counts = np.bincount(tokens[tokens > 0])
    order = np.argsort(-counts, kind="stable")
    return np.sort(order[counts[order] > 0][:top])


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


# --------------------------------------------------------------------------- MF

class BiasedMF(nn.Module):
    """``r̂ = μ + b_u + b_i + p_uᵀ q_i`` with an L2 penalty on the factors and biases used."""

    def __init__(self, num_users: int, num_items: int, dim: int, mu: float,
                 item_bias: np.ndarray | None = None) -> None:
        super().__init__()
        self.mu = mu
        self.P = nn.Parameter(torch.randn(num_users, dim) * 0.1)
        self.Q = nn.Parameter(torch.randn(num_items, dim) * 0.1)
        self.bu = nn.Parameter(torch.zeros(num_users))
        init = torch.zeros(num_items) if item_bias is None else \
            torch.as_tensor(item_bias, dtype=torch.float32) - mu
        self.bi = nn.Parameter(init.clone())

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.mu + self.bu[u] + self.bi[i] + (self.P[u] * self.Q[i]).sum(-1)

    def penalty(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return ((self.P[u] ** 2).sum(-1) + (self.Q[i] ** 2).sum(-1) + self.bu[u] ** 2).mean()

    def user_vectors(self) -> torch.Tensor:
        """(num_users, dim + 1): factors with the user bias appended (what a mapping moves)."""
        return torch.cat([self.P, self.bu[:, None]], 1).detach()


@dataclass(frozen=True)
class MFConfig:
    dim: int = 16
    l2: float = 0.05
    fit: FitConfig = FitConfig(lr=0.02, max_epochs=400, patience=20)


def fit_domain_mf(data: EtaData, domain: str, cfg: MFConfig,
                  extra_penalty: Callable[[BiasedMF], torch.Tensor] | None = None) -> BiasedMF:
    """Biased MF on every visible rating of one domain (epochs picked on a 10% holdout)."""
    u, i, r = data.visible_s if domain == "s" else data.visible_t
    nu, ns, nt = sizes(data)
    mu = data.global_mean_s if domain == "s" else data.global_mean_t
    imean = data.item_mean_s if domain == "s" else data.item_mean_t
    ut, it, rt = torch.as_tensor(u), torch.as_tensor(i), torch.as_tensor(r)

    def build(rows: np.ndarray) -> Stage:
        torch.manual_seed(cfg.fit.seed)
        m = BiasedMF(nu, ns if domain == "s" else nt, cfg.dim, mu, imean)
        ru, ri, rr = ut[rows], it[rows], rt[rows]

        def loss(b: torch.Tensor) -> torch.Tensor:
            out = mse(m(ru[b], ri[b]), rr[b]) + cfg.l2 * m.penalty(ru[b], ri[b])
            return out + extra_penalty(m) if extra_penalty is not None else out

        return Stage(m, loss, lambda rows2: m(ut[rows2], it[rows2]), len(rows))

    return fit_holdout_refit(build, r, cfg.fit).module  # type: ignore[return-value]


# --------------------------------------------------------------------------- mapping stage

@dataclass(frozen=True)
class MappingConfig:
    """EMCDR's MLP mapping: one tanh hidden layer of ``hidden_mult`` × the input size."""

    hidden_mult: int = 2
    fit: FitConfig = FitConfig(lr=0.01, max_epochs=500, patience=30, weight_decay=1e-4)


class Mapping(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.Tanh(),
                                 nn.Linear(hidden, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fit_mapping(x: torch.Tensor, y: torch.Tensor, train_users: np.ndarray,
                cold_score: Callable[[torch.Tensor, np.ndarray, np.ndarray], torch.Tensor],
                data: EtaData, cfg: MappingConfig) -> Mapping:
    """Fit ``f: x_u -> y_u`` on the overlapping training users (MSE on the vectors), stopping
    early on the validation cold-start users' target-rating MSE of
    ``cold_score(f(x)[users], users, items)``."""
    torch.manual_seed(cfg.fit.seed)
    f = Mapping(x.shape[1], y.shape[1], cfg.hidden_mult * x.shape[1])
    tu = torch.as_tensor(train_users)
    vu, vi, vr = data.val
    vr_t = torch.as_tensor(vr)

    def val() -> float:
        return float(mse(cold_score(f(x[vu]), vu, vi), vr_t))

    fit(f, lambda b: mse(f(x[tu[b]]), y[tu[b]]), len(tu), val if len(vu) else None,
        cfg.fit if len(vu) else replace(cfg.fit, max_epochs=100))
    return f
