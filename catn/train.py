"""Data-parallel CATN training and the ``catn-train`` command.

Each step feeds both learning flows at once (user's target document vs source items, and
user's source document vs target items), mixed in proportion to their sizes, so every
parameter gets a gradient every step and DistributedDataParallel can all-reduce without
``find_unused_parameters``. Each rank trains on a disjoint shard of each flow's pairs.
Validation and test use cold-start users only: their source document vs target items.

Run ``catn-train`` (one process), ``catn-train --nproc 2`` (local ranks, gloo on CPU) or under
torchrun / TorchX (ranks from the environment; nccl on GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from catn.baselines import METHODS, resolve
from catn.data.dataset import ETAS, CrossDomainCorpus, EtaData, load_corpus, load_eta
from catn.data.errors import DataError
from catn.evaluate import evaluate_distributed, format_table, make_flow_batch, write_results
from catn.modules.model import CATN, SOURCE, TARGET, CATNConfig
from sml_torchrec.distributed.process_group import max_local_ranks
from sml_torchrec.errors import (
    EXIT_CODES_HELP,
    ConfigError,
    Terminated,
    UserError,
    check_output_dir,
    debug_requested,
    refuse_to_replace,
    run_command,
)

PROG = "catn-train"


@dataclass
class TrainConfig:
    """Options of ``catn-train``. ``None`` sizes take the data-dependent defaults."""

    data: str | None = None  # dataset dir from `catn-data build`; None = synthetic corpus
    synthetic_seed: int = 0
    etas: tuple[float, ...] = ETAS
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = ("catn", "global_mean", "item_mean", "user_mean_item_bias")
    epochs: int | None = None
    patience: int = 4
    batch_size: int | None = None  # global, split across ranks (default 64 synthetic, 256)
    lr: float | None = None  # default 1e-3 (the authors')
    l2: float = 1e-5
    doc_len: int | None = None
    word_dim: int | None = None
    num_filters: int = 50
    window: int = 3
    num_aspects: int = 5
    latent_dim: int = 32
    dropout: float = 0.2
    use_aux: bool = True
    use_global_correlation: bool = True
    centre_aspects: bool = True
    word_vectors: str | None = None
    out: str | None = None
    nproc: int = 1
    timeout_s: float = 3600.0
    progress: bool = True
    synthetic: dict = field(default_factory=dict)  # SyntheticConfig overrides (tests, smoke)
    overwrite: bool = False  # replace an earlier run's OUT/results.json

    def __post_init__(self) -> None:
        # Messages name the flag: catn-train shows them as usage errors.
        if not self.etas:
            raise ConfigError("argument --eta: empty; give shares in (0, 1], e.g. 1,0.5")
        bad = [e for e in self.etas if not (0 < e <= 1)]
        if bad:
            raise ConfigError(f"argument --eta: {bad[0]:g} is outside (0, 1]")
        if len(set(self.etas)) != len(self.etas):
            raise ConfigError("argument --eta: a share is listed more than once")
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(
                self.seeds):
            raise ConfigError(f"argument --seeds: want distinct integers >= 0, got "
                              f"{list(self.seeds)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            what = f"unknown {unknown}" if unknown else "empty"
            raise ConfigError(f"argument --methods: {what}; choose from "
                              f"{','.join(sorted(METHODS))}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("argument --methods: a method is listed more than once")
        for name, flag in (("nproc", "nproc"), ("patience", "patience"),
                           ("num_filters", "num-filters"), ("window", "window"),
                           ("num_aspects", "aspects"), ("latent_dim", "latent-dim"),
                           ("epochs", "epochs"), ("batch_size", "batch-size"),
                           ("doc_len", "doc-len"), ("word_dim", "word-dim")):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"argument --{flag}: must be >= 1, got {v}")
        if self.window % 2 != 1:
            raise ConfigError(f"argument --window: must be odd (the convolution keeps the "
                              f"document's length), got {self.window}")
        if self.doc_len is not None and self.window > self.doc_len:
            raise ConfigError(f"argument --window: {self.window} words do not fit in "
                              f"--doc-len {self.doc_len}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"argument --lr: must be a positive number, got {self.lr}")
        if not (math.isfinite(self.l2) and self.l2 >= 0):
            raise ConfigError(f"argument --l2: must be a number >= 0, got {self.l2}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"argument --dropout: must be in [0, 1), got {self.dropout}")
        if not (self.timeout_s > 0):
            raise ConfigError(f"argument --timeout: must be > 0 seconds, got {self.timeout_s}")
        if self.synthetic_seed < 0:
            raise ConfigError(f"argument --synthetic-seed: must be >= 0, got "
                              f"{self.synthetic_seed}")
        for name in ("data", "out", "word_vectors"):
            if getattr(self, name) == "":
                raise ConfigError(f"argument --{name.replace('_', '-')}: empty path")

    def resolved(self) -> TrainConfig:
        """Fill the size defaults: small for the synthetic corpus, the authors' otherwise."""
        c = copy.deepcopy(self)
        synth = c.data is None
        c.epochs = c.epochs if c.epochs is not None else (10 if synth else 50)
        c.doc_len = c.doc_len if c.doc_len is not None else (80 if synth else 500)
        c.word_dim = c.word_dim if c.word_dim is not None else (32 if synth else 300)
        c.batch_size = c.batch_size if c.batch_size is not None else (64 if synth else 256)
        c.lr = c.lr if c.lr is not None else 1e-3
        return c


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def load_data(cfg: TrainConfig) -> CrossDomainCorpus:
    if cfg.data is None:
        from catn.data.synthetic import SyntheticConfig, synthetic_corpus

        return synthetic_corpus(SyntheticConfig(**{"seed": cfg.synthetic_seed,
                                                   **cfg.synthetic}))
    return load_corpus(cfg.data)


