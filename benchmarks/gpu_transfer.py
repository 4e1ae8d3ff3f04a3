"""SML transfer f_Θ on one GPU: the fused Triton kernels vs the card's GEMM rates.

Question: how close do materialising W_t = f_Θ(W_{t-1}, Ŵ_t) and training f_Θ get to the same
card's dense GEMM rate? Measures, in one run and on one device:

* ``torch.mm`` GFLOP/s at ``--mm-size``^3 in fp32 (TF32 off), TF32 and bf16;
* materialise (no_grad, chunked): ``naive`` (the paper's layers), ``fused_torch`` (the CPU
  fused path's torch ops on the GPU), ``staged_*`` (the Triton conv-stage kernel + cuBLAS GEMMs,
  fc1's output through device memory: the path before the fused MLP kernel) and ``kernel_*``
  (the conv-stage kernel + the fused MLP kernel, ``TransferConfig.precision`` = fp32, tf32,
  bf16), ``one_kernel_*`` (the two in one launch) and ``kernel_tf32_exact`` (TF32 with exact
  activations instead of the tanh form), each with rows/s, GFLOP/s, the ratio to the matching
  GEMM rate and the max error relative to max|output| against an fp64 reference on a sample of
  rows;
* training (forward + backward on ``--chunk-rows`` rows): the paper's layers, the eager fused
  autograd path, and the Triton forward + backward per precision, with the error of the output
  and of every gradient against fp64;
* ``stages``: each step of the Triton path alone per precision (conv stage, fused MLP, and
  training's: the fused MLP keeping u, the MLP backward, the two cuBLAS GEMMs, the conv-stage
  backward), in ns a row and in SM cycles a row (ns x SMs x the SM clock), to set beside the
  static floors of ``benchmarks/triton_kernels.py`` and to tell which step limits a path;
  ``train_steps``: training's steps summed beside the whole step, per precision;
* ``done_when``: the thresholds a GPU run is judged by (ratios and errors), each with its value.

Writes one JSON object to ``--out`` (and prints it as one line, after a human table). On a
machine without CUDA it prints/writes ``{"skipped": "no CUDA"}`` and exits 0; ``--device cpu``
runs the script's logic on the CPU instead (numbers meaningless).

    python benchmarks/gpu_transfer.py --out gpu_transfer.json
    python benchmarks/gpu_transfer.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from sml_torchrec.modules import transfer_triton
from sml_torchrec.modules.transfer import (
    PRECISIONS,
    TransferConfig,
    TransferNet,
    materialize,
    transfer_flops_per_row,
)

# precision -> the torch.mm rate it is compared with
MM_OF = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16"}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, repeats: int, dev: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up (CUDA events on a GPU)."""
    fn()
    _sync(dev)
    times = []
    for _ in range(repeats):
        if dev.type != "cuda":  # --device cpu: checks the script, not the speed
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _progress(section: str, name: str, r: dict) -> None:
    """One line per measured path as it finishes (a run cut short still shows what it got)."""
    text = r["error"][:200] if "error" in r else (
        f"{r['rows_per_s']:,.0f} rows/s, {r['ratio_to_mm']:.2f} of {r['compared_with_mm']} mm, "
        f"max rel err {r['max_rel_err']:.1e}")
    print(f"[{section}] {name}: {text}", file=sys.stderr, flush=True)


def _measure(section: str, name: str, fn, args, dev, rows: int, flops: float, mm_gflops: float,
             mm_name: str, error) -> dict:
    """Time ``fn``: its rates, its ratio to the matching mm rate and ``error()``, or the error it
    raised (one failing path must not lose the others)."""
    try:
        sec = _time(fn, args.repeats, dev)
    except Exception as e:  # noqa: BLE001 - reported in the result instead
        r = {"error": repr(e)[:1000]}
    else:
        r = {"rows_per_s": rows / sec, "gflops": flops / sec / 1e9,
             "ratio_to_mm": flops / sec / 1e9 / mm_gflops, "compared_with_mm": mm_name,
             "max_rel_err": error()}
    _progress(section, name, r)
    return r


def _one_kernel(fn):
    """``fn`` with the conv stage inside the fused MLP kernel (``transfer_triton.ONE_KERNEL``)."""
    def run() -> None:
        transfer_triton.ONE_KERNEL = True
        try:
            fn()
        finally:
            transfer_triton.ONE_KERNEL = False
    return run


