"""The period loop: one initial model, then every strategy through the same periods and tests.

    initial MF on D_0..D_{init-1} (best epoch on D_init)
    for each strategy:   start(initial)
        for t in init .. P-2:   train_period(t);  if t+1 is online: test on D_{t+1}

Runs on every rank (same code, same order of collectives); rank 0 logs and returns results.
After each strategy's last period (every period with ``save_every_period``) its served model
is saved (``export.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from recsys_common.process_group import rank_world
from sml_torchrec.data.period_dataset import PeriodDataset
from sml_torchrec.metrics import KS, metric_keys, topk_metric, upgrade_sampled_keys
from sml_torchrec.retrain import checkpoint, progress_bars, tuning
from sml_torchrec.retrain.config import RUN_ONLY_FIELDS, PeriodRoles, RetrainConfig
from sml_torchrec.retrain.evaluate import PeriodTest, evaluate, prepare_test
from sml_torchrec.retrain.export import MODEL_DIR, ModelWriter
from sml_torchrec.retrain.model import RetrainModel
from sml_torchrec.retrain.strategies import strategy_class
from sml_torchrec.retrain.strategies.base import Strategy

log = logging.getLogger(__name__)


def train_initial(
    ds: PeriodDataset, roles: PeriodRoles, cfg: RetrainConfig, test: PeriodTest
) -> dict[str, torch.Tensor]:
    """The shared initial MF: log loss on D_0..D_{init-1}, the epoch best on D_init kept."""
    torch.manual_seed(cfg.seed)
    model = RetrainModel(ds.num_users, ds.num_items, cfg, transfer=False)
    data = ds.periods(0, roles.init)
    items = ds.meta.items_upto[roles.init - 1]
    best, best_score = None, -1.0
    for e in progress_bars.bar(range(cfg.init_epochs), "initial MF epochs"):
        loss = model.train_epoch(data, items, cfg.seed * 7919 + e)
        score = evaluate(model, test, ["full"], cfg.never_trained)["full"]["recall@20"]
        _print(f"  initial MF epoch {e + 1}/{cfg.init_epochs}: loss {loss:.4f}, "
               f"recall@20 on period {roles.init} {score:.4f}")
        if score > best_score:
            best, best_score = model.export_tables(), score
    return best


def _print(msg: str) -> None:
    if rank_world()[0] == 0:
        log.info(msg)


SPLIT_GROUPS = ("cold_users", "warm_users", "cold_items", "warm_items")


def _average(rows: list[dict], weight_key: str, pooled: bool = False) -> dict[str, float]:
    keys = metric_keys("full" if weight_key == "users" else "sampled")
    if not rows:
        return {}
    if weight_key == "users" and not pooled:  # full protocol: each period's average counts once
        return {k: float(np.mean([r[k] for r in rows])) for k in keys}
    w = np.array([r[weight_key] for r in rows], dtype=np.float64)
    return {k: float(np.dot(w, [r[k] for r in rows]) / w.sum()) for k in keys}


def _config_changes(saved: dict, now: dict) -> list[str]:
    return [
        f"{k}: {saved.get(k)!r} -> {v!r}"
        for k, v in now.items()
        if k not in RUN_ONLY_FIELDS and saved.get(k) != v
    ]


@dataclass
class Progress:
    """What the loop has done: rank 0's picklable part of every checkpoint."""

    initial: dict[str, torch.Tensor] | None = None
    per_period: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    position: tuple[int, int] | None = None  # (strategy index, last period trained)

    def finished(self, i: int) -> bool:
        """Whether strategy ``i`` was done before the checkpoint this run resumed from."""
        return self.position is not None and self.position[0] > i


