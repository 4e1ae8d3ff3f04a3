"""SML transfer f_Θ throughput on CPU: naive (reference) vs fused vs compiled, against torch.mm.

Question: how close does the transfer get to the machine's dense GEMM rate? Almost all of its
FLOPs are the two FC GEMMs, so a 2048^3 fp32 ``torch.mm`` measured in the same run is the
yardstick (reported as ``ratio_to_mm``). Two modes:

* materialise: ``materialize(net, prev, new, out)`` under no_grad, chunked (W_t for serving);
* train: forward + backward of ``net(prev, new)`` with gradients to ``new`` and Θ. Its FLOPs
  are counted as 3x the forward's (backward ≈ 2x forward), an approximation.

FLOPs per row come from the config (2 per multiply-add of conv1, conv2, fc1, fc2; biases and
activations not counted). Rates are medians over ``--repeats`` timed runs after one warm-up
(the warm-up also compiles the "compiled" path; its compile time is reported separately);
``ratio_to_mm`` is the median over those runs of each run's rate / the mm rate sampled right
before and after it.
Prints a human table and one JSON line.

    python benchmarks/transfer_throughput.py              # d=64, 32768 rows, 2048-row chunks
    python benchmarks/transfer_throughput.py --smoke      # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sml_torchrec.modules.transfer import (
    TransferConfig,
    TransferNet,
    materialize,
    transfer_flops_per_row,
)

PATHS = {"naive": "reference", "fused": "fused", "compiled": "compiled"}


class MatmulYardstick:
    """The same-run fp32 ``torch.mm`` of two ``n x n`` matrices, timed on demand."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(self.a, self.b)
        self.samples: list[float] = []

    def gflops(self) -> float:
        t = time.perf_counter()
        torch.mm(self.a, self.b)
        rate = 2 * self.n**3 / (time.perf_counter() - t) / 1e9
        self.samples.append(rate)
        return rate


def _time(fn, repeats: int, mm: MatmulYardstick) -> tuple[float, list[float], list[float]]:
    """(first call seconds, seconds of ``repeats`` later calls, the mm rate beside each).

    Each timed call sits between two mm samples and is paired with their mean: on a shared
    machine the rate drifts, and a ratio of neighbours is steadier than a ratio of medians.
    """
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times, rates = [], []
    before = mm.gflops()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        after = mm.gflops()
        rates.append((before + after) / 2)
        before = after
    return first, times, rates


def measure(net: TransferNet, args, impl: str, mode: str, mm: MatmulYardstick) -> dict:
    g = torch.Generator().manual_seed(1)
    prev = torch.randn(args.rows, args.dim, generator=g)
    new = torch.randn(args.rows, args.dim, generator=g)
    net.config.impl = impl
    if mode == "materialize":
        out = torch.empty_like(new)

        def step() -> None:
            materialize(net, prev, new, out, chunk_rows=args.chunk_rows)

        flop_factor = 1
    else:
        new.requires_grad_(True)
        grad_out = torch.randn(args.rows, args.dim, generator=g)

        def step() -> None:
            net.zero_grad(set_to_none=True)
            new.grad = None
            net(prev, new).backward(grad_out)

        flop_factor = 3
    try:
        first, times, rates = _time(step, args.repeats, mm)
    except Exception as e:  # e.g. inductor cannot compile here: report, don't crash
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    flops = flop_factor * transfer_flops_per_row(args.dim, net.config) * args.rows
    sec = statistics.median(times)
    return {"rows_per_s": args.rows / sec, "gflops": flops / sec / 1e9,
            "ratio_to_mm": statistics.median(
                flops / t / 1e9 / r for t, r in zip(times, rates, strict=True)),
            "seconds": sec, "first_call_seconds": first}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TransferConfig(chunk_rows=args.chunk_rows)
    net = TransferNet(args.dim, cfg)
    # The mm rate is sampled between the timed calls of every path (the machine may be shared):
    # each call's rate is divided by its neighbours' mm rate and the median of those ratios is
    # ``ratio_to_mm``; the median of all mm samples and their spread are reported.
    mm = MatmulYardstick(args.mm_size)
    sections = {}
    for mode in ("materialize", "train"):
        res = {}
        for name, impl in PATHS.items():
            if name == "compiled" and args.skip_compiled:
                res[name] = {"skipped": "--skip-compiled"}
                continue
            res[name] = measure(net, args, impl, mode, mm)
        sections[mode] = res
    for res in sections.values():
        base = res["naive"].get("gflops")
        for r in res.values():
            if "gflops" in r:
                r["speedup_vs_naive"] = r["gflops"] / base if base else None
    out = {
        "bench": "transfer_throughput",
        "threads": torch.get_num_threads(),
        "rows": args.rows,
        "dim": args.dim,
        "chunk_rows": args.chunk_rows,
        "n1": cfg.n1, "n2": cfg.n2, "hidden": cfg.hidden, "gelu": cfg.gelu,
        "flop_per_row": transfer_flops_per_row(args.dim, cfg),
        "mm_size": args.mm_size,
        "mm_gflops": statistics.median(mm.samples),
        "mm_gflops_min_max": [min(mm.samples), max(mm.samples)],
        "repeats": args.repeats,
        "torch": torch.__version__,
    }
    # The materialise mode is the headline: its paths are top-level keys.
    out.update(sections["materialize"])
    out["train"] = sections["train"]
    return out


def table(res: dict) -> str:
    lines = [
        f"SML transfer, d={res['dim']}, rows={res['rows']}, chunk_rows={res['chunk_rows']}, "
        f"threads={res['threads']}, {res['flop_per_row']:,} FLOP/row; "
        f"torch.mm {res['mm_size']}^3 fp32: {res['mm_gflops']:.1f} GFLOP/s (median of the "
        f"samples between timed calls, range {res['mm_gflops_min_max'][0]:.1f}-"
        f"{res['mm_gflops_min_max'][1]:.1f})",
        f"{'mode':<12}{'path':<10}{'rows/s':>12}{'GFLOP/s':>10}{'/mm':>8}{'vs naive':>10}"
        f"{'1st call s':>12}",
    ]
    for mode, sec in (("materialize", res), ("train", res["train"])):
        for name in PATHS:
            r = sec[name]
            if "gflops" not in r:
                lines.append(f"{mode:<12}{name:<10}  {r}")
                continue
            lines.append(
                f"{mode:<12}{name:<10}{r['rows_per_s']:>12,.0f}{r['gflops']:>10.1f}"
                f"{r['ratio_to_mm']:>8.2f}{r['speedup_vs_naive']:>9.2f}x"
                f"{r['first_call_seconds']:>12.2f}"
            )
    lines.append("train GFLOP/s counts 3x the forward FLOPs (backward ~ 2x forward).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=32768)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--chunk-rows", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--mm-size", type=int, default=2048)
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check")
    p.add_argument("--skip-compiled", action="store_true",
                   help="leave out the torch.compile path (its compile takes seconds)")
    a = p.parse_args(argv)
    if a.smoke:
        a.rows, a.dim, a.chunk_rows, a.repeats, a.mm_size = 300, 16, 128, 2, 256
    res = run(a)
    print(table(res))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