def _exact_tf32(fn):
    """``fn`` with TF32's activations exact (the kernels' ``FAST`` = 0, as fp32's) instead of
    the one-MUFU tanh form: what TF32 would run if the tanh form missed its error target."""
    def run() -> None:
        fast = transfer_triton._fast
        transfer_triton._fast = lambda precision: 0 if precision == "tf32" else fast(precision)
        try:
            fn()
        finally:
            transfer_triton._fast = fast
    return run


def _set_matmul(precision: str) -> None:
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")


def mm_rates(n: int, repeats: int, dev: torch.device) -> dict[str, float]:
    out = {}
    for name in PRECISIONS:
        _set_matmul(name)
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        out[name] = 2 * n**3 / _time(lambda a=a, b=b: torch.mm(a, b), repeats, dev) / 1e9
    _set_matmul("fp32")
    return out


def _staged(prev, new, p, cfg: TransferConfig, out, precision: str) -> None:
    """The path before the fused MLP: conv-stage kernel, then cuBLAS GEMMs through memory."""
    f1, f2, w1, b1, w2, b2 = p
    cd = torch.bfloat16 if precision == "bf16" else torch.float32
    h2 = transfer_triton.conv_stage(prev, new, f1, f2, cfg.eps, cfg.gelu, precision)
    z = torch.addmm(b1.to(cd), h2, w1.t().to(cd))
    z = torch.nn.functional.silu(z.mul_(1.702)).div_(1.702)  # the authors' GELU, in place
    out.copy_(torch.addmm(b2.to(cd), z, w2.t().to(cd)))


def materialise_rates(net: TransferNet, prev, new, args, mm: dict, dev) -> dict:
    cfg, rows, step = net.config, args.rows, args.chunk_rows
    out = torch.empty_like(new)
    sample = slice(0, min(rows, 4096))
    with torch.no_grad():
        ref = net.double().reference(prev[sample].double(), new[sample].double())
        net.float()
    p = tuple(t.detach() for t in net.params())

    def chunks(fn):
        def run() -> None:
            for i in range(0, rows, step):
                j = min(i + step, rows)
                fn(prev[i:j], new[i:j], out[i:j])
        return run

    def naive(a, b, o) -> None:
        with torch.no_grad():
            o.copy_(net.reference(a, b))

    paths = {  # name: (fn, precision of its GEMMs)
        "naive": (chunks(naive), "fp32"),
        "fused_torch": (lambda: materialize(net, prev, new, out, step, backend="eager"), "fp32"),
    }
    for prec in PRECISIONS:
        paths[f"staged_{prec}"] = (
            chunks(lambda a, b, o, prec=prec: _staged(a, b, p, cfg, o, prec)), prec)
        kernel = chunks(lambda a, b, o, prec=prec: transfer_triton.transfer_rows_into(
            a, b, p, cfg.eps, cfg.gelu, o, prec))
        paths[f"kernel_{prec}"] = (kernel, prec)
        if prec != "fp32":
            paths[f"one_kernel_{prec}"] = (_one_kernel(kernel), prec)
        if prec == "tf32":
            paths["kernel_tf32_exact"] = (_exact_tf32(kernel), prec)
    flops = transfer_flops_per_row(args.dim, cfg) * rows
    res = {}
    for name, (fn, prec) in paths.items():
        _set_matmul(prec)  # the staged path's cuBLAS GEMMs follow torch's global setting
        res[name] = _measure(
            "materialise", name, fn, args, dev, rows, flops, mm[MM_OF[prec]], MM_OF[prec],
            lambda: ((out[sample].double() - ref).abs().max() / ref.abs().max()).item())
    _set_matmul("fp32")
    for r in res.values():
        if "gflops" in r:
            r["speedup_vs_naive"] = r["gflops"] / res["naive"]["gflops"]
    return res