class LoopCheckpointer:
    """Saves the loop's state after the initial model and after every period, and restores it.

    A checkpoint is the strategy's sharded tensors (through DCP, ``checkpoint.save``) plus one
    picklable payload: the :class:`Progress`, the strategy's extra state, the RNG states and
    the config. Nothing is saved when the run has no checkpoint directory.
    """

    def __init__(self, cfg: RetrainConfig, identity: checkpoint.RunIdentity | None) -> None:
        self.cfg, self.identity = cfg, identity
        self.resume_from = None
        if cfg.checkpoint_dir and cfg.resume:
            self.resume_from = checkpoint.latest_valid(cfg.checkpoint_dir)
        self.extra: dict = {}

    def restore(self) -> Progress:
        """The progress to start from (empty without a checkpoint); restores the RNG states."""
        if self.resume_from is None:
            return Progress()
        self.extra = checkpoint.load_extra(self.resume_from)
        changed = _config_changes(self.extra["config"], asdict(self.cfg))
        if changed:
            raise ValueError(
                f"checkpoint {self.resume_from} was made with a different configuration "
                f"({'; '.join(changed)}); use another --checkpoint-dir or --no-resume"
            )
        torch.set_rng_state(self.extra["torch_rng"])
        np.random.set_state(self.extra["numpy_rng"])
        progress = self.extra["progress"]
        for per_protocol in progress.per_period.values():  # a checkpoint from before hit@K
            per_protocol["sampled"] = [upgrade_sampled_keys(r)
                                       for r in per_protocol.get("sampled", [])]
        _print(f"resuming from {self.resume_from} (strategy {progress.position})")
        return progress

    def restore_strategy(self, strategy: Strategy) -> None:
        """Load the interrupted strategy's state (it has just been started afresh)."""
        state = strategy.checkpoint_state()
        if state:
            checkpoint.load_state(self.resume_from, state)
            strategy.load_checkpoint_state(state)
        strategy.load_extra_state(self.extra["strategy"])

    def save(self, step: int, progress: Progress, strategy: Strategy | None = None) -> None:
        if not self.cfg.checkpoint_dir:
            return
        payload = {
            "progress": progress,
            "strategy": strategy.extra_state() if strategy is not None else {},
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "config": asdict(self.cfg),
        }
        state = strategy.checkpoint_state() if strategy is not None else {}
        checkpoint.save(self.cfg.checkpoint_dir, step, state, payload,
                        keep=self.cfg.keep_checkpoints, identity=self.identity)


def run(
    cfg: RetrainConfig, ds: PeriodDataset, dataset_name: str,
    identity: checkpoint.RunIdentity | None = None,
) -> dict:
    """Every rank runs this; ``identity`` (from :func:`checkpoint.prepare`) marks the run's
    checkpoints."""
    roles = PeriodRoles.from_config(ds.num_periods, cfg)
    t0 = time.monotonic()
    _print(
        f"{dataset_name}: {ds.num_periods} periods, {ds.num_users:,} users, {ds.num_items:,} "
        f"items; init 0..{roles.init - 1}, offline {roles.init}..{roles.last_offline}, "
        f"val {roles.first_online}..{roles.first_test - 1}, test {roles.first_test}.."
        f"{ds.num_periods - 1}; {rank_world()[1]} rank(s), {cfg.sharding} sharding"
    )
    tests = {
        s: prepare_test(ds, s, cfg.protocols, cfg.num_eval_negatives, cfg.seed)
        for s in range(roles.first_online, ds.num_periods)
    }
    ckpt = LoopCheckpointer(cfg, identity)
    progress = ckpt.restore()
    progress_bars.configure(cfg.progress)
    writer = ModelWriter(cfg, ds, dataset_name) if cfg.save_model else None
    if writer is not None:
        writer.begin(resumed=progress.position is not None)
    if progress.initial is None:
        init_test = prepare_test(ds, roles.init, ["full"], cfg.num_eval_negatives, cfg.seed)
        progress.initial = train_initial(ds, roles, cfg, init_test)
        ckpt.save(0, progress)
    i, units = 0, tuning.runs(cfg, _scorer(progress, cfg))
    while i < len(units):  # with --tune-stages, a finished run may add the next stage's runs
        if not progress.finished(i):
            _run_strategy(i, units[i], ds, roles, tests, progress, ckpt, writer)
        i += 1
        units = tuning.runs(cfg, _scorer(progress, cfg))
    _print(f"done in {time.monotonic() - t0:.0f}s")
    protocols = summarise(progress, cfg)
    model_dir = None
    if writer is not None:
        model_dir = writer.finish({name: _chosen_label(name, entry) for name, entry
                                   in next(iter(protocols.values())).items()})
    return {"dataset": dataset_name, "config": asdict(cfg), "protocols": protocols,
            "model": MODEL_DIR if model_dir is not None else None}  # relative to OUT


