"""GPU path of the SML transfer: the stack+conv stage as one Triton kernel, FC layers on cuBLAS.

One program handles ``BLOCK_R`` rows: it loads w_prev and w_new once, forms w_dot, runs
conv1 -> GELU -> conv2 -> GELU entirely in registers and writes H2 already flattened
row-major (``[B, n2*d]``, index ``k*d + m``), the layout fc1 reads. The FC layers are
``addmm`` with the bias folded in and the activation applied in place.

Used by ``TransferNet`` for no-grad forward and ``materialize`` on CUDA tensors with
``impl="fused"`` when Triton is importable; training keeps the autograd fused path.
Everything here imports without Triton or a GPU: :func:`conv_stage` falls back to plain torch,
so the FC plumbing and the bf16 option are testable on CPU.

Precision (``compute_dtype``):

* ``None`` / ``torch.float32``: fp32 storage; the GEMMs follow torch's matmul precision
  (``torch.backends.cuda.matmul.allow_tf32``). With TF32 (10-bit mantissa) expect a max abs
  error around 1e-3 of the output's scale; without it, fp32 rounding only (~1e-6).
* ``torch.bfloat16``: H2, z and the FC weights in bf16 (8-bit mantissa), fp32 accumulation,
  fp32 output. Expect max abs error <= 3e-2 x max|output| (each bf16 rounding is a relative
  2^-9; two GEMMs with K = n2*d and hidden sum them). ``benchmarks/gpu_transfer.py``
  measures the actual error against the fp32 reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_SIGMOID_GELU_SCALE = 1.702
_KIND_CODE = {"sigmoid": 0, "erf": 1, "tanh": 2}


try:  # optional: everything below works without Triton (torch fallback)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

# The kernels are module-level globals: Triton resolves the names a kernel uses (``tl``,
# ``_gelu``) in its module's globals.
if triton is not None:

    @triton.jit
    def _gelu(x, KIND: tl.constexpr):
        if KIND == 0:
            y = x * tl.sigmoid(1.702 * x)
        elif KIND == 1:
            y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        else:
            # 0.5x(1 + tanh(u)) == x * sigmoid(2u): avoids depending on a tanh intrinsic.
            u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            y = x * tl.sigmoid(2.0 * u)
        return y

    @triton.jit
    def _conv_stage_kernel(
        prev_ptr, new_ptr, f1_ptr, f2_ptr, out_ptr,
        n_rows, d, stride_prev, stride_new, eps, out_scale,
        N1: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr, DP: tl.constexpr,
        BLOCK_R: tl.constexpr, KIND: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, DP)
        rmask = rows < n_rows
        cmask = cols < d
        m2 = rmask[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)
        p = tl.load(prev_ptr + r64[:, None] * stride_prev + cols[None, :], mask=m2, other=0.0)
        n = tl.load(new_ptr + r64[:, None] * stride_new + cols[None, :], mask=m2, other=0.0)
        p = p.to(tl.float32)
        n = n.to(tl.float32)
        norm = tl.sqrt(tl.sum(p * p, axis=1))
        dot = p * n / (norm[:, None] + eps)
        ks = tl.arange(0, N2P)
        kmask = ks < N2
        acc = tl.zeros((BLOCK_R, N2P, DP), dtype=tl.float32)
        for j in tl.static_range(N1):
            a0 = tl.load(f1_ptr + j * 3)
            a1 = tl.load(f1_ptr + j * 3 + 1)
            a2 = tl.load(f1_ptr + j * 3 + 2)
            h = _gelu(a0 * p + a1 * n + a2 * dot, KIND)
            f2col = tl.load(f2_ptr + ks * N1 + j, mask=kmask, other=0.0)
            acc += f2col[None, :, None] * h[:, None, :]
        h2 = _gelu(acc, KIND) * out_scale
        offs = r64[:, None, None] * (N2 * d) + ks[None, :, None] * d + cols[None, None, :]
        m3 = rmask[:, None, None] & kmask[None, :, None] & cmask[None, None, :]
        tl.store(out_ptr + offs, h2.to(out_ptr.dtype.element_ty), mask=m3)


def _triton_kernel():
    """The jitted kernel, or None when Triton is not installed."""
    return _conv_stage_kernel if triton is not None else None


def available() -> bool:
    """True when a CUDA device and Triton are both present."""
    return torch.cuda.is_available() and _triton_kernel() is not None


def _gelu_torch(x: Tensor, kind: str) -> Tensor:
    if kind == "sigmoid":
        return x * torch.sigmoid(_SIGMOID_GELU_SCALE * x)
    return F.gelu(x, approximate="tanh" if kind == "tanh" else "none")


def conv_stage_torch(
    prev: Tensor, new: Tensor, f1: Tensor, f2: Tensor, eps: float, kind: str
) -> Tensor:
    """Plain-torch stack+conv stage: ``[B, d] x2 -> H2 flattened row-major [B, n2*d]``."""
    p, n = prev.float(), new.float()
    dot = p * n / (torch.linalg.vector_norm(p, dim=1, keepdim=True) + eps)
    x = torch.stack((p, n, dot), 1)  # [B, 3, d]
    h1 = _gelu_torch(torch.einsum("jc,bcd->bjd", f1.float(), x), kind)
    h2 = _gelu_torch(torch.einsum("kj,bjd->bkd", f2.float(), h1), kind)
    return h2.reshape(new.shape[0], -1)


def conv_stage(
    prev: Tensor,
    new: Tensor,
    f1: Tensor,
    f2: Tensor,
    eps: float,
    kind: str,
    out_dtype: torch.dtype = torch.float32,
    out_scale: float = 1.0,
) -> Tensor:
    """``out_scale`` x H2 as ``[B, n2*d]`` in ``out_dtype``: Triton on CUDA, else torch."""
    kernel = _triton_kernel() if prev.is_cuda else None
    if kernel is None:
        return (conv_stage_torch(prev, new, f1, f2, eps, kind) * out_scale).to(out_dtype)
    b, d = new.shape
    n1, n2 = f1.shape[0], f2.shape[0]
    out = torch.empty(b, n2 * d, dtype=out_dtype, device=new.device)
    if b == 0:
        return out
    prev = prev if prev.stride(1) == 1 else prev.contiguous()
    new = new if new.stride(1) == 1 else new.contiguous()
    dp = max(16, 1 << (d - 1).bit_length())
    n2p = max(2, 1 << (n2 - 1).bit_length())
    # About 8k fp32 accumulators per program (n2p * dp * rows) keeps registers from spilling.
    block_r = max(1, min(64, 8192 // (n2p * dp)))
    grid = ((b + block_r - 1) // block_r,)
    kernel[grid](
        prev, new, f1.float().contiguous(), f2.float().contiguous(), out,
        b, d, prev.stride(0), new.stride(0), float(eps), float(out_scale),
        N1=n1, N2=n2, N2P=n2p, DP=dp, BLOCK_R=block_r, KIND=_KIND_CODE[kind],
        num_warps=4,
    )
    return out


@torch.no_grad()
def transfer_rows_into(
    prev: Tensor,
    new: Tensor,
    params: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    eps: float,
    kind: str,
    out: Tensor,
    compute_dtype: torch.dtype | None = None,
) -> None:
    """``out[:] = f_Θ(prev, new)`` for one chunk of rows, no autograd.

    ``params`` is (F1, F2, W_f, b1, W_o, b2); ``compute_dtype`` is None (fp32) or
    ``torch.bfloat16`` (see the module docstring for the accuracy bound). ``out`` may alias
    ``prev`` or ``new``: they are consumed by the conv stage before ``out`` is written.
    """
    f1, f2, w1, b1, w2, b2 = params
    cd = compute_dtype or torch.float32
    # Sigmoid GELU: carry s*g through the FC layers so each activation is one in-place silu
    # (same folding as the CPU fused path).
    s = _SIGMOID_GELU_SCALE if kind == "sigmoid" else 1.0
    h2 = conv_stage(prev, new, f1, f2, eps, kind, out_dtype=cd, out_scale=s)
    z = torch.addmm(b1.to(cd), h2, w1.t().to(cd), beta=s)
    if kind == "sigmoid":
        F.silu(z, inplace=True)
    else:
        z = F.gelu(z, approximate="tanh" if kind == "tanh" else "none")
    res = torch.addmm(b2.to(cd), z, w2.t().to(cd), alpha=1.0 / s)
    out.copy_(res)