def train_rates(net: TransferNet, prev, new, args, mm: dict, dev) -> dict:
    """Forward + backward (gradients of Ŵ and of Θ) on one batch of ``chunk_rows`` rows.

    Counted as 3x the forward FLOPs (the backward is two GEMMs per forward GEMM). Errors: max
    over the output and each gradient of max error / max|fp64 reference|, on that batch.
    """
    rows = min(args.chunk_rows, args.rows)
    p, n = prev[:rows], new[:rows].clone().requires_grad_(True)
    flops = 3 * transfer_flops_per_row(args.dim, net.config) * rows
    gen = torch.Generator(device=dev).manual_seed(2)
    weight = torch.randn(rows, args.dim, device=dev, generator=gen)
    ref_net = TransferNet(args.dim, net.config).to(dev)
    ref_net.load_state_dict(net.state_dict())
    ref_net.double()
    n64 = n.detach().double().requires_grad_(True)
    ref_out = ref_net.reference(p.double(), n64)
    (ref_out * weight.double()).sum().backward()
    ref = [ref_out.detach(), n64.grad, *(t.grad for t in ref_net.params())]
    out = {}
    for name, backend, prec in (("reference_fp32", "reference", "fp32"),
                                ("eager_fp32", "eager", "fp32"), ("eager_tf32", "eager", "tf32"),
                                *((f"kernel_{q}", "triton", q) for q in PRECISIONS),
                                *((f"one_kernel_{q}", "triton", q) for q in ("tf32", "bf16"))):
        net.config.precision = prec
        _set_matmul(prec)
        res = {}

        def step(res=res, backend=backend) -> None:
            net.zero_grad(set_to_none=True)
            n.grad = None
            res["out"] = net(p, n, backend=backend)
            (res["out"] * weight).sum().backward()

        if name.startswith("one_kernel"):
            step = _one_kernel(step)

        def error(res=res) -> float:
            got = [res["out"].detach(), n.grad, *(t.grad for t in net.params())]
            return max(((g.double() - r).abs().max() / r.abs().max()).item()
                       for g, r in zip(got, ref))

        out[name] = _measure("train", name, step, args, dev, rows, flops, mm[MM_OF[prec]],
                             MM_OF[prec], error)
    net.config.precision = "fp32"
    _set_matmul("fp32")
    return out


# The steps of one training step on the Triton path, in order (``stage_times`` times each).
TRAIN_STEPS = ("conv_stage", "mlp_save_u", "mlp_backward", "dw1_gemm", "dh2_gemm",
               "conv_backward")


def stage_times(net: TransferNet, prev, new, args, dev) -> dict:
    """Each step of the Triton path alone, per precision, over the rows in ``chunk_rows`` chunks
    (the backward steps on random upstream gradients): ns and SM cycles a row. The steps are
    materialise's (conv stage, fused MLP) and training's (:data:`TRAIN_STEPS`: the forward's
    MLP keeping u, the MLP backward, cuBLAS's dW_f = duᵀ H2 and dH2 = du W_f, the conv-stage
    backward)."""
    cfg, rows, step = net.config, args.rows, args.chunk_rows
    f1, f2, w1, b1, w2, b2 = (t.detach() for t in net.params())
    c = min(step, rows)
    gen = torch.Generator(device=dev).manual_seed(3)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 0
    khz = _sm_clock_khz(dev)
    out: dict = {"sms": sms, "sm_clock_mhz": khz / 1e3}
    for prec in PRECISIONS:
        cd = torch.bfloat16 if prec == "bf16" else torch.float32
        h2 = transfer_triton.conv_stage(prev[:c], new[:c], f1, f2, cfg.eps, cfg.gelu, prec)
        y = torch.empty(c, args.dim, device=dev)
        dh2 = torch.randn(h2.shape, device=dev, generator=gen).to(cd)
        dout = torch.randn(c, args.dim, device=dev, generator=gen).to(cd)
        u = torch.randn(c, w1.shape[0], device=dev, generator=gen).to(cd)
        w1c = w1.to(cd)
        steps = {
            "conv_stage": lambda a, b, prec=prec: transfer_triton.conv_stage(
                a, b, f1, f2, cfg.eps, cfg.gelu, prec),
            "mlp": lambda a, b, prec=prec, h2=h2, y=y: transfer_triton.mlp(
                h2[:len(a)], w1, b1, w2, b2, cfg.gelu, prec, y[:len(a)]),
            "mlp_save_u": lambda a, b, prec=prec, h2=h2, y=y: transfer_triton.mlp(
                h2[:len(a)], w1, b1, w2, b2, cfg.gelu, prec, y[:len(a)], save_u=True),
            "mlp_backward": lambda a, b, prec=prec, g=dout, u=u: transfer_triton.mlp_backward(
                g[:len(a)], w2, u[:len(a)], cfg.gelu, prec),
            "dw1_gemm": lambda a, b, prec=prec, u=u, h2=h2: _gemm(
                prec, u[:len(a)].t(), h2[:len(a)]),
            "dh2_gemm": lambda a, b, prec=prec, u=u, w=w1c: _gemm(prec, u[:len(a)], w),
            "conv_backward": lambda a, b, prec=prec, g=dh2: transfer_triton.conv_backward(
                a, b, f1, f2, g[:len(a)], cfg.eps, cfg.gelu, prec),
        }
        for name, fn in steps.items():
            def run(fn=fn) -> None:
                for i in range(0, rows, step):
                    fn(prev[i:i + step], new[i:i + step])
            try:
                ns = _time(run, args.repeats, dev) / rows * 1e9
            except Exception as e:  # noqa: BLE001 - reported in the result instead
                r = {"error": repr(e)[:1000]}
            else:
                r = {"ns_per_row": ns, "sm_cycles_per_row": ns * sms * khz / 1e6}
            out[f"{name}_{prec}"] = r
            text = r["error"][:200] if "error" in r else (
                f"{r['ns_per_row']:.3f} ns a row, {r['sm_cycles_per_row']:.1f} SM cycles a row")
            print(f"[stages] {name}_{prec}: {text}", file=sys.stderr, flush=True)
    return out