def _run_strategy(
    i: int, unit: tuning.Run, ds: PeriodDataset, roles: PeriodRoles,
    tests: dict[int, PeriodTest], progress: Progress, ckpt: LoopCheckpointer,
    writer: ModelWriter | None,
) -> None:
    """The ``i``-th run of the loop (one strategy, one setting) through the periods, resumed
    where ``progress`` stopped, evaluated, saved and checkpointed after each period."""
    cfg, name, periods = unit.cfg, unit.label, ds.num_periods
    strategy = strategy_class(unit.name)(ds, roles, cfg)
    strategy.start(progress.initial)
    first_t = roles.init
    if progress.position is not None and progress.position[0] == i:
        ckpt.restore_strategy(strategy)
        first_t = progress.position[1] + 1
    else:
        progress.per_period[name] = {p: [] for p in cfg.protocols}
        progress.seconds[name] = 0.0
    for t in progress_bars.bar(range(first_t, periods - 1), f"{name} periods",
                               total=periods - 1 - first_t):
        ts = time.monotonic()
        strategy.start_period()
        strategy.train_period(t)
        if t + 1 in tests:
            _record(progress, name, t + 1, roles.role(t + 1),
                    evaluate(strategy.model, tests[t + 1], cfg.protocols, cfg.never_trained))
        progress.seconds[name] += time.monotonic() - ts
        if writer is not None and (cfg.save_every_period or t == periods - 2):
            _save(writer, name, strategy, t)
        progress.position = (i, t)
        ckpt.save(1 + i * periods + t, progress, strategy)


def _chosen_label(name: str, entry: dict) -> str:
    """The label of the run reported for strategy ``name`` (itself unless tuned)."""
    setting = entry.get("tuned", {}).get("setting")
    return tuning.label(name, setting) if setting else name


def _save(writer: ModelWriter, name: str, strategy: Strategy, t: int) -> None:
    """Snapshot of the strategy's served model after period t; a strategy without a sharded
    model (nothing trained yet, or nothing to serve from tables) is skipped."""
    model = strategy.model
    if model is None or not hasattr(model, "user_vectors"):
        return
    writer.save(name, model, t)


def _record(progress: Progress, name: str, s: int, role: str, m: dict) -> None:
    """Keep one tested period's metrics and print them."""
    for p, row in m.items():
        progress.per_period[name][p].append({"period": s, "role": role, **row})
    _print(f"  {name:>12} period {s:>3} ({role}): " + "  ".join(
        f"{p} {topk_metric(p)}@20 {row[f'{topk_metric(p)}@20']:.4f} N@20 {row['ndcg@20']:.4f}"
        for p, row in m.items()))


def _average_split(rows: list[dict], count_key: str) -> dict[str, dict]:
    """Each cold/warm group pooled over ``rows``: periods weighted by the group's count."""
    out = {}
    for group in SPLIT_GROUPS:
        parts = [r["cold_warm"][group] for r in rows if r["cold_warm"][group][count_key]]
        n = sum(g[count_key] for g in parts)
        out[group] = {**(_average(parts, count_key, pooled=True) if parts else {}),
                      count_key: n}
    return out


def _summary(rows: list[dict], protocol: str, seconds: float) -> dict:
    """One strategy's entry of one protocol: test averages, their cold/warm split, the
    validation averages, every period's row and the seconds spent."""
    weight = "users" if protocol == "full" else "interactions"
    test_rows = [r for r in rows if r["role"] == "test"]
    val_rows = [r for r in rows if r["role"] == "val"]
    return {
        **_average(test_rows, weight),
        "cold_warm": _average_split(test_rows, weight),
        "val": _average(val_rows, weight) if val_rows else {},
        "per_period": rows,
        "seconds": seconds,
    }


def _selection_protocol(cfg: RetrainConfig) -> str:
    return "full" if "full" in cfg.protocols else cfg.protocols[0]


def _scorer(progress: Progress, cfg: RetrainConfig) -> Callable[[str], float | None]:
    """label -> the run's validation score once all its validation periods are recorded."""
    protocol = _selection_protocol(cfg)

    def score(label: str) -> float | None:
        rows = progress.per_period.get(label, {}).get(protocol, [])
        if sum(r["role"] == "val" for r in rows) < cfg.val_periods:
            return None
        return _val_score(rows, protocol)
    return score


