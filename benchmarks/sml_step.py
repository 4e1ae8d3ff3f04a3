"""SML training steps on sharded tables: step 1, step 2 and plain MF fine-tuning, 1 vs 2 ranks.

Question: how many examples/s does one SML training step reach, compared with the plain MF
fine-tune step it replaces, and how close does step 1 get to the machine's dense GEMM rate?
All three steps run through ``RetrainModel.train_epoch`` (the library's own code path:
negative sampling, batching, the DMP-sharded lookup, the loss, backward with FBGEMM's fused
row-wise Adagrad, and for step 2 the Adam step on Θ) on the same row-wise sharded tables and the
same batches:

* ``step1``: SML step 1, ``train_epoch(..., step="tables")`` of a transfer-wrapped model: the
  loss goes through f_Θ(W_{t-1}, Ŵ_t) with Θ detached; gradients reach Ŵ_t only.
* ``step2``: SML step 2, ``step="transfer"`` of the same model: tables looked up without grad,
  gradients reach Θ only (DDP all-reduces them across ranks).
* ``finetune``: ``step="tables"`` of a plain MF model (no transfer): the baseline.

Each data set is ``--steps`` batches of ``--batch`` examples *per rank* (the config's batch
sizes are set to batch x ranks, so step 1 and step 2 see the same batches). Also timed: the
end-of-period ``RetrainModel.materialize()`` over the full tables (rows/s; tables are reloaded
before each repeat, untimed). Each repeat's time is the slowest rank's; the repeats interleave
the four measurements; reported numbers are medians over ``--repeats`` after one warm-up.

Transfer FLOPs actually done: the transfer runs once per unique id of each table in a rank's
batch, so a step does (unique users + unique items incl. negatives) rows x ``flop_per_row``
(``transfer_flops_per_row``: 2 per multiply-add of conv1, conv2, fc1, fc2) x a factor:

* step 1: 2. Forward 1x; the backward needs grad-input only (Θ is detached, so autograd does
  no weight-gradient GEMMs): each of the four GEMMs has one grad-input GEMM of the forward's
  size (conv1's covers the whole [3, B*d] stack, which ``mm``'s backward computes in full).
* step 2: 3 - 6*n1*d/flop_per_row (~2.995). Forward 1x, weight gradients 1x, grad-input 1x
  for fc2, fc1 and conv2 but not conv1 (the looked-up rows need no gradient).

``transfer_efficiency`` = step 1's transfer FLOPs per second (summed over ranks, over the whole
step's wall time) / the same-run ``torch.mm`` rate (summed over ranks). The mm rate is a
``--mm-size``^3 fp32 ``torch.mm`` timed in every rank process with the same thread count, at
the same time on all ranks, sampled between every two timed runs; each run is divided by the
mean of its two neighbouring samples and the median of those ratios is reported. Threads
per rank = ``--threads`` // ranks. Peak RSS is each rank's ``ru_maxrss``. Prints a human table
and one JSON line.

``lookup`` times one sharded lookup by itself: the plain MF model's forward (ids distributed,
both tables looked up, rows returned, the dot products) over the same batches, without grad.
Step 1 looks up W_{t-1} and Ŵ_t, so its work outside the transfer should cost no more than a
fine-tune step plus one such lookup: ``step1_outside_transfer_ms`` (step 1 minus its transfer
work as timed alone, per step) against ``outside_transfer_budget_ms`` (fine-tune + lookup, per
step), repeat by repeat. The lookup is also the most that storing W_{t-1} and Ŵ_t side by side
in one table of 2d columns could save a step (one lookup instead of two, of rows twice as wide).

What limits step 1 is measured beside it. ``transfer_alone`` times step 1's transfer work by
itself: per step and table, the forward on that table's mean unique rows with Θ constant and the
backward to those rows, on fixed random rows, nothing else (``transfer_alone_efficiency``).
Two what-ifs follow, repeat by repeat: ``step1_efficiency_bound`` is the ``transfer_efficiency``
of a step that cost a plain MF fine-tune step on the same batches plus the transfer as fast as
it ran alone; ``step1_efficiency_ceiling`` the same with the transfer at exactly the mm rate.
The fine-tune step is TorchRec's sharded lookup, fused optimizer and collectives, which step 1
also does (twice over: W_{t-1} and Ŵ_t), so where the ceiling is below a target no transfer
kernel reaches it on that machine and rank layout.

    python benchmarks/sml_step.py            # 20k users, 10k items, d=64, batch 1024/rank,
                                             # 8 steps x 7 repeats, 1 and 2 ranks (~1 min)
    python benchmarks/sml_step.py --smoke    # tiny sizes, seconds
    python benchmarks/sml_step.py --profile  # also: torch.profiler table of step 1 (1 rank)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist

from recsys_common.process_group import rank_world, run_local
from sml_torchrec.data.batching import iterate_batches
from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.data.sampling import sample_negatives
from sml_torchrec.modules.mf import ITEM_TABLE, USER_TABLE
from sml_torchrec.modules.transfer import TransferConfig, transfer_flops_per_row
from sml_torchrec.retrain.config import RetrainConfig
from sml_torchrec.retrain.model import RetrainModel

STEPS = ("step1", "step2", "finetune")
TIMED = (*STEPS, "lookup", "materialize", "transfer_alone")
SEED = 3  # the epoch seed of every timed call: same negatives, same batches


def flop_factors(dim: int, tcfg: TransferConfig) -> dict[str, float]:
    """Transfer FLOPs of a training step per row, in units of the forward's (see the doc)."""
    f = transfer_flops_per_row(dim, tcfg)
    conv1 = 2 * 3 * tcfg.n1 * dim
    return {"step1": 2.0, "step2": 3.0 - conv1 / f}


