"""Full-ranking evaluation: sharded top-K against gathering the whole item table.

Question: when the item table is split row-wise across ranks, how many users/s does the
full-ranking top-K reach if each rank ranks its own rows and only the k best (score, id) per
user travel (``sharded_topk``), compared with first all-gathering the whole table and ranking
it on every rank (``gather_full_topk``)? Both use the same ranking kernel and the same masking
of each user's history, and must return identical ids (checked here on every repeat). Measured
on 1 and 2 local gloo ranks; each repeat's time is the slowest rank's; medians over repeats.
Also reports the users/s of ``full_ranking_metrics`` on the resulting top-K.

    python benchmarks/topk_eval.py            # 4096 users x 100k items, d = 64
    python benchmarks/topk_eval.py --smoke    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist

from recsys_common.process_group import rank_world, run_local
from sml_torchrec.distributed.sharded_topk import gather_full_topk, sharded_topk
from sml_torchrec.metrics import KS, full_ranking_metrics


def make_data(users: int, items: int, dim: int, history: int, seed: int = 0):
    """Queries [users, dim], item table [items, dim], history pairs [users * history] x 2."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(users, dim, generator=g)
    table = torch.randn(items, dim, generator=g)
    eq = torch.arange(users).repeat_interleave(history)
    ei = torch.randint(0, items, (users * history,), generator=g)
    return q, table, eq, ei


def block_of(items: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous near-equal row blocks, as a row-wise sharding plan lays them out."""
    per = -(-items // world)
    lo = min(items, rank * per)
    return lo, min(items, lo + per)


def _timed(fn, repeats: int, warmup: int) -> tuple[list[float], object]:
    times, out = [], None
    for rep in range(warmup + repeats):
        if dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        out = fn()
        dt = torch.tensor([time.perf_counter() - t0])
        if dist.is_initialized():
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # a step is as slow as its slowest rank
        if rep >= warmup:
            times.append(float(dt))
    return times, out


def bench_rank(cfg: dict) -> dict:
    """One rank's part; returns plain floats (tensors must not cross the result queue)."""
    rank = rank_world()[0]
    world = dist.get_world_size() if dist.is_initialized() else 1
    q, table, eq, ei = make_data(cfg["users"], cfg["items"], cfg["dim"], cfg["history"])
    lo, hi = block_of(cfg["items"], rank, world)
    block = table[lo:hi].clone()
    k, reps, warm = cfg["k"], cfg["repeats"], cfg["warmup"]
    t_sh, (_, ids_sh) = _timed(lambda: sharded_topk(q, block, lo, k, eq, ei), reps, warm)
    t_ga, (_, ids_ga) = _timed(lambda: gather_full_topk(q, block, lo, k, eq, ei), reps, warm)
    if not torch.equal(ids_sh, ids_ga):
        raise AssertionError("sharded and gathered top-K disagree")
    # Relevant items: a few random ones per user, CSR.
    g = torch.Generator().manual_seed(1)
    n_rel = 5
    indptr = torch.arange(cfg["users"] + 1) * n_rel
    truth = torch.randint(0, cfg["items"], (cfg["users"] * n_rel,), generator=g)
    t_m, _ = _timed(lambda: full_ranking_metrics(ids_sh, indptr, truth, KS), reps, warm)
    return {"sharded_s": statistics.median(t_sh), "gather_s": statistics.median(t_ga),
            "metrics_s": statistics.median(t_m)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--users", type=int, default=4096)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=max(KS))
    p.add_argument("--history", type=int, default=20, help="masked items per user")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    a = p.parse_args(argv)
    if a.smoke:
        a.users, a.items, a.dim, a.history, a.repeats = 64, 2000, 16, 5, 2
    cfg = {"users": a.users, "items": a.items, "dim": a.dim, "k": a.k, "history": a.history,
           "repeats": a.repeats, "warmup": 1}
    results: dict[str, dict[str, float]] = {}
    for n in a.ranks:
        per_rank = run_local(bench_rank, n, (cfg,), timeout_s=600, threads=a.threads)
        r = per_rank[0]  # times are already the max over ranks
        results[str(n)] = {
            "sharded_users_per_s": a.users / r["sharded_s"],
            "gather_users_per_s": a.users / r["gather_s"],
            "speedup": r["gather_s"] / r["sharded_s"],
            "metrics_users_per_s": a.users / r["metrics_s"],
            # Per rank, per call: what the merge moves vs. what gathering the table moves.
            "sharded_bytes_in": 16 * a.users * a.k * (n - 1),
            "gather_bytes_in": 4 * a.dim * (a.items - a.items // n) if n > 1 else 0,
        }
    print(f"Full-ranking top-{a.k}: {a.users} users x {a.items} items, d = {a.dim}, "
          f"{a.history} masked items/user, {a.threads} thread(s) per rank, gloo on CPU, "
          f"medians of {a.repeats}")
    print(f"{'ranks':>5}{'sharded users/s':>18}{'gather users/s':>17}{'speedup':>9}"
          f"{'metrics users/s':>18}")
    for n, r in results.items():
        print(f"{n:>5}{r['sharded_users_per_s']:>18.1f}{r['gather_users_per_s']:>17.1f}"
              f"{r['speedup']:>8.2f}x{r['metrics_users_per_s']:>18.1f}")
    print(json.dumps({"benchmark": "topk_eval", "threads": a.threads, "smoke": a.smoke,
                      "users": a.users, "items": a.items, "dim": a.dim, "k": a.k,
                      "repeats": a.repeats, "ranks": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
