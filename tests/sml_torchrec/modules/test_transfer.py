"""Tests of the SML transfer f_Θ: reference vs fused vs compiled, gradients, materialise."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sml_torchrec.modules import transfer_triton
from sml_torchrec.modules.transfer import (
    TransferConfig,
    TransferNet,
    choose_backend,
    gelu,
    materialize,
    transfer_flops_per_row,
)

KEYS = {
    "conv1": (10, 3),
    "conv2": (5, 10),
    "fc1.weight": (512, 5 * 13),
    "fc1.bias": (512,),
    "fc2.weight": (13, 512),
    "fc2.bias": (13,),
}


def _net(dim=13, dtype=torch.float64, seed=0, **cfg) -> TransferNet:
    torch.manual_seed(seed)
    net = TransferNet(dim, TransferConfig(**cfg)).to(dtype)
    # Non-trivial biases (nn.Linear's are small) so that bias handling is exercised.
    with torch.no_grad():
        net.fc1.bias.normal_()
        net.fc2.bias.normal_()
    return net


def _rows(n, d, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _values_and_grads(net, prev, new, impl):
    net.config.impl = impl
    net.zero_grad(set_to_none=True)
    new = new.clone().requires_grad_(True)
    out = net(prev, new)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device)
    weight = weight.view_as(out)
    (out * weight).sum().backward()
    grads = {"new": new.grad}
    grads.update({k: p.grad for k, p in net.named_parameters()})
    return out.detach(), grads


def test_parameters_have_contract_names_and_shapes_for_every_impl():
    for impl in ("reference", "fused", "compiled"):
        net = TransferNet(13, TransferConfig(impl=impl))
        assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == KEYS
    net = TransferNet(13)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    net.config.impl = "reference"
    assert list(net.state_dict()) == list(sd)
    other = TransferNet(13, TransferConfig(impl="reference"))
    other.load_state_dict(sd)
    prev, new = _rows(4, 13, torch.float32)
    torch.testing.assert_close(other(prev, new), net(prev, new))


def test_initialisation_follows_pytorch_layer_defaults():
    net = TransferNet(64)
    assert net.conv1.abs().max() <= 1 / math.sqrt(3) and net.conv1.abs().max() > 0.2
    assert net.conv2.abs().max() <= 1 / math.sqrt(10) and net.conv2.abs().max() > 0.1
    assert net.fc1.weight.abs().max() <= 1 / math.sqrt(5 * 64)
    assert net.fc2.weight.abs().max() <= 1 / math.sqrt(512)


def test_flops_per_row_from_config():
    assert transfer_flops_per_row(64) == 403_456
    assert transfer_flops_per_row(64, TransferConfig(n1=10, n2=5, hidden=512)) == (
        3_840 + 6_400 + 327_680 + 65_536
    )
    assert transfer_flops_per_row(8, TransferConfig(n1=2, n2=1, hidden=4)) == 2 * (
        3 * 2 * 8 + 2 * 1 * 8 + 1 * 8 * 4 + 4 * 8
    )


@pytest.mark.parametrize("kind", ["sigmoid", "erf", "tanh"])
def test_reference_is_the_papers_per_row_formula(kind):
    net = _net(dim=5, gelu=kind, impl="reference")
    prev, new = _rows(3, 5)
    out = net(prev, new)
    f1, f2 = net.conv1, net.conv2
    for r in range(3):
        p, n = prev[r], new[r]
        h0 = torch.stack([p, n, p * n / (p.norm() + 1e-8)])  # 3 x d
        h1 = torch.stack([gelu(f1[j] @ h0, kind) for j in range(10)])  # n1 x d
        h2 = torch.stack([gelu(f2[k] @ h1, kind) for k in range(5)])  # n2 x d
        z = gelu(net.fc1.weight @ torch.cat(list(h2)) + net.fc1.bias, kind)  # row-major flat
        torch.testing.assert_close(out[r], net.fc2.weight @ z + net.fc2.bias)


def test_sigmoid_gelu_is_the_authors_approximation():
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    torch.testing.assert_close(gelu(x, "sigmoid"), x / (1 + torch.exp(-1.702 * x)))
    torch.testing.assert_close(gelu(x, "erf"), 0.5 * x * (1 + torch.erf(x / math.sqrt(2))))


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("n", [0, 1, 7])
@pytest.mark.parametrize("d", [5, 13])
def test_shapes_for_small_odd_and_empty_batches(impl, n, d):
    net = _net(dim=d, dtype=torch.float32, impl=impl, chunk_rows=4)
    prev, new = _rows(n, d, torch.float32)
    new.requires_grad_(True)
    out = net(prev, new)
    assert out.shape == (n, d) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert new.grad.shape == (n, d)
    with torch.no_grad():
        assert net(prev, new).shape == (n, d)


def test_rejects_bad_shapes_and_config():
    net = TransferNet(8)
    with pytest.raises(ValueError):
        net(torch.zeros(3, 8), torch.zeros(4, 8))
    with pytest.raises(ValueError):
        net(torch.zeros(3, 7), torch.zeros(3, 7))
    with pytest.raises(ValueError):
        TransferConfig(impl="cuda")
    with pytest.raises(ValueError):
        TransferConfig(gelu="relu")
    with pytest.raises(ValueError, match="precision"):
        TransferConfig(precision="fp16")
    net.config.impl = "nope"
    with pytest.raises(ValueError):
        net(torch.zeros(3, 8), torch.zeros(3, 8))


# fp64: the fused path re-associates sums and folds 1.702 into other constants, so it
# differs from the reference by rounding only; 1e-10 would catch any real difference.
@pytest.mark.parametrize("kind", ["sigmoid", "erf", "tanh"])
def test_fused_matches_reference_values_and_gradients(kind):
    net = _net(gelu=kind, chunk_rows=8)
    prev, new = _rows(37, 13)
    ref, ref_g = _values_and_grads(net, prev, new, "reference")
    out, g = _values_and_grads(net, prev, new, "fused")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert set(g) == set(ref_g) == {"new"} | set(KEYS)
    for k in ref_g:
        assert ref_g[k] is not None and ref_g[k].abs().sum() > 0, k
        torch.testing.assert_close(g[k], ref_g[k], rtol=1e-9, atol=1e-10, msg=k)


def test_fused_float32_within_stated_tolerance():
    net = _net(dtype=torch.float32, chunk_rows=16)
    prev, new = _rows(50, 13, torch.float32)
    ref, ref_g = _values_and_grads(net, prev, new, "reference")
    out, g = _values_and_grads(net, prev, new, "fused")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for k in ref_g:
        torch.testing.assert_close(g[k], ref_g[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_no_gradient_reaches_prev_and_w_dot_is_constant(impl):
    net = _net(impl=impl)
    prev, new = _rows(6, 13)
    prev.requires_grad_(True)
    new.requires_grad_(True)
    net(prev, new).sum().backward()
    assert prev.grad is None
    # With F1 reading only the w_dot slot, new's sole path into the output is w_dot, which is
    # a constant: its gradient must be exactly zero (the same net differentiating through
    # w_dot would give a non-zero gradient).
    with torch.no_grad():
        net.conv1[:, :2] = 0
    new.grad = None
    net(prev, new).sum().backward()
    assert torch.count_nonzero(new.grad) == 0
    assert net.conv1.grad[:, 2].abs().sum() > 0


def test_no_grad_forward_matches_autograd_forward():
    net = _net(dtype=torch.float32, chunk_rows=5)
    prev, new = _rows(23, 13, torch.float32)
    with_grad = net(prev, new)
    with torch.no_grad():
        lean = net(prev, new)
    assert with_grad.requires_grad and not lean.requires_grad
    torch.testing.assert_close(lean, with_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", "fused", "compiled"])
def test_constant_parameters_send_gradient_to_new_only(impl):
    # How the transfer-wrapped embedding runs step 1: Θ constant, gradient to new only.
    net = _net(impl=impl)
    prev, new = _rows(9, 13)
    want = net.reference(prev, new).detach()
    new.requires_grad_(True)
    consts = tuple(t.detach() for t in net.params())
    out = net(prev, new, consts)
    out.sum().backward()
    assert new.grad is not None and all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(out, want)
    # the same through functional_call, which swaps the module's parameters instead
    new.grad = None
    named = {k: v.detach() for k, v in net.named_parameters()}
    torch.func.functional_call(net, named, (prev, new)).sum().backward()
    assert new.grad is not None and all(p.grad is None for p in net.parameters())


def test_given_parameters_are_the_ones_used():
    net, other = _net(seed=0), _net(seed=5)
    prev, new = _rows(7, 13)
    for impl in ("reference", "fused"):
        net.config.impl = other.config.impl = impl
        torch.testing.assert_close(net(prev, new, other.params()), other(prev, new))
        with torch.no_grad():
            torch.testing.assert_close(net(prev, new, other.params()), other(prev, new))


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_materialize_in_place_equals_forward(impl, chunk):
    net = _net(dtype=torch.float32, impl=impl)
    prev, new = _rows(29, 13, torch.float32)
    with torch.no_grad():
        expected = net.reference(prev, new)
    table = prev.clone()
    materialize(net, table, new, out=table, chunk_rows=chunk)
    torch.testing.assert_close(table, expected, rtol=1e-5, atol=1e-5)
    # out aliasing `new` works too, and the default chunk size comes from the config
    table = new.clone()
    net.config.chunk_rows = chunk
    materialize(net, prev, table, out=table)
    torch.testing.assert_close(table, expected, rtol=1e-5, atol=1e-5)


def test_materialize_uses_chunks_and_handles_strided_out():
    net = _net(dtype=torch.float32, chunk_rows=1000)
    prev, new = _rows(11, 13, torch.float32)
    seen = []
    reference = net.reference
    net.reference = lambda p, n, *a: seen.append(len(n)) or reference(p, n, *a)
    net.config.impl = "reference"
    out = torch.empty(11, 13)
    materialize(net, prev, new, out, chunk_rows=4)
    del net.reference
    assert seen == [4, 4, 3]
    net.config.impl = "fused"
    wide = torch.full((11, 20), 7.0)
    materialize(net, prev, new, wide[:, 3:16], chunk_rows=4)
    torch.testing.assert_close(wide[:, 3:16], out, rtol=1e-5, atol=1e-5)
    assert (wide[:, :3] == 7).all() and (wide[:, 16:] == 7).all()
    empty = torch.empty(0, 13)
    materialize(net, empty, empty, empty)
    with pytest.raises(ValueError):
        materialize(net, prev, new, torch.empty(10, 13))


def _compile_or_skip(fn):
    try:
        return fn()
    except Exception as e:  # inductor needs a working C++ toolchain
        if "compile" in type(e).__name__.lower() or "Inductor" in type(e).__name__:
            pytest.skip(f"torch.compile unavailable here: {type(e).__name__}")
        raise


def test_compiled_matches_reference_values_gradients_and_materialize():
    net = _net(dtype=torch.float32, chunk_rows=16)
    prev, new = _rows(40, 13, torch.float32)
    ref, ref_g = _values_and_grads(net, prev, new, "reference")
    out, g = _compile_or_skip(lambda: _values_and_grads(net, prev, new, "compiled"))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for k in ref_g:
        torch.testing.assert_close(g[k], ref_g[k], rtol=1e-4, atol=1e-5, msg=k)
    table = prev.clone()
    materialize(net, table, new, table, chunk_rows=7)
    torch.testing.assert_close(table, ref, rtol=1e-5, atol=1e-5)
    assert net(prev[:1], new[:1]).shape == (1, 13)


# --- on CUDA: TransferNet runs on the Triton kernels (transfer_triton, tested on their own too) -


needs_triton = pytest.mark.skipif(not transfer_triton.available(), reason="needs CUDA + Triton")


@needs_triton
def test_cuda_fused_materialize_matches_reference():
    net = _net(dim=64, dtype=torch.float32).cuda()
    prev, new = (t.cuda() for t in _rows(5000, 64, torch.float32))
    with torch.no_grad():
        ref = net.reference(prev, new)
    out = prev.clone()
    assert choose_backend(net.config, new) == "triton"
    materialize(net, out, new, out, chunk_rows=1999)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@needs_triton
@pytest.mark.parametrize(
    "kind,precision,out_tol,grad_tol",
    # fc2's gradients sum 3001 rows of weights that nearly cancel: in float32 the CPU lands at
    # 2e-4 of the largest entry here too, and with bf16 GEMM inputs the torch twin of these
    # kernels at 8.3e-2 (fc2's weight; TF32 rounds 8x finer). A wrong kernel is off by O(1).
    [("sigmoid", "fp32", 1e-5, 1e-3), ("erf", "fp32", 1e-5, 1e-3),
     ("sigmoid", "tf32", 3e-3, 6e-2), ("sigmoid", "bf16", 2e-2, 0.2)],
)
def test_cuda_fused_training_matches_float64_reference(kind, precision, out_tol, grad_tol):
    net = _net(dim=37, dtype=torch.float64, gelu=kind, precision=precision)
    prev, new = _rows(3001, 37)
    ref_out, ref_grads = _values_and_grads(net, prev, new, "reference")
    gpu = copy.deepcopy(net).float().cuda()  # .cuda() would convert ref_grads in place too
    assert choose_backend(gpu.config, new.float().cuda()) == "triton"
    out, grads = _values_and_grads(gpu, prev.float().cuda(), new.float().cuda(), "fused")
    assert (out.double().cpu() - ref_out).abs().max() <= out_tol * ref_out.abs().max()
    for k, g in ref_grads.items():
        err = (grads[k].double().cpu() - g).abs().max() / g.abs().max()
        assert err <= grad_tol, (k, err.item())
