"""Smoke tests of the transfer benchmarks: they run, and their JSON line is well formed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, smoke: bool = True) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *(["--smoke"] if smoke else []), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_transfer_throughput_smoke():
    # The compiled path is compared with the reference in the module tests; compiling it
    # here too would make this smoke test take tens of seconds.
    res = _run("transfer_throughput.py", "--threads", "1", "--skip-compiled")
    assert res["threads"] == 1 and res["dim"] == 16
    # computed from the config: 2 * (3*n1*d + n1*n2*d + n2*d*hidden + hidden*d)
    assert res["flop_per_row"] == 2 * (3 * 10 * 16 + 10 * 5 * 16 + 5 * 16 * 512 + 512 * 16)
    assert _positive(res["mm_gflops"])
    for section in (res, res["train"]):
        assert section["naive"]["speedup_vs_naive"] == 1.0
        for name in ("naive", "fused"):
            r = section[name]
            assert _positive(r["rows_per_s"]) and _positive(r["gflops"])
            assert _positive(r["ratio_to_mm"]) and _positive(r["speedup_vs_naive"])
            assert math.isclose(r["gflops"], r["rows_per_s"] * res["flop_per_row"] / 1e9
                                * (3 if section is res["train"] else 1), rel_tol=1e-9)
        assert section["compiled"] == {"skipped": "--skip-compiled"}


def _check_gpu_result(res: dict) -> None:
    paths = ["naive", "fused_torch", "one_kernel_tf32", "one_kernel_bf16", "kernel_tf32_exact"] + [
        f"{k}_{q}" for k in ("staged", "kernel") for q in ("fp32", "tf32", "bf16")]
    for name in paths:
        r = res[name]
        assert _positive(r["rows_per_s"]) and _positive(r["ratio_to_mm"]), name
        assert math.isclose(r["gflops"], r["rows_per_s"] * res["flop_per_row"] / 1e9, rel_tol=1e-9)
        assert math.isclose(r["ratio_to_mm"], r["gflops"] / res["mm_gflops"][r["compared_with_mm"]],
                            rel_tol=1e-9)
    assert res["naive"]["speedup_vs_naive"] == 1.0
    assert res["kernel_fp32"]["max_rel_err"] < 1e-4 and res["fused_torch"]["max_rel_err"] < 1e-4
    assert res["kernel_tf32"]["max_rel_err"] < 1e-3
    assert res["kernel_tf32_exact"]["max_rel_err"] < 1e-3
    assert res["kernel_bf16"]["max_rel_err"] < 1e-2 and res["one_kernel_bf16"]["max_rel_err"] < 1e-2
    train = res["train"]
    assert set(train) == {"reference_fp32", "eager_fp32", "eager_tf32", "kernel_fp32",
                          "kernel_tf32", "kernel_bf16", "one_kernel_tf32", "one_kernel_bf16"}
    for name, r in train.items():
        assert math.isclose(r["gflops"], r["rows_per_s"] * 3 * res["flop_per_row"] / 1e9,
                            rel_tol=1e-9), name
    assert train["kernel_fp32"]["max_rel_err"] < 1e-3  # the output and every gradient
    assert train["kernel_bf16"]["max_rel_err"] < 0.1
    stages = res["stages"]
    steps = ("conv_stage", "mlp_save_u", "mlp_backward", "dw1_gemm", "dh2_gemm", "conv_backward")
    assert set(stages) == {"sms", "sm_clock_mhz"} | {
        f"{k}_{q}" for k in ("mlp", *steps) for q in ("fp32", "tf32", "bf16")}
    for name, r in stages.items():
        if isinstance(r, dict):
            assert _positive(r["ns_per_row"]), name
            assert math.isclose(r["sm_cycles_per_row"], r["ns_per_row"] * stages["sms"]
                                * stages["sm_clock_mhz"] / 1e3, rel_tol=1e-9), name
    for q, t in res["train_steps"].items():  # training's steps alone, beside the whole step
        assert math.isclose(t["steps_ns_per_row"],
                            sum(stages[f"{k}_{q}"]["ns_per_row"] for k in steps), rel_tol=1e-9)
        assert math.isclose(t["step_ns_per_row"], 1e9 / train[f"kernel_{q}"]["rows_per_s"],
                            rel_tol=1e-9)
    assert set(res["train_steps"]) == {"fp32", "tf32", "bf16"}
    assert len(res["done_when"]) == 6
    # Materialise is judged on its fastest design within the error bound.
    tf32 = ("kernel_tf32", "one_kernel_tf32", "kernel_tf32_exact")
    within = [k for k in tf32 if res[k]["max_rel_err"] <= 1e-3]
    assert res["done_when"]["materialise tf32 >= 0.5 of tf32 mm"]["path"] == max(
        within, key=lambda k: res[k]["ratio_to_mm"])
    for name, v in res["done_when"].items():
        assert isinstance(v["holds"], bool) and math.isfinite(v["value"])
        section = res["train"] if name.startswith("training") else res
        field = "max_rel_err" if "error" in name else "ratio_to_mm"
        assert v["value"] == section[v["path"]][field], name


def test_gpu_transfer_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    res = _run("gpu_transfer.py", "--out", str(out))
    assert json.loads(out.read_text()) == res
    if "skipped" in res:
        assert res["skipped"] == "no CUDA"
        return
    assert res["kernels_ran"]
    _check_gpu_result(res)


def test_gpu_transfer_logic_on_cpu():
    # The measuring code itself, on the CPU (numbers meaningless), so it is exercised here.
    res = _run("gpu_transfer.py", "--device", "cpu")
    assert res["device"].startswith("cpu")
    _check_gpu_result(res)


def test_triton_kernels_compile_for_hopper():
    # Ahead-of-time compilation for sm_90 needs Triton (its ptxas), not a GPU: every kernel
    # compiles, and the FC products run on Hopper's tensor cores (wgmma).
    pytest.importorskip("triton")
    res = _run("triton_kernels.py", "--first-only", smoke=False)
    if "skipped" in res:
        pytest.skip(res["skipped"])
    kernels = res["kernels"]
    assert res["arch"] == 90 and res["compiled"] == len(kernels) == 13
    launched = {"conv_stage": "fp32 tf32 bf16", "conv_backward": "fp32 tf32 bf16",
                "mlp": "tf32 bf16", "transfer": "tf32 bf16", "mlp_backward": "fp32 tf32 bf16"}
    assert {(k["kernel"], k["precision"]) for k in kernels} == {
        (name, p) for name, ps in launched.items() for p in ps.split()
    }
    for k in kernels:
        assert 0 < k["registers"] <= 255 and k["stack_bytes"] >= 0
        tensor_cores = k["kernel"] in ("mlp", "transfer") or (k["kernel"] == "mlp_backward"
                                                               and k["precision"] != "fp32")
        assert (k["mma"] == "wgmma") == tensor_cores, k
        # The fused MLP walks hidden and K in loops, the MLP backward a program's rows; the
        # conv kernels are straight-line code. (The first mlp entry streams H2, so its trip
        # counts are not modelled.)
        assert k["loops"] == (k["kernel"] in ("mlp", "transfer", "mlp_backward")), k
        assert ("issue_cycles_per_row" in k) == (k["kernel"] not in ("mlp", "transfer"))
        assert ("tensor_cycles_per_row" in k) == (k["kernel"] == "mlp_backward"
                                                  and k["precision"] != "fp32")
        # The first entry is what SML_TRITON_AUTOTUNE=0 launches: it must fit on an SM.
        assert k["blocks_per_sm"] >= 1, k
        assert ("loaded_bytes_per_row" in k) == (k["kernel"] in ("mlp", "transfer"))
    for k in (k for k in kernels if k["kernel"] == "conv_stage"):
        # MUFU ops a row: one per activation with TF32 and bf16 (tanh.approx), two with fp32
        # (exp and reciprocal), none on conv2's padding (n2 = 5 runs as 8 channels): per op
        # (n1 + n2) d a row, plus the row norm's square root and reciprocal.
        per_activation = 2 if k["precision"] == "fp32" else 1
        mufu_per_row = k["mufu_cycles_per_row"] * 16
        assert 1.0 <= mufu_per_row / (per_activation * (10 + 5) * 64) <= 1.05, k
        assert k["issue_cycles_per_row"] > k["mufu_cycles_per_row"] > 0
    assert set(res["best_cycles_per_row"]) == {"conv_stage", "conv_backward", "mlp_backward"}
    for k in (k for k in kernels if k["kernel"] == "mlp_backward"):
        # Its loop runs once per block of a program's rows: the activation's MUFU ops a row
        # prove the trip count, 2 a hidden unit with fp32 (exp and reciprocal), 1 or 2 with
        # the tanh form (Triton may compute the tanh again for z's product).
        units = k["mufu_cycles_per_row"] * 16 / 512
        assert units == 2 if k["precision"] == "fp32" else units in (1, 2), k
        if k["precision"] != "fp32":
            # dz = dout W_o and dW_o = doutᵀ z on the tensor cores: 4 d hidden FLOP a row at
            # Hopper's dense rate.
            rate = 4096 if k["precision"] == "bf16" else 2048
            assert k["tensor_cycles_per_row"] == round(4 * 64 * 512 / rate, 1)


def _triton_kernels():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import triton_kernels
    finally:
        sys.path.pop(0)
    return triton_kernels


def test_fused_mlp_builds_keep_h2_on_chip_for_hopper():
    # BLOCK_K = 0: the block's H2 sits in shared memory for the whole loop over hidden units,
    # so each row's H2 is loaded once instead of once per block of hidden units.
    pytest.importorskip("triton")
    tk = _triton_kernels()
    if tk.tt.interpreting():
        pytest.skip("TRITON_INTERPRET is set")
    names, blocks, _ = tk.tt.BLOCKS["mlp"]
    k = names.index("BLOCK_K")
    on_chip = next(b for b in blocks[1:] if b[k] == 0)
    streaming = tk.compile_one("mlp", "bf16", blocks[1], 90, save_u=True)
    built = tk.compile_one("mlp", "bf16", on_chip, 90, save_u=True)
    rows, k_cols = built["config"]["BLOCK_R"], tk.N2 * tk.D
    assert built["shared_bytes"] >= rows * k_cols * 2  # bf16
    assert built["blocks_per_sm"] >= 1 and built["loops"] and built["mma"] == "wgmma"
    # Its one loop runs once per block of hidden units: one MUFU op a hidden unit a row (the
    # activation's tanh.approx) proves the count, and the products' FLOP a row at Hopper's
    # dense bf16 rate (4096 a cycle an SM) give the tensor cores' floor.
    assert built["mufu_cycles_per_row"] * 16 == tk.HIDDEN
    flops = 2 * (k_cols * tk.HIDDEN + tk.HIDDEN * tk.D)
    assert built["tensor_cycles_per_row"] == round(flops / 4096, 1)
    assert built["issue_cycles_per_row"] > 0
    assert "issue_cycles_per_row" not in streaming
    weights = (k_cols * tk.HIDDEN + tk.HIDDEN * tk.D) * 2 / rows
    assert built["loaded_bytes_per_row"] == round(k_cols * 2 + weights)
    assert built["loaded_bytes_per_row"] < streaming["loaded_bytes_per_row"]
    # The one-kernel transfer adds its conv loop, once per CONV_R rows: one MUFU op per conv
    # activation ((n1 + n2) d a row), the row norm's few, and the hidden units' again.
    names, blocks, _ = tk.tt.BLOCKS["transfer"]
    k = names.index("BLOCK_K")
    one = tk.compile_one("transfer", "bf16", next(b for b in blocks[1:] if b[k] == 0), 90,
                         save_u=False)
    conv = (tk.N1 + tk.N2) * tk.D
    assert 1.0 <= one["mufu_cycles_per_row"] * 16 / (conv + tk.HIDDEN) <= 1.02
    assert one["tensor_cycles_per_row"] == built["tensor_cycles_per_row"]
    assert one["issue_cycles_per_row"] > built["issue_cycles_per_row"]


def test_blocks_per_sm_counts_registers_shared_memory_and_warps():
    tk = _triton_kernels()
    assert tk.blocks_per_sm(128, 36864, 8, 90) == 2  # 256 threads x 128 registers: half an SM
    assert tk.blocks_per_sm(121, 0, 8, 90) == 2  # registers are allocated 8 a thread at a time
    assert tk.blocks_per_sm(32, 100_000, 4, 90) == 2  # shared memory: 228 KB an SM
    assert tk.blocks_per_sm(32, 0, 4, 90) == 16  # warps: 64 an SM
    assert tk.blocks_per_sm(32, 232_449, 4, 90) == 0  # over a block's 227 KB: no launch
    assert tk.blocks_per_sm(32, 200_000, 4, 80) == 0  # sm_80: 163 KB a block
    assert tk.blocks_per_sm(32, 0, 4, 75) is None


def test_sass_counts_tell_loops_from_the_final_trap():
    sass_counts = _triton_kernels().sass_counts
    straight = """
        /*0000*/                   MUFU.TANH R1, R2 ;
        /*0010*/              @!P0 FFMA R3, R1, R1, R3 ;
        /*0020*/                   NOP ;
        /*0030*/                   EXIT ;
.L_x_0:
        /*0040*/                   BRA `(.L_x_0);
"""
    ops, loops = sass_counts(straight)
    assert loops == [] and ops == {"MUFU": 1, "FFMA": 1, "EXIT": 1, "BRA": 1}
    looping = """
        /*0000*/                   MOV R1, RZ ;
.L_x_3:
        /*0010*/                   FADD R1, R1, 1 ;
        /*0020*/               @P0 BRA `(.L_x_3);
        /*0030*/                   BRA `(.L_x_4);
.L_x_4:
        /*0040*/                   EXIT ;
"""
    ops, loops = sass_counts(looping)
    assert loops == [{"FADD": 1, "BRA": 1}] and ops["BRA"] == 2 and ops["FADD"] == 1
