"""Peak resident memory per rank: the `make run` workload, and its evaluation alone.

Question: how much memory does each rank of a retraining run peak at, and how much does that
figure move between identical runs (same command, same seed, bit-identical results)? A machine
is sized from the peak, so a run-to-run spread is as costly as the peak itself. Two workloads,
each repeated in fresh processes:

* ``run``: what ``make run`` does (``sml-retrain --nproc 2``, every default strategy on the
  built-in synthetic log); each rank reports its own peak (``ru_maxrss``).
* ``eval``: the evaluation alone: each rank builds the served model, prepares the online
  periods' tests (both protocols) and evaluates every period; reported is the peak it adds
  above the rank's resident memory just before evaluating (VmHWM, reset through
  /proc/self/clear_refs after a warm-up period), and the rank's absolute peak.

Figures are MB (2^20 bytes): the median over repeats and ranks, min, max and the spread
(max - min) / median. The sampled metrics of every repeat must be identical (checked).

    python benchmarks/memory.py                 # make run's workload and evaluation, 5 repeats
    python benchmarks/memory.py --eval-users 8000   # evaluation on a 4x larger log
    python benchmarks/memory.py --smoke         # tiny log, sml only, 2 repeats: seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import statistics
import tempfile
from pathlib import Path

_MB = 2**20


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, bytes."""
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                if k in ("VmHWM", "VmRSS")}


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sampled_summary(results: dict) -> dict:
    return {name: {k: v for k, v in r.items() if k.startswith(("hit", "ndcg"))}
            for name, r in results["protocols"].get("sampled", {}).items()}


def run_rank(cfg_kwargs: dict, data_dir: str) -> dict:
    """One rank of the `make run` workload; returns this rank's peak and the sampled metrics."""
    from sml_torchrec.data.period_dataset import PeriodDataset
    from sml_torchrec.retrain.config import RetrainConfig
    from sml_torchrec.retrain.loop import run

    cfg = RetrainConfig(**cfg_kwargs)
    with contextlib.redirect_stdout(io.StringIO()):  # the loop's progress lines
        results = run(cfg, PeriodDataset(data_dir), "synthetic")
    return {"peak": _maxrss(), "metrics": _sampled_summary(results)}


def eval_rank(cfg_kwargs: dict, data_dir: str) -> dict:
    """One rank evaluating every online period with a (seeded, untrained) served model."""
    import torch

    from sml_torchrec.data.period_dataset import PeriodDataset
    from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
    from sml_torchrec.retrain.evaluate import evaluate, prepare_test
    from sml_torchrec.retrain.model import RetrainModel

    cfg = RetrainConfig(**cfg_kwargs)
    ds = PeriodDataset(data_dir)
    roles = PeriodRoles.from_config(ds.num_periods, cfg)
    torch.manual_seed(cfg.seed)
    model = RetrainModel(ds.num_users, ds.num_items, cfg, transfer=False)
    tests = [prepare_test(ds, s, cfg.protocols, cfg.num_eval_negatives, cfg.seed)
             for s in range(roles.first_online, ds.num_periods)]
    evaluate(model, tests[0], cfg.protocols)  # warm-up: lazy initialisation, not evaluation
    base = _status()["VmRSS"]
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        resettable = True
    except OSError:
        resettable = False
    metrics = [evaluate(model, t, cfg.protocols) for t in tests]
    added = _status()["VmHWM"] - base if resettable else None
    return {"added": added, "peak": _maxrss(),
            "metrics": [m.get("sampled") for m in metrics],
            "interactions": sum(len(t.data) for t in tests)}


def _stats(values_bytes: list[int]) -> dict[str, float]:
    mb = [v / _MB for v in values_bytes]
    med = statistics.median(mb)
    return {"median_mb": med, "min_mb": min(mb), "max_mb": max(mb),
            "spread": (max(mb) - min(mb)) / med if med else 0.0, "n": len(mb)}


def _repeat(fn, nproc: int, args: tuple, repeats: int, threads: int) -> list[list[dict]]:
    from recsys_common.process_group import run_local

    return [run_local(fn, nproc, args, timeout_s=3600, threads=threads)
            for _ in range(repeats)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny log, sml only, 2 repeats")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nproc", type=int, default=2, help="ranks (make run uses 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--eval-users", type=int, default=2000,
                   help="users of the synthetic log the evaluation-alone part uses")
    p.add_argument("--skip-run", action="store_true", help="measure the evaluation only")
    a = p.parse_args(argv)

    from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic
    from sml_torchrec.retrain.config import DEFAULT_STRATEGIES

    cfg: dict = {"strategies": list(DEFAULT_STRATEGIES), "nproc": a.nproc}
    syn = {"num_users": 2000}
    eval_syn = {"num_users": a.eval_users}
    if a.smoke:
        a.repeats = 2
        cfg.update(strategies=["sml"], epochs=1, init_epochs=1, rounds=1, transfer_n1=2,
                   transfer_n2=2, transfer_hidden=32, val_periods=1, test_periods=1)
        syn = {"num_users": 200, "periods": 6, "initial_items": 60, "new_items_per_period": 20}
        eval_syn = {**syn, "num_users": 400}
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_data = str(Path(tmp) / "run")
        build_synthetic(run_data, SyntheticConfig(seed=0, **syn))
        eval_data = run_data
        if eval_syn != syn:
            eval_data = str(Path(tmp) / "eval")
            build_synthetic(eval_data, SyntheticConfig(seed=0, **eval_syn))
        cfg["out"] = str(Path(tmp) / "out")
        if not a.skip_run:
            reps = _repeat(run_rank, a.nproc, (cfg, run_data), a.repeats, a.threads)
            if any(r[0]["metrics"] != reps[0][0]["metrics"] for r in reps):
                raise AssertionError("identical runs gave different metrics")
            out["run"] = {"per_rank": [_stats([r[k]["peak"] for r in reps])
                                       for k in range(a.nproc)],
                          "all": _stats([x["peak"] for r in reps for x in r])}
        reps = _repeat(eval_rank, a.nproc, (cfg, eval_data), a.repeats, a.threads)
        if any(r[0]["metrics"] != reps[0][0]["metrics"] for r in reps):
            raise AssertionError("identical evaluations gave different metrics")
        out["eval"] = {"all": _stats([x["peak"] for r in reps for x in r]),
                       "interactions": reps[0][0]["interactions"]}
        if reps[0][0]["added"] is not None:
            out["eval"]["added"] = _stats([x["added"] for r in reps for x in r])

    print(f"Peak resident memory per rank (MB), {a.nproc} rank(s), {a.threads} thread(s) each, "
          f"{a.repeats} identical repeats; spread = (max - min) / median")
    print(f"{'workload':<34}{'median':>9}{'min':>9}{'max':>9}{'spread':>9}")
    rows = []
    if "run" in out:
        rows.append(("make run: peak, all ranks", out["run"]["all"]))
        rows += [(f"make run: peak, rank {k}", s) for k, s in enumerate(out["run"]["per_rank"])]
    rows.append(("evaluation alone: peak", out["eval"]["all"]))
    if "added" in out["eval"]:
        rows.append(("evaluation alone: added", out["eval"]["added"]))
    for name, s in rows:
        print(f"{name:<34}{s['median_mb']:>9.1f}{s['min_mb']:>9.1f}{s['max_mb']:>9.1f}"
              f"{100 * s['spread']:>8.1f}%")
    print(json.dumps({"benchmark": "memory", "smoke": a.smoke, "nproc": a.nproc,
                      "threads": a.threads, "repeats": a.repeats, "eval_log": eval_syn, **out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
