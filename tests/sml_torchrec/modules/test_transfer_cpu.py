"""Tests of the fused C++ CPU path of the SML transfer against the float64 reference."""

from __future__ import annotations

import shutil

import pytest
import torch

from sml_torchrec.modules import transfer_cpu
from sml_torchrec.modules.transfer import (
    TransferConfig,
    TransferNet,
    _cpu_kernel_ok,
    _fused_chunk,
    materialize,
)

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="needs a C++ compiler"
)


def _pair(dim: int, seed: int = 0, **channels: int) -> tuple[TransferNet, TransferNet]:
    """The same parameters as a float64 reference net and a float32 fused net."""
    torch.manual_seed(seed)
    ref = TransferNet(dim, TransferConfig(impl="reference", **channels)).double()
    with torch.no_grad():
        ref.fc1.bias.normal_()
        ref.fc2.bias.normal_()
    fused = TransferNet(dim, TransferConfig(impl="fused", chunk_rows=16, **channels))
    fused.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    return ref, fused


def _rows(n: int, d: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


def _grads(net: TransferNet, prev, new, weight, params: bool = True):
    new = new.clone().requires_grad_(True)
    if params:
        net.zero_grad(set_to_none=True)
        out = net(prev, new)
    else:  # SML step 1: Θ constant, gradient to new only
        consts = {k: v.detach() for k, v in net.named_parameters()}
        out = torch.func.functional_call(net, consts, (prev, new))
    (out * weight).sum().backward()
    g = {"new": new.grad}
    if params:
        g.update({k: p.grad for k, p in net.named_parameters()})
    return out.detach(), g


# The default 10 -> 5 channels run a specialised copy of the stage kernels; these run the
# generic one (up to 16 channels).
@pytest.mark.parametrize(("n1", "n2"), [(4, 3), (5, 10), (16, 16)])
def test_other_channel_counts_match_float64_reference(n1, n2):
    ref_net, net = _pair(19, n1=n1, n2=n2)
    prev, new = _rows(41, 19)
    weight = torch.linspace(-1, 1, 41 * 19, dtype=torch.float64).view(41, 19)
    for params in (True, False):
        ref, ref_g = _grads(ref_net, prev, new, weight, params)
        out, g = _grads(net, prev.float(), new.float(), weight.float(), params)
        assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
        for k, want in ref_g.items():
            err = (g[k].double() - want).abs().max() / want.abs().max()
            assert err <= 1e-4, (k, err.item())


def test_kernel_builds_and_serves_the_fused_path():
    assert transfer_cpu.load() is not None
    _, net = _pair(13)
    assert _cpu_kernel_ok(torch.zeros(2, 13), net.config)
    # Only the authors' GELU in float32 takes the C++ path; the rest stays on eager ops.
    assert not _cpu_kernel_ok(torch.zeros(2, 13, dtype=torch.float64), net.config)
    assert not _cpu_kernel_ok(torch.zeros(2, 13), TransferConfig(gelu="erf"))


# Odd row counts (the 16-row chunks leave a tail), d below, between and above the 16-lane
# vector width and not a multiple of 8.
@pytest.mark.parametrize(("n", "d"), [(1, 5), (37, 13), (50, 37), (33, 64), (20, 70)])
def test_values_and_gradients_match_float64_reference(n, d):
    ref_net, net = _pair(d)
    prev, new = _rows(n, d)
    weight = torch.linspace(-1, 1, n * d, dtype=torch.float64).view(n, d)
    ref, ref_g = _grads(ref_net, prev, new, weight)
    out, g = _grads(net, prev.float(), new.float(), weight.float())
    scale = ref.abs().max()
    assert (out.double() - ref).abs().max() <= 1e-5 * scale
    assert set(g) == set(ref_g)
    for k, want in ref_g.items():
        assert want.abs().sum() > 0, k
        err = (g[k].double() - want).abs().max() / want.abs().max()
        assert err <= 1e-4, (k, float(err))


# Step 1 takes the forward-mode path (∂H2/∂new saved in the forward, no stage recompute).
@pytest.mark.parametrize(("n", "d"), [(1, 5), (41, 19), (50, 37), (33, 64), (20, 70)])
def test_step1_gradient_to_new_only(n, d):
    ref_net, net = _pair(d)
    prev, new = _rows(n, d)
    weight = torch.randn(n, d, dtype=torch.float64)
    _, ref_g = _grads(ref_net, prev, new, weight, params=False)
    _, g = _grads(net, prev.float(), new.float(), weight.float(), params=False)
    assert all(p.grad is None for p in net.parameters())
    err = (g["new"].double() - ref_g["new"]).abs().max() / ref_g["new"].abs().max()
    assert err <= 1e-4


def test_no_gradient_to_prev_and_w_dot_constant():
    _, net = _pair(13)
    prev, new = (t.float() for t in _rows(6, 13))
    prev.requires_grad_(True)
    with torch.no_grad():
        net.conv1[:, :2] = 0  # the output now depends on new only through w_dot
    new.requires_grad_(True)
    net(prev, new).sum().backward()
    assert prev.grad is None
    assert torch.count_nonzero(new.grad) == 0
    assert net.conv1.grad[:, 2].abs().sum() > 0


def test_materialize_matches_reference_with_tails_aliasing_and_strided_out():
    ref_net, net = _pair(21)
    prev, new = _rows(45, 21)
    with torch.no_grad():
        want = ref_net(prev, new).float()
    prev, new = prev.float(), new.float()
    table = prev.clone()
    materialize(net, table, new, out=table, chunk_rows=16)  # out aliases prev
    torch.testing.assert_close(table, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    wide = torch.full((45, 30), 7.0)
    materialize(net, prev, new, wide[:, 4:25], chunk_rows=7)
    torch.testing.assert_close(wide[:, 4:25], table, rtol=1e-6, atol=1e-6)
    assert (wide[:, :4] == 7).all() and (wide[:, 25:] == 7).all()
    # non-contiguous inputs are read correctly too
    strided_new = torch.cat([new, new], 1)[:, :21]
    assert not strided_new.is_contiguous()
    out = torch.empty(45, 21)
    materialize(net, prev, strided_new, out)
    torch.testing.assert_close(out, table, rtol=1e-6, atol=1e-6)
    empty = torch.empty(0, 21)
    materialize(net, empty, empty, empty)


def test_matches_the_eager_fused_ops():
    # The C++ kernels and the eager fused formulation are two implementations of one chunk.
    _, net = _pair(64)
    prev, new = (t.float() for t in _rows(300, 64))
    p = tuple(t.detach() for t in net.params())
    with torch.no_grad():
        eager = _fused_chunk(prev, new, p, net.config.eps, "sigmoid")
        kernel = transfer_cpu.TransferRowsCPU.apply(prev, new, *p, net.config.eps)
    torch.testing.assert_close(kernel, eager, rtol=1e-5, atol=1e-5)


def test_activation_matches_float64_over_the_float_range():
    # The kernels' own exp (AVX-512) or ATen's exp_u20: silu within 1e-6 relative error
    # wherever the sigmoid is a normal float, its derivative (kept for the backward) within
    # 1e-6 absolute, both saturating far out.
    ext = transfer_cpu.load()
    x = torch.cat([torch.linspace(-100, 100, 200_001), torch.tensor([-1e30, 1e30, 0.0])])
    x = torch.cat([x, torch.zeros(-len(x) % 64)]).view(-1, 64)
    dact = x.clone()
    silu = ext.bias_silu_keep_grad(dact, torch.zeros(64), 0.5)
    xd = x.double()
    sd = torch.sigmoid(xd)
    ref_silu, ref_dact = xd * sd, 0.5 * sd * (1 + xd * (1 - sd))
    normal = sd > torch.finfo(torch.float32).tiny
    rel_silu = (silu.double() - ref_silu).abs() / ref_silu.abs().clamp_min(1e-300)
    assert float(rel_silu[normal & (xd != 0)].max()) < 1e-6
    assert float((dact.double() - ref_dact).abs().max()) < 1e-6
    assert bool((silu[x > 20] == x[x > 20]).all()) and float(silu[x < -104].abs().max()) < 1e-30
    assert bool((dact[x > 20] == 0.5).all()) and float(dact[x < -104].abs().max()) < 1e-30
    if torch.backends.cpu.get_cpu_capability() == "AVX512":  # exp_u20 maps NaN to a number
        special = torch.tensor([[float("nan")] + [0.0] * 63])
        assert ext.bias_silu_keep_grad(special, torch.zeros(64), 1.0)[0, 0].isnan()


def test_extreme_inputs_stay_finite():
    # exp of large arguments must saturate the sigmoid, not produce NaN.
    _, net = _pair(16)
    prev = torch.full((4, 16), 1e4)
    new = torch.linspace(-1e4, 1e4, 64).view(4, 16)
    new.requires_grad_(True)
    out = net(prev, new)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(new.grad).all()
    with torch.no_grad():
        ref = net.reference(prev, new)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3 * float(ref.abs().max()))


def test_parameter_gradients_are_bit_reproducible_across_threads():
    # Resumed runs must match uninterrupted ones exactly: no order-dependent reductions.
    _, net = _pair(64)
    prev, new = (t.float() for t in _rows(700, 64))
    threads = torch.get_num_threads()
    grads = []
    try:
        torch.set_num_threads(2)
        for _ in range(3):
            net.zero_grad(set_to_none=True)
            net(prev, new).square().sum().backward()
            grads.append([p.grad.clone() for p in net.parameters()])
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other, strict=True))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("n", "chunk"), [(5, 16), (100, 16), (100, 1000)])
def test_materialize_spreads_chunks_over_threads(threads, n, chunk):
    ref_net, net = _pair(24)
    prev, new = _rows(n, 24)
    with torch.no_grad():
        want = ref_net(prev, new).float()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = new.float()  # in place over new
        materialize(net, prev.float(), out, out, chunk_rows=chunk)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
