"""Data-parallel CATN training: the loop of one seed at one η, and a whole run over η.

A cross-domain step feeds both learning flows at once (user's target document vs source
items, and user's source document vs target items), mixed in proportion to their sizes; an
in-domain (pretraining) step feeds each domain's users against that domain's items. Each
kind leaves the other's interaction matrix unused, so with pretraining
DistributedDataParallel runs with ``find_unused_parameters``. Each rank trains on a disjoint
shard of each flow's pairs. Validation and test use cold-start users only: their source
document vs target items.

Each run starts from the bias-only prior (see :class:`~catn.modules.model.CATN`), may
pretrain the extractors on in-domain pairs of every review, and keeps the state with the
lowest validation MSE, the prior itself included. The command is :mod:`catn.cli`.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from catn.baselines import Method, resolve
from catn.batch import FlowBatch
from catn.config import TrainConfig
from catn.data.batches import doc_tensors, epoch_plan, training_batches
from catn.data.dataset import CrossDomainCorpus, EtaData, load_corpus, load_eta
from catn.data.errors import DataError
from catn.evaluate import evaluate_distributed, mse_mae
from catn.modules.model import CATN, CATNConfig
from catn.prior import Prior, choose_prior
from catn.report import out_dir, save_model
from recsys_common.process_group import rank_world


def load_data(cfg: TrainConfig) -> CrossDomainCorpus:
    if cfg.data is None:
        from catn.data.synthetic import SyntheticConfig, synthetic_corpus

        return synthetic_corpus(SyntheticConfig(**{"seed": cfg.synthetic_seed,
                                                   **cfg.synthetic}))
    return load_corpus(cfg.data)


def build_model(cfg: TrainConfig, corpus: CrossDomainCorpus, data: EtaData,
                prior: Prior | None = None) -> CATN:
    """The untrained CATN of ``cfg`` over ``corpus`` at ``data``'s η, starting from
    ``prior`` (default: :func:`~catn.prior.choose_prior` of ``data``)."""
    prior = prior or choose_prior(data)
    wv = corpus.word_vectors
    if cfg.word_vectors:
        from catn.data.text import load_word_vectors

        wv = load_word_vectors(cfg.word_vectors, corpus.vocab)
    word_dim = wv.shape[1] if wv is not None else cfg.word_dim
    mcfg = CATNConfig(
        vocab_size=len(corpus.vocab) + 1, num_users=corpus.num_users,
        num_items_source=corpus.source.num_items, num_items_target=corpus.target.num_items,
        word_dim=word_dim, num_filters=cfg.num_filters, window=cfg.window,
        num_aspects=cfg.num_aspects, latent_dim=cfg.latent_dim, dropout=cfg.dropout,
        use_aux=cfg.use_aux, use_global_correlation=cfg.use_global_correlation,
        centre_aspects=cfg.centre_aspects, in_domain=cfg.pretrain_epochs > 0)
    return CATN(mcfg, prior.item_mean_s, prior.item_mean_t, prior.user_prior, wv)


def sync_buffers(model: torch.nn.Module) -> None:
    """Average the floating-point buffers (running aspect means) over ranks, so that every
    rank evaluates, and keeps as best, the same model."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= dist.get_world_size()