def _tensors(data: EtaData) -> dict[str, torch.Tensor]:
    keys = ("user_docs_s", "user_docs_t", "aux_docs_s", "aux_docs_t", "item_docs_s",
            "item_docs_t")
    return {k: torch.from_numpy(np.ascontiguousarray(getattr(data, k))) for k in keys}


def user_offsets(data: EtaData, shrink: float = 3.0) -> np.ndarray:
    """(2, num_users) shrunk mean residual against item means, per domain of the user's
    document: row SOURCE from visible source ratings (what a cold-start user has), row TARGET
    from the training users' target ratings (the only users scored from a target document).
    """
    u, i, r = data.train_t
    res = r - data.item_mean_t[i]
    n = len(data.user_offset)
    cnt = np.bincount(u, minlength=n)
    tot = np.bincount(u, weights=res, minlength=n)
    return np.stack([data.user_source_offset, tot / (cnt + shrink)]).astype(np.float32)


def build_model(cfg: TrainConfig, corpus: CrossDomainCorpus, data: EtaData) -> CATN:
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
        centre_aspects=cfg.centre_aspects)
    return CATN(mcfg, data.item_mean_s, data.item_mean_t, user_offsets(data), wv)


def sync_buffers(model: torch.nn.Module) -> None:
    """Average the floating-point buffers (running aspect means) over ranks, so that every
    rank evaluates, and keeps as best, the same model."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= dist.get_world_size()


def _epoch_plan(n_s: int, n_t: int, batch_size: int, world: int) -> tuple[int, int, int]:
    """(steps, per-rank pairs of flow s, of flow t) per step; both flows >= 1 when present."""
    local = max(2, batch_size // world)
    steps = max(1, math.ceil((n_s + n_t) / (local * world)))
    bs_s = min(local - 1, max(1, round(local * n_s / (n_s + n_t))))
    return steps, bs_s, local - bs_s


def train_catn(cfg: TrainConfig, corpus: CrossDomainCorpus, data: EtaData, seed: int,
               log=print) -> tuple[CATN, dict]:
    """Train on this rank's shard (DDP when a process group exists); returns the best model
    (by validation MSE) and its history. Must be called by every rank."""
    rank, world = _rank_world()
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = build_model(cfg, corpus, data).to(device)
    ddp = DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tensors = _tensors(data)
    us, is_, rs = (torch.from_numpy(a) for a in data.train_s)
    ut, it, rt = (torch.from_numpy(a) for a in data.train_t)
    if len(us) == 0 or len(ut) == 0:
        raise DataError(cfg.data, f"eta={data.eta}: training users have no ratings in "
                                  f"{'the source' if len(us) == 0 else 'the target'} domain")
    steps, bs_s, bs_t = _epoch_plan(len(us), len(ut), cfg.batch_size, world)
    best = (math.inf, None, -1)
    history = []
    show = cfg.progress and rank == 0
    for epoch in range(cfg.epochs):
        model.train()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        # the same permutation on every rank; rank r takes every world-th pair: disjoint shards
        sh_s = torch.randperm(len(us), generator=g)[rank::world]
        sh_t = torch.randperm(len(ut), generator=g)[rank::world]
        t0 = time.perf_counter()
        total, count = 0.0, 0
        bar = range(steps)
        if show:
            from tqdm import tqdm

            bar = tqdm(bar, desc=f"eta={data.eta:g} seed={seed} epoch {epoch + 1}",
                       leave=False, file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            ks = sh_s[(step * bs_s + torch.arange(bs_s)) % len(sh_s)]
            kt = sh_t[(step * bs_t + torch.arange(bs_t)) % len(sh_t)]
            # flow s: user's target document vs source items; flow t: source doc vs target
            fs = make_flow_batch(data, tensors, TARGET, us[ks], is_[ks], rs[ks], cfg.use_aux)
            ft = make_flow_batch(data, tensors, SOURCE, ut[kt], it[kt], rt[kt], cfg.use_aux)
            ps, pt = ddp(fs, ft)
            sq = torch.cat([(ps - fs.ratings) ** 2, (pt - ft.ratings) ** 2])
            loss = sq.mean() + cfg.l2 * model.l2_penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(sq.detach().sum())
            count += len(sq)
        sync_buffers(model)
        val = evaluate_distributed(model, data, tensors, data.val)
        history.append({"epoch": epoch + 1, "train_mse": total / max(count, 1),
                        "val_mse": val["mse"], "val_mae": val["mae"],
                        "seconds": time.perf_counter() - t0})
        improved = val["mse"] < best[0]
        if improved:
            best = (val["mse"], copy.deepcopy(model.state_dict()), epoch + 1)
        if rank == 0:
            log(f"  eta={data.eta:g} seed={seed} epoch {epoch + 1:>2}: train MSE "
                f"{total / max(count, 1):.4f}  val MSE {val['mse']:.4f}  MAE {val['mae']:.4f}"
                f"  ({history[-1]['seconds']:.1f}s){'  *' if improved else ''}")
        # every rank sees the same all-reduced val MSE, so all stop at the same epoch
        if epoch + 1 - best[2] >= cfg.patience:
            break
    model.load_state_dict(best[1])
    return model, {"history": history, "best_epoch": best[2], "best_val_mse": best[0]}


def run(cfg: TrainConfig) -> dict | None:
    """Every rank runs this; rank 0 returns the results dict (other ranks None)."""
    cfg = cfg.resolved()
    rank, world = _rank_world()
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
        key = f"{eta:g}" if eta != 1 else "1.0"
        row: dict = {}
        runs = []
        for seed in cfg.seeds:
            data = load_eta(corpus, cfg.data, eta, cfg.doc_len, seed=seed)
            if seed == cfg.seeds[0]:
                log(f"eta={eta:g}: {data.num_training_users} training users, pairs "
                    f"{len(data.train_s[0])} (target doc -> source item) + "
                    f"{len(data.train_t[0])} (source doc -> target item); val "
                    f"{len(data.val[0])}, test {len(data.test[0])} cold-start pairs")
                for m in methods:
                    if m.predict is not None:
                        u, i, r = data.test
                        from catn.evaluate import mse_mae

                        row[m.name] = mse_mae(m.predict(data, u, i), r)
            if any(m.name == "catn" for m in methods):
                model, info = train_catn(cfg, corpus, data, seed, log)
                test = evaluate_distributed(model, data, _tensors(data), data.test)
                info.update(test)
                runs.append(info)
                log(f"  eta={eta:g} seed={seed}: best epoch {info['best_epoch']}, "
                    f"test MSE {test['mse']:.4f} MAE {test['mae']:.4f}")
        if runs:
            row["catn"] = {
                "mse": float(np.mean([r["mse"] for r in runs])),
                "mae": float(np.mean([r["mae"] for r in runs])),
                "mse_per_seed": [r["mse"] for r in runs]}
            results["training"][key] = runs
        # rows in the order the user listed them
        results["eta"][key] = {m.name: row[m.name] for m in methods if m.name in row}
    return results if rank == 0 else None


def _rank_main(cfg: TrainConfig) -> dict | None:
    """Entry point of each local rank (module level: spawn pickles it)."""
    return run(cfg)


def scenario_of(cfg: TrainConfig) -> str:
    """The corpus' scenario name, from meta.json alone (DataError names a missing/bad one)."""
    if cfg.data is None:
        return f"synthetic(seed={cfg.synthetic.get('seed', cfg.synthetic_seed)})"
    meta_path = os.path.join(cfg.data, "meta.json")
    if not os.path.isfile(meta_path):
        raise DataError(cfg.data, "not a CATN dataset directory (no meta.json); build one with "
                                  "`catn-data build`")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(meta_path, f"unreadable: {e}") from None
    return str(meta.get("scenario", "unknown")) if isinstance(meta, dict) else "unknown"