def make_interactions(n: int, users: int, items: int, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    return Interactions(
        rng.integers(0, users, n), rng.integers(0, items, n),
        np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int32),
    )


def mm_gflops(n: int, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def _slowest(fn) -> float:
    """Seconds of ``fn()`` on the slowest rank (all ranks start together)."""
    if dist.is_initialized():
        dist.barrier()
    t0 = time.perf_counter()
    fn()
    dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
    return float(dt)


def _sum_over_ranks(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t)
    return float(t)


def unique_rows(
    data: Interactions, num_items: int, batch: int, rank: int, world: int
) -> dict[str, int]:
    """Rows the transfer runs on per table, over this rank's batches of ``train_epoch``."""
    neg = sample_negatives(data.user_id, data.item_id, num_items, SEED)
    total = {USER_TABLE: 0, ITEM_TABLE: 0}
    for b in iterate_batches(data.user_id, data.item_id, neg, batch, seed=SEED, rank=rank,
                             world_size=world):
        f = b.features.to_dict()
        total[USER_TABLE] += len(torch.unique(f["user_id"].values()))
        total[ITEM_TABLE] += len(torch.unique(torch.cat([f["item_id"].values(),
                                                         f["neg_item_id"].values()])))
    return total


def transfer_alone(model: RetrainModel, rows: dict[str, int], steps: int, dim: int):
    """Step 1's transfer work without the rest of the step: ``steps`` times, per table, the
    forward on that table's mean unique rows per step with Θ constant, and the backward to
    Ŵ_t's rows, on fixed random rows (no lookup, no loss, no optimizer, no communication).
    """
    nets = model.embedding.transfers
    g = torch.Generator().manual_seed(2)
    inputs = {name: (0.1 * torch.randn(round(n / steps), dim, generator=g),
                     (0.1 * torch.randn(round(n / steps), dim, generator=g)).requires_grad_())
              for name, n in rows.items()}

    def run() -> None:
        for _ in range(steps):
            outs = []
            for name, (prev, new) in inputs.items():
                net = nets[name]
                outs.append(net(prev, new, tuple(p.detach() for p in net.params())))
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            for _, new in inputs.values():
                new.grad = None

    return run, sum(len(new) for _, new in inputs.values()) * steps


def lookup_pass(model: RetrainModel, data: Interactions, num_items: int, batch: int):
    """The forward of ``model`` over ``train_epoch``'s batches of ``data``, without grad; the
    batches are built beforehand, so only the lookup and the dot products are timed."""
    neg = sample_negatives(data.user_id, data.item_id, num_items, SEED)
    features = [b.features for b in iterate_batches(
        data.user_id, data.item_id, neg, batch, seed=SEED, rank=model.rank,
        world_size=model.world_size)]

    @torch.no_grad()
    def run() -> None:
        for f in features:
            model.dmp(f)

    return run


def bench_rank(cfg: dict) -> dict:
    """One rank's part; returns plain Python values."""
    rank = rank_world()[0]
    world = dist.get_world_size() if dist.is_initialized() else 1
    users, items, dim, steps = cfg["users"], cfg["items"], cfg["dim"], cfg["steps"]
    torch.manual_seed(0)
    data = make_interactions(steps * cfg["batch"] * world, users, items)
    g = torch.Generator().manual_seed(1)
    full = {USER_TABLE: 0.1 * torch.randn(users, dim, generator=g),
            ITEM_TABLE: 0.1 * torch.randn(items, dim, generator=g)}
    rcfg = RetrainConfig(dim=dim, batch_size=cfg["batch"] * world,
                         transfer_batch_size=cfg["batch"] * world, sharding=cfg["sharding"])
    t0 = time.perf_counter()
    sml = RetrainModel(users, items, rcfg, transfer=True)
    mf = RetrainModel(users, items, rcfg, transfer=False)
    build_s = time.perf_counter() - t0
    sml.load_tables(full)
    mf.load_tables(full)
    per_table = unique_rows(data, items, cfg["batch"], rank, world)
    rows = sum(per_table.values())
    alone, alone_rows = transfer_alone(sml, per_table, steps, dim)
    lookup = lookup_pass(mf, data, items, cfg["batch"])

    def materialize() -> float:
        sml.load_tables(full)  # untimed: every repeat transfers the same tables
        return _slowest(sml.materialize)

    runs = {
        "step1": lambda: _slowest(lambda: sml.train_epoch(data, items, SEED, "tables")),
        "step2": lambda: _slowest(lambda: sml.train_epoch(data, items, SEED, "transfer")),
        "finetune": lambda: _slowest(lambda: mf.train_epoch(data, items, SEED, "tables")),
        "lookup": lambda: _slowest(lookup),
        "materialize": materialize,
        "transfer_alone": lambda: _slowest(alone),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    # Each timed run is paired with the mean of the mm rates sampled right before and after
    # it (summed over ranks): on a shared machine the rate drifts between runs.
    beside: dict[str, list[float]] = {k: [] for k in runs}
    mm: list[float] = []

    def sample_mm() -> float:
        if dist.is_initialized():
            dist.barrier()
        mm.append(mm_gflops(cfg["mm_size"]))
        return _sum_over_ranks(mm[-1])

    before = sample_mm()
    for _ in range(cfg["repeats"]):
        for k, fn in runs.items():
            times[k].append(fn())
            after = sample_mm()
            beside[k].append((before + after) / 2)
            before = after
    out = {k: statistics.median(v) for k, v in times.items()}
    out["runs"] = {k: list(zip(times[k], beside[k], strict=True)) for k in runs}
    out["mm_gflops"] = _sum_over_ranks(statistics.median(mm))
    out["mm_min_max"] = [_sum_over_ranks(min(mm)), _sum_over_ranks(max(mm))]
    out["unique_rows"] = _sum_over_ranks(rows)
    out["alone_rows"] = _sum_over_ranks(alone_rows)
    out["build_s"] = build_s
    if cfg["profile"]:  # every rank runs the epoch (it has collectives); rank 0 reports
        table = profile_step1(sml, data, items, cfg["profile_rows"])
        if rank == 0:
            out["profile"] = table
    # ru_maxrss is in KiB on Linux.
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def profile_step1(model: RetrainModel, data: Interactions, items: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.train_epoch(data, items, SEED, "tables")
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def summarise(r: dict, ranks: int, a, flop_per_row: int, factors: dict) -> dict:
    examples = a.steps * a.batch * ranks
    res = {f"{k}_examples_per_s": examples / r[k] for k in STEPS}
    res["materialize_rows_per_s"] = (a.users + a.items) / r["materialize"]
    flops = {k: r["unique_rows"] * flop_per_row * factors[k] for k in ("step1", "step2")}
    flops["materialize"] = (a.users + a.items) * flop_per_row

    def efficiency(k: str) -> float:
        return statistics.median(flops[k] / t / 1e9 / mm for t, mm in r["runs"][k])

    for k in ("step1", "step2"):
        res[f"{k}_transfer_gflops"] = flops[k] / r[k] / 1e9
        eff_key = "transfer_efficiency" if k == "step1" else "step2_transfer_efficiency"
        res[eff_key] = efficiency(k)
    res["materialize_transfer_efficiency"] = efficiency("materialize")
    flops["transfer_alone"] = r["alone_rows"] * flop_per_row * factors["step1"]
    res["transfer_alone_efficiency"] = efficiency("transfer_alone")
    # What step 1 would reach if it cost no more than its transfer (as fast as measured alone,
    # or as fast as the mm rate) plus a plain MF fine-tune step on the same batches, repeat by
    # repeat; the fine-tune step is TorchRec's sharded lookup, fused optimizer and collectives,
    # which an SML step does at least once too.
    res["step1_efficiency_bound"] = statistics.median(
        flops["step1"] / (t * r["unique_rows"] / r["alone_rows"] + ft) / 1e9 / ((m1 + m2) / 2)
        for (t, m1), (ft, m2) in zip(r["runs"]["transfer_alone"], r["runs"]["finetune"],
                                     strict=True))
    res["step1_efficiency_ceiling"] = statistics.median(
        1 / (1 + ft * m * 1e9 / flops["step1"]) for ft, m in r["runs"]["finetune"])
    res["step1_vs_finetune"] = r["finetune"] / r["step1"]  # step 1's speed as a fraction
    per_step = 1e3 / a.steps
    res["ms_per_step"] = {k: r[k] * per_step for k in ("step1", "finetune", "lookup")}
    # Step 1 less its transfer work (timed alone, scaled to step 1's rows), against a fine-tune
    # step plus one lookup; repeat by repeat, so both sides come from the same moment.
    scale = r["unique_rows"] / r["alone_rows"]
    outside = [s1 - ta * scale for (s1, _), (ta, _) in
               zip(r["runs"]["step1"], r["runs"]["transfer_alone"], strict=True)]
    budget = [ft + lk for (ft, _), (lk, _) in
              zip(r["runs"]["finetune"], r["runs"]["lookup"], strict=True)]
    res["step1_outside_transfer_ms"] = statistics.median(outside) * per_step
    res["outside_transfer_budget_ms"] = statistics.median(budget) * per_step
    res["outside_over_budget"] = statistics.median(o / b for o, b in zip(outside, budget,
                                                                         strict=True))
    res["mm_gflops"] = r["mm_gflops"]
    res["mm_gflops_min_max"] = r["mm_min_max"]
    res["unique_rows_per_step"] = r["unique_rows"] / (a.steps * ranks)  # per rank
    res["threads_per_rank"] = max(1, a.threads // ranks)
    res["seconds"] = {k: r[k] for k in TIMED}
    # [seconds, mm GFLOP/s beside it] of every timed run: what the efficiencies are made of
    res["timed_runs"] = {k: [list(x) for x in r["runs"][k]] for k in TIMED}
    res["model_build_s"] = r["build_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads in total; each of N ranks gets threads // N")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024, help="examples per rank per step")
    p.add_argument("--steps", type=int, default=8, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--mm-size", type=int, default=2048)
    p.add_argument("--sharding", default="row_wise",
                   choices=["row_wise", "table_wise", "column_wise"])
    p.add_argument("--profile", action="store_true",
                   help="print a torch.profiler table of step 1 on rank 0 of each run")
    p.add_argument("--profile-rows", type=int, default=25)
    a = p.parse_args(argv)
    if a.smoke:
        a.users, a.items, a.dim, a.batch, a.steps, a.repeats, a.mm_size = (
            400, 300, 16, 64, 2, 2, 256)
    tcfg = TransferConfig(n1=RetrainConfig.transfer_n1, n2=RetrainConfig.transfer_n2,
                          hidden=RetrainConfig.transfer_hidden)
    flop_per_row = transfer_flops_per_row(a.dim, tcfg)
    factors = flop_factors(a.dim, tcfg)
    cfg = {"users": a.users, "items": a.items, "dim": a.dim, "batch": a.batch,
           "steps": a.steps, "repeats": a.repeats, "mm_size": a.mm_size,
           "sharding": a.sharding, "profile": a.profile, "profile_rows": a.profile_rows}
    results: dict[str, dict] = {}
    for n in a.ranks:
        per_rank = run_local(bench_rank, n, (cfg,), timeout_s=900,
                             threads=max(1, a.threads // n))
        r = per_rank[0]  # times, mm rates and row counts are already reduced over ranks
        if "profile" in r:
            print(f"--- torch.profiler, step 1, {n} rank(s), rank 0 ---\n{r['profile']}")
        res = summarise(r, n, a, flop_per_row, factors)
        res["peak_rss_mb"] = max(x["peak_rss_mb"] for x in per_rank)
        res["peak_rss_mb_per_rank"] = [x["peak_rss_mb"] for x in per_rank]
        results[str(n)] = res

    print(f"SML steps on {a.sharding} sharded tables: {a.users} users, {a.items} items, "
          f"d={a.dim}, batch {a.batch}/rank, {a.steps} steps x {a.repeats} repeats (medians), "
          f"{a.threads} thread(s) in total = threads // ranks per rank, gloo on CPU; "
          f"transfer n1={tcfg.n1} n2={tcfg.n2} hidden={tcfg.hidden}: {flop_per_row:,} "
          f"FLOP/row fwd, x{factors['step1']:.0f} step 1, x{factors['step2']:.3f} step 2")
    print(f"{'ranks':>5}{'thr/rk':>7}{'step1 ex/s':>12}{'step2 ex/s':>12}{'finetune ex/s':>15}"
          f"{'s1/ft':>7}{'mater. rows/s':>15}{'uniq rows':>11}{'s1 GF/s':>9}{'mm GF/s':>9}"
          f"{'s1 eff':>8}{'s2 eff':>8}{'mat eff':>8}{'RSS MB':>8}"
          f"{'alone eff':>10}{'s1 bound':>9}{'s1 ceil':>8}")
    for n, r in results.items():
        print(f"{n:>5}{r['threads_per_rank']:>7}{r['step1_examples_per_s']:>12,.0f}"
              f"{r['step2_examples_per_s']:>12,.0f}{r['finetune_examples_per_s']:>15,.0f}"
              f"{r['step1_vs_finetune']:>7.2f}{r['materialize_rows_per_s']:>15,.0f}"
              f"{r['unique_rows_per_step']:>11,.0f}{r['step1_transfer_gflops']:>9.1f}"
              f"{r['mm_gflops']:>9.1f}{r['transfer_efficiency']:>8.2f}"
              f"{r['step2_transfer_efficiency']:>8.2f}"
              f"{r['materialize_transfer_efficiency']:>8.2f}{r['peak_rss_mb']:>8.0f}"
              f"{r['transfer_alone_efficiency']:>10.2f}{r['step1_efficiency_bound']:>9.2f}"
              f"{r['step1_efficiency_ceiling']:>8.2f}")
    print(f"{'ranks':>5}{'step1 ms':>10}{'finetune ms':>13}{'lookup ms':>11}"
          f"{'s1 outside transfer ms':>24}{'budget ms':>11}{'outside/budget':>16}")
    for n, r in results.items():
        ms = r["ms_per_step"]
        print(f"{n:>5}{ms['step1']:>10.1f}{ms['finetune']:>13.1f}{ms['lookup']:>11.1f}"
              f"{r['step1_outside_transfer_ms']:>24.1f}{r['outside_transfer_budget_ms']:>11.1f}"
              f"{r['outside_over_budget']:>16.2f}")
    print("ex/s and rows/s are totals over ranks; s1/ft = step 1 speed / fine-tune speed; "
          "uniq rows = transfer rows per step per rank; eff = transfer GFLOP/s / mm GFLOP/s "
          "(both summed over ranks; target for s1 >= 0.5); alone eff = step 1's transfer work "
          "alone (no lookup, loss, optimizer or collectives); s1 bound / s1 ceil = the s1 eff of "
          "a step costing a fine-tune step plus that transfer as fast as alone / as the mm rate. "
          "Per step: s1 outside transfer = step 1 less its transfer work timed alone; budget = "
          "a fine-tune step plus one lookup (target: outside/budget <= 1 on 2 ranks).")
    print(json.dumps({
        "benchmark": "sml_step", "smoke": a.smoke, "threads": a.threads,
        "sharding": a.sharding, "users": a.users, "items": a.items, "dim": a.dim,
        "batch_per_rank": a.batch, "steps": a.steps, "repeats": a.repeats,
        "mm_size": a.mm_size, "flop_per_row": flop_per_row, "flop_factors": factors,
        "torch": torch.__version__, "ranks": results,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
