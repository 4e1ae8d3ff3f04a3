"""The transfer's Triton kernels compiled for a GPU on any machine: registers, spills, MMA kind,
and what their machine code costs a row.

Question: does every block configuration that ``transfer_triton`` autotunes over compile for the
target GPU, which of them spill registers, do the FC kernels use the tensor cores, and how many
instructions does each kernel issue per row? Compiles each kernel with Triton's ahead-of-time API
(no GPU needed: Triton ships ptxas) at the authors' sizes (d = 64, n1 = 10, n2 = 5, hidden = 512,
the sigmoid GELU) for each precision that launches it, and reads registers and stack (spill)
bytes a thread from ``cuobjdump --dump-resource-usage`` of the cubin and its instructions from
``nvdisasm``. Compile time is reported too; nothing here is timed on a GPU.

Static cost per row, for the kernels whose instructions a warp runs are known here: those without
loops (the conv stage and its backward), where every instruction of the machine code runs once,
the fused MLP with ``BLOCK_K`` = 0, whose loop runs once per block of hidden units (and, in the
one-kernel transfer, its conv loop once per ``CONV_R`` rows), and the MLP backward, whose loop
runs once per ``BLOCK_R`` of a program's ``ROWS_PER_PROGRAM`` rows:
``issue_cycles_per_row`` = warp instructions a row / 4 (an SM issues at most four a
cycle), ``mufu_cycles_per_row`` = MUFU (special-function: tanh, exp, reciprocal) lane operations a
row / 16 (an SM's rate on sm_80/sm_90) and, for kernels with tensor-core products,
``tensor_cycles_per_row`` = their FLOP a row / the SM's dense tensor-core rate. A kernel cannot run
faster than the largest of these SM cycles a row (``best_cycles_per_row``: that bound for each
kernel's best configuration that fits on an SM); how close it comes is a GPU measurement
(``gpu_transfer.py``). The streaming fused MLP (``BLOCK_K`` > 0), whose nested loops Triton
flattens into one with a conditional epilogue, reports its instruction counts only.

Occupancy: ``blocks_per_sm``, the thread blocks of a build one SM holds at once by its registers,
shared memory and warps (0: it needs more shared memory than a block may have, so its launch
fails and the autotuner skips it; a configuration meant for bf16 may not fit with TF32's 4-byte
operands). Blocks in different phases on one SM (a conv phase on the FMA and MUFU units, a
product on the tensor cores) overlap only with two or more. For the fused MLP kernels,
``loaded_bytes_per_row``: the operand bytes a row that the kernel loads (from L2, mostly): H2's
row once per sweep of its columns (once per block of hidden units, or once in all with
``BLOCK_K`` = 0) and the FC weights once per block of rows.

Writes one JSON object to ``--out`` (and prints it as one line, after a human table).

    python benchmarks/triton_kernels.py                 # every configuration, sm_90
    python benchmarks/triton_kernels.py --first-only    # the first configuration of each kernel
    python benchmarks/triton_kernels.py --arch 80       # Ampere
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sml_torchrec.modules import transfer_triton as tt

D, N1, N2, HIDDEN = 64, 10, 5, 512
# Per SM: registers, shared memory bytes, the most one thread block may have, warps (the CUDA
# programming guide's table; the driver reserves 1 KB of shared memory a block).
SM_LIMITS = {80: (65536, 167936, 166912, 64), 90: (65536, 233472, 232448, 64)}
# Dense tensor-core FLOP a cycle an SM (A100: 312 / 156 TFLOP/s bf16 / TF32 over 108 SMs at
# 1.41 GHz; H100: 989 / 495 over 132 SMs at 1.83 GHz).
TENSOR_FLOP_PER_CYCLE = {80: {"bf16": 2048, "tf32": 1024}, 90: {"bf16": 4096, "tf32": 2048}}
# kernel -> (precisions it is launched with, pointer arguments in the compute dtype)
LAUNCHED = {
    "conv_stage": (("fp32", "tf32", "bf16"), ("h2_ptr",)),
    "conv_backward": (("fp32", "tf32", "bf16"), ("dh2_ptr",)),
    "mlp": (("tf32", "bf16"), ("h2_ptr", "w1t_ptr", "w2t_ptr", "u_ptr")),
    "transfer": (("tf32", "bf16"), ("h2_ptr", "w1t_ptr", "w2t_ptr", "u_ptr")),
    "mlp_backward": (("fp32", "tf32", "bf16"), ("g_ptr", "w2_ptr", "u_ptr", "du_ptr", "z_ptr")),
}


def constants(name: str, precision: str, save_u: bool) -> dict:
    fast = tt._fast(precision)  # the activations' form as launched on a GPU
    if name in ("conv_stage", "conv_backward"):
        return {"N1": N1, "N2": N2, "N2P": 8, "DP": D, "KIND": 0, "FAST": fast}
    if name in ("mlp", "transfer"):  # as transfer_triton.mlp launches them
        conv = {"N1": N1, "N2": N2, "N2P": 8} if name == "transfer" else {
            "N1": 1, "N2": 1, "N2P": 1, "CONV_R": 0}
        ka, kb = tt._k_pieces(N2 * D)
        return {"K": N2 * D, "H": HIDDEN, "d": D, "DP": D, "KIND": 0, "FAST": fast,
                "DOT_F32": False, "SAVE_U": save_u, "KA": ka, "KB": kb, **conv}
    return {"H": HIDDEN, "d": D, "DP": D, "KIND": 0, "FAST": fast,
            "DZ_GIVEN": precision == "fp32", "DOT_F32": False, "ROWS": tt.ROWS_PER_PROGRAM}


def blocks_per_sm(registers: int, shared: int, warps: int, arch: int) -> int | None:
    """Thread blocks of a build an SM holds at once (0: the launch fails, Triton's autotuner
    skips the configuration); None for an arch without limits here. Registers are allocated
    per warp in units of 256."""
    if arch not in SM_LIMITS:
        return None
    regs, smem, smem_block, max_warps = SM_LIMITS[arch]
    if shared > smem_block:
        return 0
    per_warp = -(-registers * 32 // 256) * 256
    return min(regs // (per_warp * warps), smem // (shared + 1024), max_warps // warps)


def compile_one(name: str, precision: str, block: tuple[int, ...], arch: int,
                save_u: bool = True) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = tt.BLOCKS[name][0]
    kernel = tt.jit_kernel(name)
    low = "*bf16" if precision == "bf16" else "*fp32"
    sig, attrs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            continue
        if p.name.endswith("_ptr"):
            sig[p.name] = low if p.name in LAUNCHED[name][1] else "*fp32"
        else:
            sig[p.name] = "fp32" if p.name == "eps" else "i32"
        if p.name != "eps":
            # What a launch specialises on: torch's allocations are 16-byte aligned, and the
            # row counts and strides here are multiples of 16 (a launch with others compiles
            # the same code with fewer vectorised loads).
            attrs[(i,)] = [["tt.divisibility", 16]]
    const = {**constants(name, precision, save_u), **dict(zip(names, block[:-2]))}
    start = time.perf_counter()
    k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs),
                       target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": block[-2], "num_stages": block[-1]})
    seconds = time.perf_counter() - start
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([str(tools / "nvdisasm"), "-c", f.name],
                              capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    ptx = k.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "none"
    config = dict(zip((*names, "num_warps", "num_stages"), block))
    ops, bodies = sass_counts(sass)
    row = {"kernel": name, "precision": precision,
           "save_u": save_u if name in ("mlp", "transfer") else None, "config": config,
           "registers": int(m.group(1)), "stack_bytes": int(m.group(2)),
           "shared_bytes": k.metadata.shared,
           "blocks_per_sm": blocks_per_sm(int(m.group(1)), k.metadata.shared,
                                          config["num_warps"], arch),
           "mma": mma, "compile_s": seconds,
           "instructions": sum(ops.values()), "mufu": ops["MUFU"], "loops": bool(bodies)}
    if name in ("mlp", "transfer"):
        size, cols = (2 if precision == "bf16" else 4), N2 * D  # H2's columns
        sweeps = 1 if config["BLOCK_K"] == 0 else -(-HIDDEN // config["BLOCK_H"])
        row["loaded_bytes_per_row"] = round(
            cols * size * sweeps + (cols * HIDDEN + HIDDEN * D) * size / config["BLOCK_R"])
    runs = executed(name, config, ops, bodies)
    if runs is not None:
        # Warps of one program per row it covers (mlp_backward's programs split hidden too,
        # and each covers ROWS_PER_PROGRAM rows).
        if name == "mlp_backward":
            warps_per_row = config["num_warps"] * HIDDEN // config["BLOCK_H"] / tt.ROWS_PER_PROGRAM
        else:
            warps_per_row = config["num_warps"] / config["BLOCK_R"]
        row["issue_cycles_per_row"] = round(sum(runs.values()) * warps_per_row / 4, 1)
        row["mufu_cycles_per_row"] = round(runs["MUFU"] * warps_per_row * 32 / 16, 1)
        if mma != "none" and arch in TENSOR_FLOP_PER_CYCLE:
            fc = 2 * (N2 * D * HIDDEN + HIDDEN * D)
            flops = {"mlp": fc, "transfer": fc, "mlp_backward": 4 * D * HIDDEN}  # dz, dW_o
            rate = TENSOR_FLOP_PER_CYCLE[arch]["bf16" if precision == "bf16" else "tf32"]
            row["tensor_cycles_per_row"] = round(flops[name] / rate, 1)
    return row


def executed(name: str, config: dict, ops: Counter, bodies: list[Counter]) -> Counter | None:
    """The instructions a warp runs, by opcode: the code once for loop-free kernels; for the
    fused MLP with ``BLOCK_K`` = 0, the body of its loop with the products once per block of
    hidden units, and (the one-kernel transfer) of its conv loop once per ``CONV_R`` rows; for
    the MLP backward, its loop once per ``BLOCK_R`` of a program's ``ROWS_PER_PROGRAM`` rows;
    None where trip counts are not known here."""
    if not bodies:
        return ops
    runs = Counter(ops)
    for body in bodies:
        trips = _trips(name, config, body, len(bodies))
        if trips is None:
            return None
        for op, n in body.items():
            runs[op] += n * (trips - 1)  # the body is in ``ops`` once
    return runs


def _trips(name: str, config: dict, body: Counter, loops: int) -> int | None:
    """Trips of a loop with this ``body`` in a program of kernel ``name`` (None: unknown)."""
    if name == "mlp_backward":
        return tt.ROWS_PER_PROGRAM // config["BLOCK_R"] if loops == 1 else None
    if name not in ("mlp", "transfer") or config["BLOCK_K"] != 0:
        return None
    if body["HGMMA"] or body["HMMA"]:
        return -(-HIDDEN // config["BLOCK_H"])
    return config["BLOCK_R"] // config["CONV_R"] if name == "transfer" else None


def sass_counts(sass: str) -> tuple[Counter, list[Counter]]:
    """Instructions by opcode in ``nvdisasm -c`` output (NOPs left out), and those of each
    loop's body: from a label to a branch back to it (the trap ``BRA`` to itself after the
    final ``EXIT`` is not a loop)."""
    ops, labels, pending, seq, bodies = Counter(), {}, [], [], []
    for line in sass.splitlines():
        label = re.match(r"(\.L_x_\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if not m:
            continue
        op = m.group(2)
        labels.update(dict.fromkeys(pending, len(seq)))
        pending.clear()
        seq.append(op)
        target = re.search(r"`\((\.L_x_\d+)\)", line)
        if op == "BRA" and target and labels.get(target.group(1), len(seq)) < len(seq) - 1:
            bodies.append(Counter(o for o in seq[labels[target.group(1)]:] if o != "NOP"))
    ops.update(o for o in seq if o != "NOP")
    return ops, bodies


def run(args) -> dict:
    rows = []
    for name, (precisions, _) in LAUNCHED.items():
        blocks = tt.BLOCKS[name][1][1:]  # the GPU's list (the first entry is the interpreter's)
        for precision in precisions:
            for block in blocks[:1] if args.first_only else blocks:
                both = name in ("mlp", "transfer") and not args.first_only
                for save_u in (True, False) if both else (True,):
                    rows.append(compile_one(name, precision, block, args.arch, save_u))
                    print(_line(rows[-1]), file=sys.stderr, flush=True)
    best: dict[str, dict[str, float]] = {}
    for r in rows:
        if "issue_cycles_per_row" in r and r["blocks_per_sm"] != 0:
            bound = max(r["issue_cycles_per_row"], r["mufu_cycles_per_row"],
                        r.get("tensor_cycles_per_row", 0.0))
            per = best.setdefault(r["kernel"], {})
            per[r["precision"]] = min(per.get(r["precision"], bound), bound)
    return {"bench": "triton_kernels", "arch": args.arch, "sizes": {"d": D, "n1": N1, "n2": N2,
            "hidden": HIDDEN}, "kernels": rows,
            "spilling": sum(r["stack_bytes"] > 0 for r in rows), "compiled": len(rows),
            "unlaunchable": sum(r["blocks_per_sm"] == 0 for r in rows),
            "best_cycles_per_row": best}


def _line(r: dict) -> str:
    cfg = ",".join(f"{k}={v}" for k, v in r["config"].items())
    save = "" if r["save_u"] is None else f" save_u={r['save_u']}"
    cost = ("loops" if "issue_cycles_per_row" not in r else
            f"{r['issue_cycles_per_row']:.1f} issue/{r['mufu_cycles_per_row']:.1f} MUFU"
            + (f"/{r['tensor_cycles_per_row']:.0f} MMA" if "tensor_cycles_per_row" in r else "")
            + " cyc/row")
    return (f"{r['kernel']:<14}{r['precision']:<6}{cfg:<62}{r['registers']:>5} regs"
            f"{r['stack_bytes']:>7} B stack{r['shared_bytes'] // 1024:>5} KB shared"
            f"{r['blocks_per_sm'] if r['blocks_per_sm'] is not None else '-':>3} /SM  "
            f"{r['mma']:<6}{cost:<31}{r['compile_s']:>5.1f} s{save}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    p.add_argument("--first-only", action="store_true",
                   help="only the first configuration of each kernel and precision")
    p.add_argument("--out", help="write the JSON object here too")
    a = p.parse_args(argv)
    if tt.triton is None:
        res = {"bench": "triton_kernels", "skipped": "Triton is not installed"}
    elif tt.interpreting():
        res = {"bench": "triton_kernels", "skipped": "TRITON_INTERPRET is set"}
    else:
        res = run(a)
        print(f"{res['compiled']} compiled for sm_{a.arch}, {res['spilling']} spill registers, "
              f"{res['unlaunchable']} need more shared memory than a block may have")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