def out_dir(cfg: TrainConfig, scenario: str) -> str:
    """``--out``, or ``runs/catn-<scenario>``."""
    return cfg.out or os.path.join("runs", "catn-" + "".join(
        ch if ch.isalnum() or ch in "-_." else "_" for ch in scenario))


def check_inputs(cfg: TrainConfig) -> None:
    """What can be checked before any data is read or rank started (UserError)."""
    out = out_dir(cfg, scenario_of(cfg))
    check_output_dir(out)
    refuse_to_replace(os.path.join(out, "results.json"), cfg.overwrite)
    if cfg.word_vectors and not os.path.isfile(cfg.word_vectors):
        raise UserError(f"--word-vectors {cfg.word_vectors}: no such file")


def finish(cfg: TrainConfig, results: dict, wall_s: float) -> None:
    cfg = cfg.resolved()
    results["wall_seconds"] = wall_s
    labels = {name: m.label for name, m in METHODS.items()}
    print()
    print(format_table(results, "mse", labels))
    print()
    print(format_table(results, "mae", labels))
    path = write_results(results, out_dir(cfg, results["scenario"]))
    print(f"\nwall time {wall_s:.1f}s; results written to {path}")


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n")[0], epilog=EXIT_CODES_HELP,
        usage="%(prog)s [--data DIR] [--out DIR] [--nproc N] [options]  (--help lists them)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # "%(default).0s" (empty) where the help itself says what the missing default means: it
    # stops the formatter from appending "(default: None)".
    p.add_argument("--data", metavar="DIR", help="dataset directory from `catn-data build` "
                   "(default: the built-in synthetic corpus)%(default).0s")
    p.add_argument("--synthetic-seed", type=int, default=0, help="seed of the synthetic corpus")
    p.add_argument("--eta", "--etas", dest="etas", default=",".join(f"{e:g}" for e in ETAS),
                   help="comma-separated shares of overlapping users used for training, "
                        "each in (0, 1]")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (averaged)")
    p.add_argument("--methods", default="catn,global_mean,item_mean,user_mean_item_bias",
                   help=f"comma-separated table rows, from {','.join(sorted(METHODS))}")
    p.add_argument("--epochs", type=int, help="max epochs (default 10 synthetic, 50 data)"
                   "%(default).0s")
    p.add_argument("--patience", type=int, default=4,
                   help="stop after this many epochs without a better validation MSE")
    p.add_argument("--batch-size", type=int, help="global batch, split across ranks (default "
                   "64 synthetic, 256 data)%(default).0s")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)%(default).0s")
    p.add_argument("--l2", type=float, default=1e-5, help="L2 penalty")
    p.add_argument("--doc-len", type=int, help="words per document (default 80 synthetic, "
                   "500 data)%(default).0s")
    p.add_argument("--word-dim", type=int, help="word vector size (default 32 synthetic, 300 "
                   "data; the size of --word-vectors when given)%(default).0s")
    p.add_argument("--word-vectors", metavar="FILE", help="word2vec/GloVe text file for the "
                   "vocabulary (default: trained from scratch)%(default).0s")
    p.add_argument("--num-filters", type=int, default=50, help="CNN filters per aspect")
    p.add_argument("--window", type=int, default=3, help="CNN window in words, odd")
    p.add_argument("--aspects", type=int, default=5, help="number of aspects")
    p.add_argument("--latent-dim", type=int, default=32, help="aspect representation size")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout rate, in [0, 1)")
    p.add_argument("--no-aux", action="store_true", help="ablation: no auxiliary reviews")
    p.add_argument("--no-global-correlation", action="store_true",
                   help="ablation: no global aspect correlation S")
    p.add_argument("--no-centre-aspects", action="store_true",
                   help="ablation: no running-mean centring of aspect matrices")
    p.add_argument("--nproc", type=int, default=1, help="local data-parallel ranks (gloo on "
                   "CPU); under torchrun ranks come from the environment")
    p.add_argument("--out", metavar="DIR", help="run directory for results.json (default: "
                   "runs/catn-<scenario>); an earlier run's is replaced only with --overwrite"
                   "%(default).0s")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT/results.json of an earlier run")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds before local ranks are stopped as hung")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true",
                   help="also print the traceback of a user error (or set SML_TORCHREC_DEBUG=1)")
    return p