def _val_score(rows: list[dict], protocol: str) -> float:
    """The selection metric averaged over the validation periods of one run."""
    val_rows = [r for r in rows if r["role"] == "val"]
    weight = "users" if protocol == "full" else "interactions"
    return _average(val_rows, weight).get(tuning.selection_metric(protocol), 0.0)


def summarise(progress: Progress, cfg: RetrainConfig) -> dict:
    """results.json's ``protocols``: per protocol and strategy, the test-period averages (the
    full protocol averages periods, the sampled one weighs them by interactions), their
    cold/warm split (``cold_warm``, each group pooled over the test periods), the validation
    averages, every period's row and the seconds spent. With ``tune``, a strategy's entry is
    its run chosen on the validation periods, and ``tuned`` holds the chosen setting."""
    results: dict = {p: {} for p in cfg.protocols}
    metric_protocol = _selection_protocol(cfg)
    all_runs = tuning.runs(cfg, _scorer(progress, cfg))
    for name in cfg.strategies:
        candidates = [r for r in all_runs if r.name == name]
        val = {r.label: _val_score(progress.per_period[r.label][metric_protocol],
                                   metric_protocol) for r in candidates}
        chosen = tuning.choose(candidates, val)
        for p in cfg.protocols:
            entry = _summary(progress.per_period[chosen.label][p], p,
                             sum(progress.seconds[r.label] for r in candidates))
            if cfg.tune:
                key = "val_" + tuning.selection_metric(metric_protocol)
                entry["tuned"] = {
                    "setting": chosen.setting,
                    "selected_on": f"{metric_protocol} {key[len('val_'):]}, validation periods",
                    "grid": [{**r.setting, key: val[r.label]} for r in candidates
                             if r.setting],
                }
            results[p][name] = entry
    return results


def format_table(results: dict) -> str:
    """Paper Table 1 style: strategies x recall/NDCG@5/10/20 (the sampled protocol's first
    columns are hit@K), SML's relative improvement; then recall/hit@20 split by cold/warm users
    and items."""
    lines = []
    for p, rows in results["protocols"].items():
        tuned = any("tuned" in r for r in rows.values())
        lines.append(f"\n[{p} protocol] average over test periods"
                     + (" (tuned: table_lr, epochs, l2_tables chosen on the validation "
                        "periods)" if tuned else ""))
        hit = topk_metric(p)
        head = (f"{'method':>14} " + " ".join(f"{hit + '@' + str(k):>10}" for k in KS)
                + f" {'RI':>8} " + " ".join(f"{'NDCG@' + str(k):>10}" for k in KS) + f" {'RI':>8}")
        lines.append(head)
        sml = rows.get("sml")
        for name, r in rows.items():
            def ri(metric: str, r=r, name=name, sml=sml) -> str:
                if sml is None or name == "sml" or r[metric] == 0:
                    return f"{'-':>8}"
                return f"{100 * (sml[metric] / r[metric] - 1):>7.1f}%"

            lines.append(
                f"{name:>14} " + " ".join(f"{r[f'{hit}@{k}']:>10.4f}" for k in KS)
                + f" {ri(f'{hit}@20')} " + " ".join(f"{r[f'ndcg@{k}']:>10.4f}" for k in KS)
                + f" {ri('ndcg@20')}"
            )
        lines.extend(_split_lines(rows, p))
        if tuned:
            lines.extend(f"{name:>14} tuned: " + (", ".join(
                f"{k} {v:g}" for k, v in r["tuned"]["setting"].items()) or "nothing to tune")
                for name, r in rows.items())
    return "\n".join(lines)


def _split_lines(rows: dict, protocol: str) -> list[str]:
    """recall@20 (hit@20 when sampled) over the test periods' cold/warm users and items, with
    the group sizes."""
    count = "users" if protocol == "full" else "interactions"
    metric = f"{topk_metric(protocol)}@20"
    first = next(iter(rows.values()))["cold_warm"]
    lines = [f"{metric + ' of':>14} " + " ".join(
        f"{g.replace('_', ' ') + ' (' + str(first[g][count]) + ')':>22}" for g in SPLIT_GROUPS)]
    for name, r in rows.items():
        lines.append(f"{name:>14} " + " ".join(
            f"{r['cold_warm'][g].get(metric, float('nan')):>22.4f}" for g in SPLIT_GROUPS))
    return lines
