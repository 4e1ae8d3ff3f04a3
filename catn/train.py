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
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import get_args, get_origin, get_type_hints

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from catn.baselines import LABELS, Method, resolve
from catn.batch import FlowBatch
from catn.config import TrainConfig, flag_label, flag_names
from catn.data.batches import doc_tensors, epoch_plan, training_batches
from catn.data.dataset import CrossDomainCorpus, EtaData, load_corpus, load_eta
from catn.data.errors import DataError
from catn.evaluate import evaluate_distributed, mse_mae
from catn.modules.model import CATN, CATNConfig
from catn.report import format_table, write_results
from recsys_common.errors import (
    EXIT_CODES_HELP,
    ConfigError,
    Terminated,
    UserError,
    check_output_dir,
    debug_requested,
    refuse_to_replace,
    run_command,
)
from recsys_common.process_group import max_local_ranks, rank_world

PROG = "catn-train"


def load_data(cfg: TrainConfig) -> CrossDomainCorpus:
    if cfg.data is None:
        from catn.data.synthetic import SyntheticConfig, synthetic_corpus

        return synthetic_corpus(SyntheticConfig(**{"seed": cfg.synthetic_seed,
                                                   **cfg.synthetic}))
    return load_corpus(cfg.data)


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
    return CATN(mcfg, data.item_mean_s, data.item_mean_t, data.user_prior(), wv)


def sync_buffers(model: torch.nn.Module) -> None:
    """Average the floating-point buffers (running aspect means) over ranks, so that every
    rank evaluates, and keeps as best, the same model."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= dist.get_world_size()


def _train_epoch(ddp: torch.nn.Module, model: CATN, opt: torch.optim.Optimizer,
                 batches: Iterable[tuple[FlowBatch, FlowBatch]], l2: float) -> float:
    """One pass over ``batches`` (flow s, flow t); returns this rank's training MSE."""
    model.train()
    total, count = 0.0, 0
    for fs, ft in batches:
        ps, pt = ddp(fs, ft)
        sq = torch.cat([(ps - fs.ratings) ** 2, (pt - ft.ratings) ** 2])
        loss = sq.mean() + l2 * model.l2_penalty()
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


def train_catn(cfg: TrainConfig, corpus: CrossDomainCorpus, data: EtaData, seed: int,
               log=print) -> tuple[CATN, dict]:
    """Train on this rank's shard (DDP when a process group exists); returns the best model
    (by validation MSE) and its history. Must be called by every rank."""
    rank, world = rank_world()
    if len(data.train_s[0]) == 0 or len(data.train_t[0]) == 0:
        raise DataError(cfg.data, f"eta={data.eta}: training users have no ratings in "
                                  f"{'the source' if len(data.train_s[0]) == 0 else 'the target'}"
                                  " domain")
    torch.manual_seed(seed)
    model = build_model(cfg, corpus, data)
    ddp = DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tensors = doc_tensors(data)
    plan = epoch_plan(len(data.train_s[0]), len(data.train_t[0]), cfg.batch_size, world)
    best = (math.inf, None, -1)
    history = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        batches = training_batches(data, tensors, plan, seed * 100_003 + epoch, rank, world,
                                   cfg.use_aux)
        train_mse = _train_epoch(ddp, model, opt, _with_progress(
            batches, plan.steps, f"eta={data.eta:g} seed={seed} epoch {epoch + 1}",
            cfg.progress and rank == 0), cfg.l2)
        sync_buffers(model)
        val = evaluate_distributed(model, tensors, data.val)
        history.append({"epoch": epoch + 1, "train_mse": train_mse, "val_mse": val["mse"],
                        "val_mae": val["mae"], "seconds": time.perf_counter() - t0})
        improved = val["mse"] < best[0]
        if improved:
            best = (val["mse"], copy.deepcopy(model.state_dict()), epoch + 1)
        if rank == 0:
            log(f"  eta={data.eta:g} seed={seed} epoch {epoch + 1:>2}: train MSE "
                f"{train_mse:.4f}  val MSE {val['mse']:.4f}  MAE {val['mae']:.4f}"
                f"  ({history[-1]['seconds']:.1f}s){'  *' if improved else ''}")
        # every rank sees the same all-reduced val MSE, so all stop at the same epoch
        if epoch + 1 - best[2] >= cfg.patience:
            break
    model.load_state_dict(best[1])
    return model, {"history": history, "best_epoch": best[2], "best_val_mse": best[0]}


def _baseline_rows(methods: list[Method], data: EtaData) -> dict[str, dict[str, float]]:
    """Test MSE/MAE of each predictor method (all but CATN itself)."""
    u, i, r = data.test
    return {m.name: mse_mae(m.predict(data, u, i), r) for m in methods if m.predict is not None}