def _csv(p: argparse.ArgumentParser, flag: str, text: str, kind: type) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        p.error(f"argument {flag}: want comma-separated {kind.__name__}s, got {text!r}")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags to config; any bad flag or value exits 2 with the usage line (argparse)."""
    p = _parser()
    a = p.parse_args(argv)
    try:
        cfg = TrainConfig(
            data=a.data, synthetic_seed=a.synthetic_seed, etas=_csv(p, "--eta", a.etas, float),
            seeds=_csv(p, "--seeds", a.seeds, int),
            methods=tuple(m.strip() for m in a.methods.split(",") if m.strip()),
            epochs=a.epochs, patience=a.patience, batch_size=a.batch_size, lr=a.lr, l2=a.l2,
            doc_len=a.doc_len, word_dim=a.word_dim, num_filters=a.num_filters,
            window=a.window, num_aspects=a.aspects, latent_dim=a.latent_dim,
            dropout=a.dropout, use_aux=not a.no_aux,
            use_global_correlation=not a.no_global_correlation,
            centre_aspects=not a.no_centre_aspects, word_vectors=a.word_vectors, out=a.out,
            nproc=a.nproc, timeout_s=a.timeout, progress=not a.no_progress,
            overwrite=a.overwrite)
        cfg.resolved().__post_init__()  # the data-dependent defaults, too (window vs doc_len)
    except ConfigError as e:
        p.error(str(e))
    if cfg.nproc > max_local_ranks():
        p.error(f"argument --nproc: {cfg.nproc} local ranks on a machine with "
                f"{os.cpu_count()} CPUs; at most {max_local_ranks()}")
    return cfg


def _body(argv: list[str] | None) -> None:
    cfg = parse_args(argv)
    from sml_torchrec.distributed.process_group import (
        init_process_group,
        launched_by_torchrun,
        run_local,
    )

    t0 = time.perf_counter()
    if launched_by_torchrun():
        init_process_group()
        rank = dist.get_rank()
        try:
            # every rank checks (cheap: meta.json and a stat), so all stop together
            check_inputs(cfg)
            results = run(cfg)
        except UserError as e:
            raise UserError(f"{e} (on rank {rank})") from e
        if rank == 0:
            finish(cfg, results, time.perf_counter() - t0)
        dist.destroy_process_group()
        return
    check_inputs(cfg)
    try:
        if cfg.nproc > 1:
            results = run_local(_rank_main, cfg.nproc, (cfg,), timeout_s=cfg.timeout_s)[0]
        else:
            results = run(cfg)
    except Terminated as e:
        raise Terminated(f"{e}; ranks stopped, no results written") from e
    finish(cfg, results, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """The ``catn-train`` command; returns its exit code (see ``--help``)."""
    return run_command(PROG, lambda: _body(argv), debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
