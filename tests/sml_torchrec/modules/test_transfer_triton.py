"""Tests of the GPU path of f_Θ (``transfer_triton``): its kernels, and their torch twins.

The same tests check whatever computes on the device at hand: the Triton kernels on CUDA; on a
CPU the torch twins, and, in a subprocess with ``TRITON_INTERPRET=1`` (Triton's interpreter
must be chosen before Triton is imported), the kernels themselves
(``test_kernels_under_triton_interpreter``). References are the paper's layers in float64.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sml_torchrec.modules import transfer_triton
from sml_torchrec.modules.transfer import TransferConfig, TransferNet, gelu, materialize

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KINDS = ("sigmoid", "erf", "tanh")
# Max error / max|reference| allowed per precision: fp32 rounding, and the bounds stated for
# TF32 and bf16 outputs. Gradients sum rows that partly cancel (b1's over 37 rows of bf16 du
# lands at 3.4e-2 with erf). A wrong kernel is off by O(1). On a CPU "tf32" multiplies in fp32
# (and in Triton's interpreter takes TF32's tanh form of the activations with an exact tanh), so
# it is held to fp32's bounds there.
OUT_TOL = {"fp32": 1e-5, "tf32": 1e-5 if DEVICE == "cpu" else 1e-3, "bf16": 1e-2}
GRAD_TOL = {"fp32": 1e-4, "tf32": 1e-4 if DEVICE == "cpu" else 2e-2, "bf16": 6e-2}


def _net(dim: int, kind: str, n1: int = 4, n2: int = 3, hidden: int = 40) -> TransferNet:
    """A float64 f_Θ with odd sizes (d, n2 and hidden are not block multiples) and real biases."""
    torch.manual_seed(0)
    net = TransferNet(dim, TransferConfig(n1=n1, n2=n2, hidden=hidden, gelu=kind)).double()
    with torch.no_grad():
        net.fc1.bias.normal_()
        net.fc2.bias.normal_()
    return net


def _rows(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


def _params(net: TransferNet, grad: bool = False) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().float().to(DEVICE).requires_grad_(grad) for t in net.params())


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double().cpu() - want).abs().max() / want.abs().max()).item()


def test_kernels_run_where_expected():
    on = transfer_triton.kernels_run_on(torch.zeros(1, device=DEVICE))
    assert on == (transfer_triton.available() or transfer_triton.interpreting())


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("d", [13, 16])
@pytest.mark.parametrize("kind", KINDS)
def test_conv_stage_matches_torch(d, kind, precision):
    # TF32 and bf16 take the tanh form of the activations, and with the sigmoid GELU fold its
    # scales into F1 and F2. On a GPU on tanh.approx: with these O(1) weights conv2's inputs
    # reach -10, where GELU is ~0 but tanh.approx's error is up to |x| 2^-12 (simulated with
    # every tanh off by its bound: up to 5e-3 of max|H2|).
    prev, new = (t.float().to(DEVICE) for t in _rows(45, d))
    f1, f2 = torch.randn(4, 3).to(DEVICE), torch.randn(3, 4).to(DEVICE)
    got = transfer_triton.conv_stage(prev, new, f1, f2, 1e-8, kind, precision)
    want = transfer_triton.conv_stage_torch(prev, new, f1, f2, 1e-8, kind)
    assert got.shape == (45, 3 * d)
    assert got.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    if precision == "fp32":
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tol = OUT_TOL["bf16"] if DEVICE == "cuda" and precision != "fp32" else OUT_TOL[precision]
    assert _rel(got, want.double().cpu()) <= tol


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_materialize_matches_float64_reference(kind, precision):
    net = _net(13, kind)
    prev, new = _rows(37, 13)
    with torch.no_grad():
        ref = net.reference(prev, new)
    out = prev.float().to(DEVICE)  # in place, as materialise writes a table over W_{t-1}
    transfer_triton.transfer_rows_into(out, new.float().to(DEVICE), _params(net), 1e-8, kind,
                                       out, precision)
    assert _rel(out, ref) <= OUT_TOL[precision]


def test_materialize_strided_and_empty_outputs():
    net = _net(13, "sigmoid")
    prev, new = _rows(21, 13)
    with torch.no_grad():
        ref = net.reference(prev, new)
    p, prev, new = _params(net), prev.float().to(DEVICE), new.float().to(DEVICE)
    wide = torch.zeros(21, 20, device=DEVICE)  # rows of a wider table: row stride 20
    transfer_triton.transfer_rows_into(prev, new, p, 1e-8, "sigmoid", wide[:, 3:16])
    assert _rel(wide[:, 3:16], ref) <= OUT_TOL["fp32"]
    assert wide[:, :3].abs().max() == 0 and wide[:, 16:].abs().max() == 0
    cols = torch.zeros(13, 21, device=DEVICE).t()  # column-major: element stride 21
    transfer_triton.transfer_rows_into(prev, new, p, 1e-8, "sigmoid", cols)
    assert _rel(cols, ref) <= OUT_TOL["fp32"]
    empty = torch.zeros(0, 13, device=DEVICE)
    transfer_triton.transfer_rows_into(prev[:0], new[:0], p, 1e-8, "sigmoid", empty)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_training_matches_float64_reference(kind, precision):
    net = _net(13, kind)
    prev, new = _rows(37, 13)
    new_ref = new.clone().requires_grad_(True)
    ref = net.reference(prev, new_ref)
    weight = torch.linspace(-1, 1, ref.numel(), dtype=torch.float64).view_as(ref)
    (ref * weight).sum().backward()
    p = _params(net, grad=True)
    new_dev = new.float().to(DEVICE).requires_grad_(True)
    prev_dev = prev.float().to(DEVICE).requires_grad_(True)
    out = transfer_triton.transfer_rows(prev_dev, new_dev, p, 1e-8, kind, precision)
    (out * weight.float().to(DEVICE)).sum().backward()
    assert _rel(out.detach(), ref.detach()) <= OUT_TOL[precision]
    assert prev_dev.grad is None  # W_{t-1} is a constant of the transfer
    for got, want, name in zip((new_dev, *p), (new_ref, *net.params()),
                               ("new", "F1", "F2", "W_f", "b1", "W_o", "b2")):
        assert _rel(got.grad, want.grad) <= GRAD_TOL[precision], name


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("kind", ["sigmoid", "erf"])
def test_one_kernel_transfer_computes_what_two_kernels_do(monkeypatch, kind, precision):
    net = _net(13, kind)
    prev, new = _rows(37, 13)
    new_ref = new.clone().requires_grad_(True)
    ref = net.reference(prev, new_ref)
    ref.sum().backward()
    results = {}
    for one in (False, True):
        monkeypatch.setattr(transfer_triton, "ONE_KERNEL", one)
        table = prev.float().to(DEVICE)  # in place, over W_{t-1}
        transfer_triton.transfer_rows_into(table, new.float().to(DEVICE), _params(net), 1e-8,
                                           kind, table, precision)
        p = _params(net, grad=True)
        n = new.float().to(DEVICE).requires_grad_(True)
        out = transfer_triton.transfer_rows(prev.float().to(DEVICE), n, p, 1e-8, kind, precision)
        out.sum().backward()
        results[one] = [table, out.detach(), n.grad, *(t.grad for t in p)]
        assert _rel(table, ref.detach()) <= OUT_TOL[precision]
        assert _rel(n.grad, new_ref.grad) <= GRAD_TOL[precision]
    # The same arithmetic: equal but for accumulation order, where the two launches were tuned
    # to different tiles (then a bf16 rounding of du may land one unit apart).
    tol = 1e-5 if DEVICE == "cpu" else GRAD_TOL[precision]
    for a, b in zip(results[False], results[True]):
        assert _rel(b, a.double().cpu()) <= tol


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_mlp_backward_sums_over_every_program_of_rows(monkeypatch, kind, precision):
    # du, dW_o and db1 against float64 autograd, with the rows spread over four programs along
    # rows, each summing its own rows' dW_o and db1 over several blocks of rows (the last
    # program's partly past the rows), and hidden units in blocks, the last partial.
    per_program = 32 if DEVICE == "cpu" else 128  # a multiple of the blocks of rows launched
    monkeypatch.setattr(transfer_triton, "ROWS_PER_PROGRAM", per_program)
    cd = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(4)
    rows, d, hidden = 3 * per_program + 21, 13, 40
    dout = torch.randn(rows, d, generator=gen, dtype=torch.float64)
    w2 = 0.3 * torch.randn(d, hidden, generator=gen, dtype=torch.float64)
    u = (2 * torch.randn(rows, hidden, generator=gen, dtype=torch.float64)).to(cd).double()
    u_ref, w2_ref = u.clone().requires_grad_(True), w2.clone().requires_grad_(True)
    (gelu(u_ref, kind) @ w2_ref.t() * dout).sum().backward()
    du, dw2, db1 = transfer_triton.mlp_backward(
        dout.float().to(DEVICE), w2.float().to(DEVICE), u.to(cd).to(DEVICE), kind, precision)
    assert du.dtype == cd and du.shape == (rows, hidden)
    assert dw2.shape == (d, hidden) and db1.shape == (hidden,)
    assert _rel(du, u_ref.grad) <= GRAD_TOL[precision]
    assert _rel(dw2, w2_ref.grad) <= GRAD_TOL[precision]
    assert _rel(db1, u_ref.grad.sum(0)) <= GRAD_TOL[precision]
    du, dw2, db1 = transfer_triton.mlp_backward(  # no rows: nothing to sum
        dout[:0].float().to(DEVICE), w2.float().to(DEVICE), u[:0].to(cd).to(DEVICE), kind,
        precision)
    assert du.shape == (0, hidden) and not dw2.any() and not db1.any()
    assert dw2.shape == (d, hidden) and db1.shape == (hidden,)


def test_training_with_authors_sizes_and_a_partial_block():
    # d = 64, n1 = 10, n2 = 5, hidden = 512 (the defaults), 70 rows: blocks of rows are partial.
    net = _net(64, "sigmoid", n1=10, n2=5, hidden=512)
    prev, new = _rows(70, 64)
    new_ref = new.clone().requires_grad_(True)
    ref = net.reference(prev, new_ref)
    ref.square().sum().backward()
    p = _params(net, grad=True)
    new_dev = new.float().to(DEVICE).requires_grad_(True)
    out = transfer_triton.transfer_rows(prev.float().to(DEVICE), new_dev, p, 1e-8, "sigmoid")
    out.square().sum().backward()
    assert _rel(out.detach(), ref.detach()) <= OUT_TOL["fp32"]
    for got, want in zip((new_dev, *p), (new_ref, *net.params())):
        assert _rel(got.grad, want.grad) <= GRAD_TOL["fp32"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_transfer_net_through_the_triton_backend(precision):
    net = _net(13, "erf")
    prev, new = _rows(50, 13)
    new_ref = new.clone().requires_grad_(True)
    ref = net.reference(prev, new_ref)
    ref.sum().backward()
    gpu = TransferNet(13, TransferConfig(n1=4, n2=3, hidden=40, gelu="erf", precision=precision,
                                         chunk_rows=16))
    gpu.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    gpu.to(DEVICE)
    prev, new = prev.float().to(DEVICE), new.float().to(DEVICE)
    out = torch.empty(50, 13, device=DEVICE)
    materialize(gpu, prev, new, out, backend="triton")
    assert _rel(out, ref.detach()) <= OUT_TOL[precision]
    new.requires_grad_(True)
    trained = gpu(prev, new, backend="triton")  # three chunks of 16 rows and one of 2
    trained.sum().backward()
    assert _rel(trained.detach(), ref.detach()) <= OUT_TOL[precision]
    assert _rel(new.grad, new_ref.grad) <= GRAD_TOL[precision]
    assert _rel(gpu.fc1.weight.grad, net.fc1.weight.grad) <= GRAD_TOL[precision]


def test_bad_precision_is_refused():
    p = _params(_net(13, "sigmoid"))
    x = torch.zeros(2, 13, device=DEVICE)
    with pytest.raises(ValueError, match="precision"):
        transfer_triton.transfer_rows_into(x, x, p, 1e-8, "sigmoid", x.clone(), "fp16")


@pytest.mark.skipif(transfer_triton.triton is None, reason="Triton is not installed")
@pytest.mark.skipif(DEVICE == "cuda" or transfer_triton.interpreting(),
                    reason="the kernels run in this process already")
def test_kernels_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
         "not test_kernels_under_triton_interpreter and not test_gpu_launchers",
         str(Path(__file__))],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # Every other test of this file ran there, on the interpreted kernels.
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.skipif(transfer_triton.triton is None or transfer_triton.interpreting(),
                    reason="builds GPU launchers: needs Triton, not its interpreter")
def test_gpu_launchers_autotune_over_their_list_unless_told_not_to(monkeypatch):
    monkeypatch.delenv("SML_TRITON_AUTOTUNE", raising=False)  # gpu_check.sh sets it to 0
    monkeypatch.setattr(transfer_triton, "_launchers", {})
    for name, (names, blocks, key) in transfer_triton.BLOCKS.items():
        tuned = transfer_triton._launcher(name).tuner
        assert [tuple(c.kwargs[n] for n in names) + (c.num_warps, c.num_stages)
                for c in tuned.configs] == list(blocks[1:])  # the interpreter's entry left out
        assert tuned.keys == key
    monkeypatch.setattr(transfer_triton, "_launchers", {})
    monkeypatch.setenv("SML_TRITON_AUTOTUNE", "0")
    fixed = transfer_triton._launcher("mlp")
    names, blocks, _ = transfer_triton.BLOCKS["mlp"]
    assert fixed.meta == {**dict(zip(names, blocks[1][:-2])), "num_warps": blocks[1][-2],
                          "num_stages": blocks[1][-1]}


def _h2_on_chip(name: str):
    """Kernel ``name`` (``"mlp"`` or ``"transfer"``) launched with ``BLOCK_K`` = 0, H2's block
    kept on chip: the interpreter's entry so changed on a CPU; on a GPU the first such entry of
    the list (one that fits in shared memory with TF32's operands too)."""
    names, blocks, _ = transfer_triton.BLOCKS[name]
    k = names.index("BLOCK_K")
    if transfer_triton.interpreting():
        b = (*blocks[0][:k], 0, *blocks[0][k + 1:])
    else:
        b = next(b for b in blocks[1:] if b[k] == 0)
    meta = {**dict(zip(names, b[:-2])), "num_warps": b[-2], "num_stages": b[-1]}
    return transfer_triton._Fixed(transfer_triton.jit_kernel(name), meta)


@pytest.mark.skipif(not transfer_triton.kernels_run_on(torch.zeros(1, device=DEVICE)),
                    reason="the kernels do not run here (torch twins)")
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("d, n2", [(13, 3), (16, 4)])  # H2's 39 columns as 32 + 16; 64 as one
def test_fused_mlp_with_h2_kept_on_chip(monkeypatch, d, n2, precision):
    net = _net(d, "sigmoid", n2=n2)
    prev, new = _rows(37, d)
    new_ref = new.clone().requires_grad_(True)
    ref = net.reference(prev, new_ref)
    ref.sum().backward()
    results = {}
    for on_chip in (False, True):
        if on_chip:
            monkeypatch.setattr(transfer_triton, "_launchers", {
                name: _h2_on_chip(name) for name in ("mlp", "transfer")})
        for one in (False, True):
            monkeypatch.setattr(transfer_triton, "ONE_KERNEL", one)
            table = prev.float().to(DEVICE)
            transfer_triton.transfer_rows_into(table, new.float().to(DEVICE), _params(net), 1e-8,
                                               "sigmoid", table, precision)
            p = _params(net, grad=True)
            n = new.float().to(DEVICE).requires_grad_(True)
            out = transfer_triton.transfer_rows(prev.float().to(DEVICE), n, p, 1e-8, "sigmoid",
                                                precision)
            out.sum().backward()
            assert _rel(table, ref.detach()) <= OUT_TOL[precision]
            assert _rel(out.detach(), ref.detach()) <= OUT_TOL[precision]
            for got, want in zip((n, *p), (new_ref, *net.params())):
                assert _rel(got.grad, want.grad) <= GRAD_TOL[precision]
            results[on_chip, one] = [table, out.detach(), n.grad, *(t.grad for t in p)]
    # The same sums in another order of H2's columns: equal to rounding (bf16's du may land one
    # unit apart on a GPU, as between the one- and two-kernel launches).
    tol = 1e-5 if DEVICE == "cpu" else GRAD_TOL[precision]
    for one in (False, True):
        for a, b in zip(results[False, one], results[True, one]):
            assert _rel(b, a.double().cpu()) <= tol


def test_k_pieces_are_powers_of_two_covering_h2():
    for k, pieces in ((320, (256, 64)), (64, (64, 0)), (39, (32, 16)), (10, (16, 0)),
                      (500, (256, 256)), (640, (512, 128))):
        assert transfer_triton._k_pieces(k) == pieces
        ka, kb = pieces
        assert ka + kb >= k and ka >= 16 and (kb == 0 or kb >= 16)


@pytest.mark.skipif(not transfer_triton.interpreting(),
                    reason="Triton's autotuner on the interpreted kernels, timed by the clock")
def test_autotuned_launcher_keeps_each_tuning(monkeypatch):
    # Triton's own autotuner, on the CPU with a wall-clock timer: every key it tunes for keeps
    # its choice and each configuration's time (Triton keeps only the last tuning's times).
    def clock(fn, quantiles=None):
        start = time.perf_counter()
        fn()
        return [(time.perf_counter() - start) * 1e3] * 3

    monkeypatch.setattr(transfer_triton, "_launchers",
                        {"conv_stage": transfer_triton._autotuned("conv_stage", clock)})
    prev, new = (t.float() for t in _rows(9, 13))
    f1, f2 = torch.randn(4, 3), torch.randn(3, 4)
    for kind in ("sigmoid", "erf"):  # KIND is part of the key: two tunings
        got = transfer_triton.conv_stage(prev, new, f1, f2, 1e-8, kind)
        want = transfer_triton.conv_stage_torch(prev, new, f1, f2, 1e-8, kind)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tunings = transfer_triton.tuned_configs()["conv_stage"]
    names, blocks, _ = transfer_triton.BLOCKS["conv_stage"]
    entries = {", ".join(f"{n}={v}" for n, v in zip((*names, "num_warps", "num_stages"), b))
               for b in blocks[1:]}
    assert len(tunings) == 2
    for t in tunings.values():
        assert set(t["us"]) == entries and t["best"] in entries
        assert t["us"][t["best"]] == min(t["us"].values()) > 0
