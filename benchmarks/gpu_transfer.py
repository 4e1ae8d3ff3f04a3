"""SML transfer f_Θ on one GPU: fused (Triton conv stage + cuBLAS FC) vs the card's GEMM rates.

Question: how close does materialising W_t = f_Θ(W_{t-1}, Ŵ_t) get to the same card's dense
GEMM rate? Measures, in one run and on one device:

* ``torch.mm`` GFLOP/s at ``--mm-size``^3 in fp32 (TF32 off), TF32 and bf16;
* the transfer (no_grad, chunked) as naive (reference layers), fused-torch (the CPU fused
  path's torch ops on the GPU), fused-triton fp32, fused-triton with TF32 GEMMs and
  fused-triton bf16 — each with rows/s, GFLOP/s, ratios to the matching GEMM rate, and the
  max abs error relative to max|output| against an fp64 reference on a sample of rows.

Writes one JSON object to ``--out`` (and prints it as one line, after a human table). On a
machine without CUDA it prints/writes ``{"skipped": "no CUDA"}`` and exits 0. Plain torch
(Triton is used when importable; without it the fused-triton rows fall back to torch).

    python benchmarks/gpu_transfer.py --out gpu_transfer.json
    python benchmarks/gpu_transfer.py --smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from sml_torchrec.modules import transfer_triton
from sml_torchrec.modules.transfer import (
    TransferConfig,
    TransferNet,
    materialize,
    transfer_flops_per_row,
)


def _cuda_time(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up, by CUDA events."""
    fn()
    if not torch.cuda.is_available():  # --device cpu: checks the script, not the speed
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def mm_rates(n: int, repeats: int, dev: torch.device) -> dict[str, float]:
    out = {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        out[name] = 2 * n**3 / _cuda_time(lambda a=a, b=b: torch.mm(a, b), repeats) / 1e9
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def run(args) -> dict:
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = TransferConfig(chunk_rows=args.chunk_rows)
    net = TransferNet(args.dim, cfg).to(dev)
    g = torch.Generator(device=dev).manual_seed(1)
    prev = torch.randn(args.rows, args.dim, device=dev, generator=g)
    new = torch.randn(args.rows, args.dim, device=dev, generator=g)
    out = torch.empty_like(new)
    p = tuple(t.detach() for t in net.params())
    step = args.chunk_rows
    sample = slice(0, min(args.rows, 4096))
    with torch.no_grad():
        ref = net.double().reference(prev[sample].double(), new[sample].double())
        net.float()
    p = tuple(t.detach() for t in net.params())

    def naive() -> None:
        with torch.no_grad():
            for i in range(0, args.rows, step):
                out[i : i + step] = net.reference(prev[i : i + step], new[i : i + step])

    def fused_torch() -> None:
        materialize(net, prev, new, out, chunk_rows=step, backend="eager")

    def fused_triton(dtype=None):
        def fn() -> None:
            for i in range(0, args.rows, step):
                j = min(i + step, args.rows)
                transfer_triton.transfer_rows_into(
                    prev[i:j], new[i:j], p, cfg.eps, cfg.gelu, out[i:j], dtype
                )
        return fn

    paths = {  # name: (fn, allow_tf32, GEMM rate it is compared with)
        "naive": (naive, False, "fp32"),
        "fused_torch": (fused_torch, False, "fp32"),
        "fused_triton_fp32": (fused_triton(), False, "fp32"),
        "fused_triton_tf32": (fused_triton(), True, "tf32"),
        "fused_triton_bf16": (fused_triton(torch.bfloat16), False, "bf16"),
    }
    mm = mm_rates(args.mm_size, args.repeats, dev)
    flops = transfer_flops_per_row(args.dim, cfg) * args.rows
    res = {}
    for name, (fn, tf32, rate) in paths.items():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        sec = _cuda_time(fn, args.repeats)
        err = ((out[sample].double() - ref).abs().max() / ref.abs().max()).item()
        res[name] = {"rows_per_s": args.rows / sec, "gflops": flops / sec / 1e9,
                     "ratio_to_mm": flops / sec / 1e9 / mm[rate], "compared_with_mm": rate,
                     "max_rel_err": err}
    torch.backends.cuda.matmul.allow_tf32 = False
    base = res["naive"]["gflops"]
    for r in res.values():
        r["speedup_vs_naive"] = r["gflops"] / base
    res["train"] = train_rates(net, prev, new, args, mm)
    return {
        "bench": "gpu_transfer",
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (script check only)",
        "torch": torch.__version__, "triton": transfer_triton.available(),
        "rows": args.rows, "dim": args.dim, "chunk_rows": args.chunk_rows,
        "flop_per_row": transfer_flops_per_row(args.dim, cfg), "repeats": args.repeats,
        "mm_size": args.mm_size, "mm_gflops": mm, **res,
    }


def train_rates(net: TransferNet, prev, new, args, mm: dict[str, float]) -> dict:
    """Forward + backward (gradients of Ŵ and of Θ) on one batch of ``chunk_rows`` rows.

    Counted as 3x the forward FLOPs (the backward is two GEMMs per forward GEMM).
    """
    rows = min(args.chunk_rows, args.rows)
    p, n = prev[:rows], new[:rows].clone().requires_grad_(True)
    flops = 3 * transfer_flops_per_row(args.dim, net.config) * rows
    out = {}
    for impl in ("reference", "fused"):
        net.config.impl = impl
        for name, tf32 in (("fp32", False), ("tf32", True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32

            def step() -> None:
                net.zero_grad(set_to_none=True)
                n.grad = None
                net(p, n).sum().backward()

            sec = _cuda_time(step, args.repeats)
            out[f"{impl}_{name}"] = {"rows_per_s": rows / sec, "gflops": flops / sec / 1e9,
                                     "ratio_to_mm": flops / sec / 1e9 / mm[name]}
    torch.backends.cuda.matmul.allow_tf32 = False
    net.config.impl = "fused"
    return out


def table(res: dict) -> str:
    mm = res["mm_gflops"]
    lines = [
        f"SML transfer on {res['device']}: d={res['dim']}, rows={res['rows']}, "
        f"chunk_rows={res['chunk_rows']}; mm {res['mm_size']}^3 GFLOP/s: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in mm.items()),
        f"{'path':<20}{'rows/s':>14}{'GFLOP/s':>10}{'/mm':>8}{'(mm)':>6}{'vs naive':>10}"
        f"{'max rel err':>13}",
    ]
    for name, r in res.items():
        if isinstance(r, dict) and "rows_per_s" in r:
            lines.append(
                f"{name:<20}{r['rows_per_s']:>14,.0f}{r['gflops']:>10.1f}{r['ratio_to_mm']:>8.2f}"
                f"{r['compared_with_mm']:>6}{r['speedup_vs_naive']:>9.2f}x{r['max_rel_err']:>13.1e}"
            )
    lines.append(f"training (forward + backward, {res['chunk_rows']} rows a step):")
    for name, r in res["train"].items():
        lines.append(f"  {name:<18}{r['rows_per_s']:>14,.0f}{r['gflops']:>10.1f}"
                     f"{r['ratio_to_mm']:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1 << 21)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--chunk-rows", type=int, default=1 << 16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--mm-size", type=int, default=8192)
    p.add_argument("--out", help="write the JSON object here too")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check")
    p.add_argument("--device", default="cuda",
                   help="'cpu' runs the script's logic without a GPU (numbers meaningless)")
    a = p.parse_args(argv)
    if a.smoke:
        a.rows, a.dim, a.chunk_rows, a.repeats, a.mm_size = 5000, 16, 2048, 2, 512
    if a.device == "cuda" and not torch.cuda.is_available():
        res = {"bench": "gpu_transfer", "skipped": "no CUDA", "torch": torch.__version__}
        print("gpu_transfer: skipped, no CUDA device", file=sys.stderr)
    else:
        res = run(a)
        print(table(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
