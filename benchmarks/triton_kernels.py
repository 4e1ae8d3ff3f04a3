"""The transfer's Triton kernels compiled for a GPU on any machine: registers, spills, MMA kind.

Question: does every block configuration that ``transfer_triton`` autotunes over compile for the
target GPU, which of them spill registers, and do the FC kernels use the tensor cores? Compiles
each kernel with Triton's ahead-of-time API (no GPU needed: Triton ships ptxas) at the authors'
sizes (d = 64, n1 = 10, n2 = 5, hidden = 512, the sigmoid GELU) for each precision that launches
it, and reads registers and stack (spill) bytes a thread from ``cuobjdump --dump-resource-usage``
of the cubin. Compile time is reported too; nothing here is timed on a GPU.

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
from pathlib import Path

from sml_torchrec.modules import transfer_triton as tt

D, N1, N2, HIDDEN = 64, 10, 5, 512
# kernel -> (precisions it is launched with, pointer arguments in the compute dtype)
LAUNCHED = {
    "conv_stage": (("fp32", "tf32", "bf16"), ("h2_ptr",)),
    "conv_backward": (("fp32", "tf32", "bf16"), ("dh2_ptr",)),
    "mlp": (("tf32", "bf16"), ("h2_ptr", "w1t_ptr", "w2t_ptr", "u_ptr")),
    "transfer": (("tf32", "bf16"), ("h2_ptr", "w1t_ptr", "w2t_ptr", "u_ptr")),
    "mlp_backward": (("fp32", "tf32", "bf16"), ("g_ptr", "w2_ptr", "u_ptr", "du_ptr", "z_ptr")),
}


def constants(name: str, precision: str, save_u: bool) -> dict:
    fast = precision != "fp32"
    if name in ("conv_stage", "conv_backward"):
        return {"N1": N1, "N2": N2, "N2P": 8, "DP": D, "KIND": 0, "FAST": fast}
    if name in ("mlp", "transfer"):  # as transfer_triton.mlp launches them
        conv = {"N1": N1, "N2": N2, "N2P": 8} if name == "transfer" else {
            "N1": 1, "N2": 1, "N2P": 1, "CONV_R": 0}
        return {"K": N2 * D, "H": HIDDEN, "d": D, "DP": D, "KIND": 0, "FAST": fast,
                "DOT_F32": False, "SAVE_U": save_u, **conv}
    return {"H": HIDDEN, "d": D, "DP": D, "KIND": 0, "FAST": fast,
            "DZ_GIVEN": precision == "fp32", "DOT_F32": False}


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
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    ptx = k.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "none"
    return {"kernel": name, "precision": precision,
            "save_u": save_u if name in ("mlp", "transfer") else None,
            "config": dict(zip((*names, "num_warps", "num_stages"), block)),
            "registers": int(m.group(1)), "stack_bytes": int(m.group(2)),
            "shared_bytes": k.metadata.shared, "mma": mma, "compile_s": seconds}


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
    return {"bench": "triton_kernels", "arch": args.arch, "sizes": {"d": D, "n1": N1, "n2": N2,
            "hidden": HIDDEN}, "kernels": rows,
            "spilling": sum(r["stack_bytes"] > 0 for r in rows), "compiled": len(rows)}


def _line(r: dict) -> str:
    cfg = ",".join(f"{k}={v}" for k, v in r["config"].items())
    save = "" if r["save_u"] is None else f" save_u={r['save_u']}"
    return (f"{r['kernel']:<14}{r['precision']:<6}{cfg:<62}{r['registers']:>5} regs"
            f"{r['stack_bytes']:>7} B stack  {r['mma']:<6}{r['compile_s']:>6.1f} s{save}")


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
        print(f"{res['compiled']} compiled for sm_{a.arch}, {res['spilling']} spill registers")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