def _eta_results(cfg: TrainConfig, corpus: CrossDomainCorpus, methods: list[Method],
                 eta: float, log) -> tuple[dict, list[dict]]:
    """(table row of each method, CATN's training record per seed) at share ``eta``."""
    row: dict = {}
    runs = []
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
            test = evaluate_distributed(model, doc_tensors(data), data.test)
            info.update(test)
            runs.append(info)
            log(f"  eta={eta:g} seed={seed}: best epoch {info['best_epoch']}, "
                f"test MSE {test['mse']:.4f} MAE {test['mae']:.4f}")
    if runs:
        row["catn"] = {
            "mse": float(np.mean([r["mse"] for r in runs])),
            "mae": float(np.mean([r["mae"] for r in runs])),
            "mse_per_seed": [r["mse"] for r in runs]}
    # rows in the order the user listed them
    return {m.name: row[m.name] for m in methods if m.name in row}, runs


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
        key = f"{eta:g}" if eta != 1 else "1.0"
        results["eta"][key], runs = _eta_results(cfg, corpus, methods, eta, log)
        if runs:
            results["training"][key] = runs
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
    print()
    print(format_table(results, "mse", LABELS))
    print()
    print(format_table(results, "mae", LABELS))
    path = write_results(results, out_dir(cfg, results["scenario"]))
    print(f"\nwall time {wall_s:.1f}s; results written to {path}")


def _flag_fields() -> list:
    """The fields of :class:`TrainConfig` that are flags (those with help)."""
    return [f for f in fields(TrainConfig) if "help" in f.metadata]


def _csv_text(values: tuple) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainConfig` field with help; type, default, choices from it."""
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n")[0], epilog=EXIT_CODES_HELP,
        usage="%(prog)s [--data DIR] [--out DIR] [--nproc N] [options]  (--help lists them)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults, hints = TrainConfig(), get_type_hints(TrainConfig)
    for f in _flag_fields():
        names, value, help_ = flag_names(f.name), getattr(defaults, f.name), f.metadata["help"]
        kw = {"dest": f.name, "metavar": f.metadata.get("metavar")}
        if get_origin(hints[f.name]) is tuple:
            # Checked by TrainConfig (unknown, empty, repeated) so that the message can name
            # the bad element; argparse's choices cannot see inside a comma list.
            choices = f.metadata.get("choices")
            p.add_argument(*names, default=_csv_text(value), help=help_ + (
                f", from {','.join(choices)}" if choices else ""), **kw)
        elif hints[f.name] is bool:
            action = "store_true" if value is False else argparse.BooleanOptionalAction
            p.add_argument(*names, dest=f.name, default=value, action=action, help=help_)
        else:
            kind = next(t for t in (get_args(hints[f.name]) or (hints[f.name],))
                        if t is not type(None))
            # "%(default).0s" (empty) where the help says what None means: it stops the
            # formatter from appending "(default: None)".
            p.add_argument(*names, type=kind, default=value, help=help_ + (
                "%(default).0s" if value is None else ""), **kw)
    p.add_argument("--debug", action="store_true",
                   help="also print the traceback of a user error (or set SML_TORCHREC_DEBUG=1)")
    return p


def _csv(p: argparse.ArgumentParser, name: str, text: str, kind: type) -> tuple:
    """The comma list ``text`` of field ``name`` as a tuple of ``kind``; a usage error if not."""
    try:
        return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        p.error(f"{flag_label(name)}: want comma-separated {kind.__name__}s, got {text!r}")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags to config; any bad flag or value exits 2 with the usage line (argparse)."""
    p = _parser()
    a = p.parse_args(argv)
    hints = get_type_hints(TrainConfig)
    kw = {f.name: getattr(a, f.name) for f in _flag_fields()}
    for name, value in kw.items():
        if get_origin(hints[name]) is tuple:
            kw[name] = _csv(p, name, value, get_args(hints[name])[0])
    try:
        cfg = TrainConfig(**kw)
        cfg.resolved().__post_init__()  # the data-dependent defaults, too (window vs doc_len)
    except ConfigError as e:
        p.error(str(e))
    if cfg.nproc > max_local_ranks():
        p.error(f"argument --nproc: {cfg.nproc} local ranks on a machine with "
                f"{os.cpu_count()} CPUs; at most {max_local_ranks()}")
    return cfg


def _body(argv: list[str] | None) -> None:
    cfg = parse_args(argv)
    from recsys_common.process_group import (
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