def _sm_clock_khz(dev: torch.device) -> int:
    """The SM clock's top rate in kHz (0 off a GPU): torch's device property, else the driver's
    attribute as Triton reads it. CUDA 13 dropped ``cudaDeviceProp.clockRate``, and a torch
    built against it may report 0 or lack the field."""
    if dev.type != "cuda":
        return 0
    khz = getattr(torch.cuda.get_device_properties(dev), "clock_rate", 0)
    if not khz and transfer_triton.available():
        from triton.runtime import driver

        index = dev.index if dev.index is not None else torch.cuda.current_device()
        khz = driver.active.utils.get_device_properties(index).get("sm_clock_rate", 0)
    return khz


def _gemm(precision: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` on cuBLAS as the training backward runs it in ``precision``."""
    _set_matmul(precision)
    try:
        return torch.mm(a, b)
    finally:
        _set_matmul("fp32")


def train_steps(res: dict) -> dict:
    """Per precision, training's steps timed alone (:data:`TRAIN_STEPS`) summed, beside the
    training step measured whole (``kernel_*``), both in ns a row: what the step spends
    outside its kernels (launch gaps, autograd, casts) is the difference."""
    out = {}
    for prec in PRECISIONS:
        steps = [res["stages"].get(f"{s}_{prec}", {}).get("ns_per_row", math.nan)
                 for s in TRAIN_STEPS]
        rate = res["train"].get(f"kernel_{prec}", {}).get("rows_per_s", math.nan)
        out[prec] = {"steps_ns_per_row": sum(steps), "step_ns_per_row": 1e9 / rate}
    return out


def done_when(res: dict) -> dict:
    """The targets a GPU run is judged by, each with the measured value, the path it came from
    (for materialise, the fastest design within the error bound: two kernels, one kernel, and for
    TF32 also exact activations) and whether it holds."""
    m, t = res, res["train"]

    def get(section: dict, path: str, field: str) -> float:
        return section.get(path, {}).get(field, math.nan)  # nan: failed ("error" says why)

    def fastest(section: dict, *paths: str, err: float = math.inf) -> str:
        """The fastest of ``paths`` within the error bound ``err`` (of all, if none is)."""
        within = [k for k in paths if get(section, k, "max_rel_err") <= err] or list(paths)
        ratio = [get(section, k, "ratio_to_mm") for k in within]
        return max(zip(ratio, within), key=lambda rk: -1.0 if math.isnan(rk[0]) else rk[0])[1]

    err = {"bf16": 1e-2, "tf32": 1e-3}  # materialise's error bounds
    mb = fastest(m, "kernel_bf16", "one_kernel_bf16", err=err["bf16"])
    mt = fastest(m, "kernel_tf32", "one_kernel_tf32", "kernel_tf32_exact", err=err["tf32"])
    low = fastest(t, "kernel_tf32", "one_kernel_tf32", "kernel_bf16", "one_kernel_bf16")
    checks = {
        "materialise bf16 >= 0.5 of bf16 mm": (m, mb, "ratio_to_mm", 0.5, ">="),
        "materialise bf16 error <= 1e-2": (m, mb, "max_rel_err", err["bf16"], "<="),
        "materialise tf32 >= 0.5 of tf32 mm": (m, mt, "ratio_to_mm", 0.5, ">="),
        "materialise tf32 error <= 1e-3": (m, mt, "max_rel_err", err["tf32"], "<="),
        "training fp32 >= 0.5 of fp32 mm": (t, "kernel_fp32", "ratio_to_mm", 0.5, ">="),
        f"training {low.split('_')[-1]} >= 0.3 of its mm": (t, low, "ratio_to_mm", 0.3, ">="),
    }
    out = {}
    for k, (section, path, field, lim, op) in checks.items():
        v = get(section, path, field)
        out[k] = {"value": v, "path": path, "holds": bool(v >= lim if op == ">=" else v <= lim)}
    return out


def run(args) -> dict:
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = TransferNet(args.dim, TransferConfig(chunk_rows=args.chunk_rows)).to(dev)
    g = torch.Generator(device=dev).manual_seed(1)
    prev = torch.randn(args.rows, args.dim, device=dev, generator=g)
    new = torch.randn(args.rows, args.dim, device=dev, generator=g)
    mm = mm_rates(args.mm_size, args.repeats, dev)
    res = {
        "bench": "gpu_transfer",
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (script check only)",
        "torch": torch.__version__, "triton": transfer_triton.available(),
        "kernels_ran": transfer_triton.kernels_run_on(prev),
        "rows": args.rows, "dim": args.dim, "chunk_rows": args.chunk_rows,
        "flop_per_row": transfer_flops_per_row(args.dim, net.config), "repeats": args.repeats,
        "mm_size": args.mm_size, "mm_gflops": mm,
        **materialise_rates(net, prev, new, args, mm, dev),
    }
    res["train"] = train_rates(net, prev, new, args, mm, dev)
    res["stages"] = stage_times(net, prev, new, args, dev)
    res["train_steps"] = train_steps(res)
    res["tuned"] = transfer_triton.tuned_configs()
    res["done_when"] = done_when(res)
    return res


def table(res: dict) -> str:
    mm = res["mm_gflops"]
    head = (f"{'path':<20}{'rows/s':>14}{'GFLOP/s':>10}{'/mm':>8}{'(mm)':>6}{'vs naive':>10}"
            f"{'max rel err':>13}")
    lines = [
        f"SML transfer on {res['device']}: d={res['dim']}, rows={res['rows']}, "
        f"chunk_rows={res['chunk_rows']}; mm {res['mm_size']}^3 GFLOP/s: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in mm.items()),
        "materialise:", head,
    ]
    for name, r in res.items():
        if isinstance(r, dict) and "error" in r:
            lines.append(f"{name:<20}FAILED: {r['error'][:200]}")
        if isinstance(r, dict) and "rows_per_s" in r:
            lines.append(
                f"{name:<20}{r['rows_per_s']:>14,.0f}{r['gflops']:>10.1f}{r['ratio_to_mm']:>8.2f}"
                f"{r['compared_with_mm']:>6}{r['speedup_vs_naive']:>9.2f}x{r['max_rel_err']:>13.1e}"
            )
    lines.append(f"training (forward + backward, {res['chunk_rows']} rows a step):")
    for name, r in res["train"].items():
        if "error" in r:
            lines.append(f"{name:<20}FAILED: {r['error'][:200]}")
            continue
        lines.append(f"{name:<20}{r['rows_per_s']:>14,.0f}{r['gflops']:>10.1f}"
                     f"{r['ratio_to_mm']:>8.2f}{r['compared_with_mm']:>6}{'':>10}"
                     f"{r['max_rel_err']:>13.1e}")
    st = res["stages"]
    lines.append(f"each step alone ({st['sms']} SMs at {st['sm_clock_mhz']:.0f} MHz): "
                 "ns a row / SM cycles a row")
    for name, r in st.items():
        if isinstance(r, dict):
            lines.append(f"  {name:<20}" + (f"FAILED: {r['error'][:200]}" if "error" in r else
                                              f"{r['ns_per_row']:>9.3f}{r['sm_cycles_per_row']:>9.1f}"))
    for prec, t in res["train_steps"].items():
        lines.append(f"  training {prec}: its steps alone {t['steps_ns_per_row']:.3f} ns a row, "
                     f"the step whole {t['step_ns_per_row']:.3f}")
    lines.append("blocks launched (autotuned: the choice per shape key, its median time):")
    for name, per_key in res["tuned"].items():
        for key, t in per_key.items():
            lines.append(f"  {name}: fixed {t}" if key == "fixed" else
                         f"  {name} {key}: {t['best']} ({t['us'][t['best']]} us)")
    for k, v in res["done_when"].items():
        lines.append(f"  [{'ok' if v['holds'] else 'NO'}] {k}: {v['value']:.3g} ({v['path']})")
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