def step_loss(model: CATN, outputs: list, flows: tuple[FlowBatch, ...], cfg: TrainConfig
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, squared errors) of one step: MSE + L2 on the weights + ``residual_l2`` times
    the mean square of what the model adds to the prior (aspect term, item residuals)."""
    sq = torch.cat([(pred - b.ratings) ** 2 for (pred, _), b in zip(outputs, flows,
                                                                     strict=True)])
    aspect = torch.cat([a for _, a in outputs])
    resid = torch.cat([model.item_residual[b.items_from][b.items] for b in flows])
    shrink = (aspect**2).mean() + (resid**2).mean()
    in_domain = flows[0].items_from == flows[0].user_domain
    return sq.mean() + cfg.l2 * model.l2_penalty(in_domain) + cfg.residual_l2 * shrink, sq


def _train_epoch(ddp: torch.nn.Module, model: CATN, opt: torch.optim.Optimizer,
                 batches: Iterable[tuple[FlowBatch, FlowBatch]], cfg: TrainConfig) -> float:
    """One pass over ``batches`` (flow s, flow t); returns this rank's training MSE."""
    model.train()
    total, count = 0.0, 0
    for flows in batches:
        loss, sq = step_loss(model, ddp(*flows), flows, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(sq.detach().sum())
        count += len(sq)
    return total / max(count, 1)


def _with_progress(batches: Iterable, steps: int, desc: str, show: bool) -> Iterable:
    if not show:
        return batches
    from tqdm import tqdm

    return tqdm(batches, total=steps, desc=desc, leave=False, file=sys.stderr,
                dynamic_ncols=True)


@dataclass
class _Trainer:
    """What one seed's training at one η holds: model, DDP wrapper, optimiser, documents,
    the best validation state so far and the history."""

    cfg: TrainConfig
    data: EtaData
    seed: int
    model: CATN
    ddp: torch.nn.Module
    opt: torch.optim.Optimizer
    tensors: dict
    log: Callable
    best: tuple = (math.inf, None, -1)  # (val MSE, state, epoch)
    history: list = field(default_factory=list)

    def validate(self, epoch: int, phase: str, train_mse: float, t0: float) -> bool:
        """Evaluate on the validation cold-start users; keep the state if it is the best."""
        sync_buffers(self.model)
        val = evaluate_distributed(self.model, self.tensors, self.data.val)
        self.history.append({"epoch": epoch, "phase": phase, "train_mse": train_mse,
                             "val_mse": val["mse"], "val_mae": val["mae"],
                             "seconds": time.perf_counter() - t0})
        improved = val["mse"] < self.best[0]
        if improved:
            self.best = (val["mse"], copy.deepcopy(self.model.state_dict()), epoch)
        self.log(f"  eta={self.data.eta:g} seed={self.seed} {phase} epoch {epoch:>2}: train "
                 f"MSE {train_mse:.4f}  val MSE {val['mse']:.4f}  MAE {val['mae']:.4f}"
                 f"  ({self.history[-1]['seconds']:.1f}s){'  *' if improved else ''}")
        return improved

    def epoch(self, epoch: int, in_domain: bool) -> float:
        """One epoch of the in-domain (pretraining) or the cross-domain flows."""
        rank, world = rank_world()
        pairs = (self.data.visible_s, self.data.visible_t) if in_domain else \
            (self.data.train_s, self.data.train_t)
        plan = epoch_plan(len(pairs[0][0]), len(pairs[1][0]), self.cfg.batch_size, world)
        seed = self.seed * 100_003 + epoch + (50_000 if in_domain else 0)
        batches = training_batches(self.data, self.tensors, plan, seed, rank, world,
                                   self.cfg.use_aux, in_domain)
        what = "pretrain" if in_domain else "epoch"
        return _train_epoch(self.ddp, self.model, self.opt, _with_progress(
            batches, plan.steps, f"eta={self.data.eta:g} seed={self.seed} {what} {epoch}",
            self.cfg.progress and rank == 0), self.cfg)


def _trainer(cfg: TrainConfig, corpus: CrossDomainCorpus, data: EtaData, seed: int,
             prior: Prior, log: Callable) -> _Trainer:
    rank, world = rank_world()
    if len(data.train_s[0]) == 0 or len(data.train_t[0]) == 0:
        raise DataError(cfg.data, f"eta={data.eta}: training users have no ratings in "
                                  f"{'the source' if len(data.train_s[0]) == 0 else 'the target'}"
                                  " domain")
    torch.manual_seed(seed)
    model = build_model(cfg, corpus, data, prior)
    # in-domain (pretraining) steps leave the cross-domain W and gain without a gradient
    ddp = DistributedDataParallel(model, forward_sync_buffers=False,
                                  find_unused_parameters=cfg.pretrain_epochs > 0) \
        if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return _Trainer(cfg, data, seed, model, ddp, opt, doc_tensors(data),
                    log if rank == 0 else (lambda *a, **k: None))


def train_catn(cfg: TrainConfig, corpus: CrossDomainCorpus, data: EtaData, seed: int,
               log=print) -> tuple[CATN, dict]:
    """Train on this rank's shard (DDP when a process group exists); returns the best model
    by validation MSE and its history. Must be called by every rank.

    Candidates for the best: the bias-only prior (the untrained model with its aspect gain at
    0, epoch 0; its shrinkage chosen on the validation users, :mod:`catn.prior`), the model
    after each in-domain pretraining epoch over every review of both domains, and after each
    cross-domain epoch; training stops after ``patience`` cross-domain epochs without a
    better validation MSE. Every rank sees the same all-reduced MSE, so all stop together.
    """
    prior = choose_prior(data)
    if rank_world()[0] == 0:
        log(f"  eta={data.eta:g} seed={seed} prior: item shrinkage {prior.item_shrink:g}, "
            f"user shrinkage {prior.user_shrink:g} (validation MSE {prior.val_mse:.4f})")
    t = _trainer(cfg, corpus, data, seed, prior, log)
    with torch.no_grad():  # the prior: the model with its aspect terms switched off
        gain = t.model.aspect_gain.detach().clone()
        t.model.aspect_gain.zero_()
        t.validate(0, "prior", math.nan, time.perf_counter())
        t.model.aspect_gain.copy_(gain)
    for epoch in range(1, cfg.pretrain_epochs + 1):
        t0 = time.perf_counter()
        t.validate(epoch, "pretrain", t.epoch(epoch, in_domain=True), t0)
    last_better = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        if t.validate(epoch, "cross", t.epoch(epoch, in_domain=False), t0):
            last_better = epoch
        if epoch - last_better >= cfg.patience:
            break
    t.model.load_state_dict(t.best[1])
    best = next(h for h in t.history if h["val_mse"] == t.best[0])
    return t.model, {"history": t.history, "best_epoch": t.best[2],
                     "best_phase": best["phase"], "best_val_mse": t.best[0],
                     "prior_shrinkage": {"item": prior.item_shrink, "user": prior.user_shrink}}


def _baseline_rows(methods: list[Method], data: EtaData) -> dict[str, dict[str, float]]:
    """Test MSE/MAE of each predictor method (all but CATN itself)."""
    u, i, r = data.test
    return {m.name: mse_mae(m.predict(data, u, i), r) for m in methods if m.predict is not None}


def _catn_row(runs: list[dict]) -> dict:
    """CATN's table cell: mean test MSE/MAE over seeds, their spread and each seed's."""
    mse, mae = np.array([r["mse"] for r in runs]), np.array([r["mae"] for r in runs])
    return {"mse": float(mse.mean()), "mae": float(mae.mean()),
            "mse_std": float(mse.std(ddof=1)) if len(runs) > 1 else 0.0,
            "mae_std": float(mae.std(ddof=1)) if len(runs) > 1 else 0.0,
            "mse_per_seed": mse.tolist()}


def _eta_results(cfg: TrainConfig, corpus: CrossDomainCorpus, methods: list[Method],
                 eta: float, log) -> tuple[dict, list[dict]]:
    """(table row of each method, CATN's training record per seed) at share ``eta``; the
    best seed's model (by validation MSE) is saved into the run directory."""
    row: dict = {}
    runs, best = [], (math.inf, None)
    for seed in cfg.seeds:
        data = load_eta(corpus, cfg.data, eta, cfg.doc_len, seed=seed)
        if seed == cfg.seeds[0]:
            log(f"eta={eta:g}: {data.num_training_users} training users, pairs "
                f"{len(data.train_s[0])} (target doc -> source item) + "
                f"{len(data.train_t[0])} (source doc -> target item); val "
                f"{len(data.val[0])}, test {len(data.test[0])} cold-start pairs")
            row.update(_baseline_rows(methods, data))
        if any(m.name == "catn" for m in methods):
            model, info = train_catn(cfg, corpus, data, seed, log)
            info.update(evaluate_distributed(model, doc_tensors(data), data.test), seed=seed)
            runs.append(info)
            if info["best_val_mse"] < best[0]:
                best = (info["best_val_mse"], model)
            log(f"  eta={eta:g} seed={seed}: best {info['best_phase']} epoch "
                f"{info['best_epoch']}, test MSE {info['mse']:.4f} MAE {info['mae']:.4f}")
    if runs:
        row["catn"] = _catn_row(runs)
        if rank_world()[0] == 0:
            r = next(r for r in runs if r["best_val_mse"] == best[0])
            save_model(best[1], out_dir(cfg, corpus.meta.get("scenario", "unknown")),
                       eta_key(eta), {"eta": eta, "seed": r["seed"], "val_mse": best[0],
                                      "test_mse": r["mse"], "test_mae": r["mae"]})
    # rows in the order the user listed them
    return {m.name: row[m.name] for m in methods if m.name in row}, runs


def eta_key(eta: float) -> str:
    """η as a key of results.json and a model directory name: ``1.0``, ``0.5``, ``0.05``."""
    return f"{eta:g}" if eta != 1 else "1.0"


def run(cfg: TrainConfig) -> dict | None:
    """Every rank runs this; rank 0 returns the results dict (other ranks None)."""
    cfg = cfg.resolved()
    rank, world = rank_world()
    log = print if rank == 0 else (lambda *a, **k: None)
    methods = resolve(list(cfg.methods))
    corpus = load_data(cfg)
    scenario = corpus.meta.get("scenario", "unknown")
    results: dict = {"scenario": scenario, "world_size": world, "seeds": list(cfg.seeds),
                     "config": {k: v for k, v in asdict(cfg).items()},
                     "eta": {}, "training": {}}
    log(f"CATN on {scenario}: {corpus.num_users} users, items {corpus.source.num_items} "
        f"source / {corpus.target.num_items} target, {len(corpus.vocab)} words, "
        f"{corpus.num_common} common overlapping users; {world} rank(s)")
    for eta in cfg.etas:
        key = eta_key(eta)
        results["eta"][key], runs = _eta_results(cfg, corpus, methods, eta, log)
        if runs:
            results["training"][key] = runs
    return results if rank == 0 else None
