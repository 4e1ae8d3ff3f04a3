"""GPU path of the SML transfer f_Θ: Triton kernels for materialise and for training.

f_Θ (``transfer.py`` states it) for a chunk of rows runs as two kernels::

    conv stage   [B, d] x2 -> H2 [B, n2*d]     stack, w_dot, conv1, GELU, conv2, GELU in registers
    fused MLP    H2 -> W_t [B, d]              fc1, GELU, fc2 with fc1's output kept on chip

The fused MLP walks fc1's hidden units in blocks: a block of u = H2 W_fᵀ + b1 is accumulated
on the tensor cores, activated in registers and multiplied straight into fc2's accumulator, so
fc1's output (the widest tensor of f_Θ, ``hidden`` columns) never reaches device memory. What
does is H2 (n2*d values a row, written once and read once) and the inputs and output. Each
block of hidden units needs the block's whole H2: either read again from L2 for each (in steps
of ``BLOCK_K`` columns), or, with ``BLOCK_K`` = 0, read once into shared memory where it stays
while the loop streams the weights (at 128 rows in bf16, 3.7 kB loaded a row instead of 8.2 kB;
which is faster is the autotuner's choice, since the kept H2 takes most of the shared memory
and leaves fewer stages for the weights). With
:data:`ONE_KERNEL` the fused MLP kernel runs the conv stage itself first, for its own block of
rows, and reads H2 back while it is in L2: one launch, in which thread blocks in the conv phase
and in the tensor-core phase can share a multiprocessor (two launches run each part at its own
occupancy instead; which is faster is measured on the GPU).

Training (:class:`TransferRowsFunction`): the forward is the same two kernels and also keeps fc1's
pre-activation u, the one tensor the backward cannot cheaply recompute (it would cost fc1's
GEMM again); H2 is kept too (the conv stage writes it anyway). The backward is

* one kernel for fc2 and the activation: dz = dout W_o (a short GEMM, K = d), du = dz ⊙
  GELU'(u), and per-program partial sums of dW_o = doutᵀ GELU(u) and db1 = Σ du (z = GELU(u)
  stays on chip; only du is written);
* two large GEMMs on cuBLAS (K = the chunk's rows, or hidden): dW_f = duᵀ H2, dH2 = du W_f;
* one kernel for the conv stage backward: it recomputes conv1 and conv2 from the inputs in
  registers, takes dH2 to dŴ_t and writes per-program partial sums of dF1 and dF2.

Partial sums are summed after the launch: no atomics, so every kernel here can be rerun, which
Triton's autotuner does, and gives the same sums run to run.

Precision (``TransferConfig.precision``, ``PRECISIONS``):

* ``"fp32"`` (the default): IEEE fp32 throughout. The FC layers' products run on cuBLAS (fc1's
  output goes through memory; see :func:`mlp` for why), the conv stages on the kernels above.
* ``"tf32"``: the products on TF32 tensor cores (10-bit mantissa), the fused MLP kernel.
* ``"bf16"``: H2, u, du, z and the FC weights in bf16 (8-bit mantissa), fp32 accumulation.

Inputs, output, accumulators and the conv stage stay fp32 in every mode. With TF32 and bf16 every
activation takes the form x (1 + tanh w) / 2 on ``tanh.approx.f32`` (one MUFU op, relative error
2^-11, where a sigmoid costs two and a division); for the sigmoid GELU the conv stage also folds
the form's scales into F1 and F2, leaving one MUFU op and one FMA an activation (the conv stage
is most of the vector work of materialise). For negative inputs 1 + tanh w cancels, so an
activation's absolute error reaches |x| 2^-12: of the order of TF32's own rounding. Under
Triton's interpreter the tanh form runs on an exact tanh, so the tests there check its algebra.
``benchmarks/gpu_transfer.py`` reports each mode's error against an fp64 reference.

Everything here imports and runs without a GPU: on CUDA tensors with Triton installed the
kernels run; under Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is imported)
they run on CPU tensors, which is how the tests check them on machines without a GPU; elsewhere
each step has a plain-torch twin computing the same algebra.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from sml_torchrec.modules.transfer import PRECISIONS, Params, gelu

__all__ = [
    "BLOCKS",
    "ONE_KERNEL",
    "PRECISIONS",
    "TransferRowsFunction",
    "available",
    "conv_stage",
    "interpreting",
    "jit_kernel",
    "kernels_run_on",
    "transfer_rows",
    "transfer_rows_into",
    "tuned_configs",
]

_KIND_CODE = {"sigmoid": 0, "erf": 1, "tanh": 2}

try:  # optional: everything below works without Triton (torch twins)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

# Kernels are module-level globals: Triton resolves the names a kernel uses (``tl``, ``_dot``)
# in its module's globals.
if triton is not None:

    @triton.jit
    def _tanh_approx(x, FAST: tl.constexpr):
        # FAST = 1: one MUFU op (tanh.approx.f32, relative error 2^-11) where a sigmoid costs an
        # exp and a division: TF32 and bf16 only, whose products round about as coarsely.
        # FAST = 2 (Triton's interpreter, which runs no PTX): the same algebra, exact tanh.
        if FAST == 1:
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x],
                                          dtype=tl.float32, is_pure=True, pack=1)
        else:
            t = 2.0 * tl.sigmoid(2.0 * x) - 1.0
        return t

    @triton.jit
    def _tanh_arg(x, KIND: tl.constexpr):
        """w with GELU(x) = x (1 + tanh w) / 2: sigmoid(1.702x) = (1 + tanh(0.851x)) / 2 for
        the sigmoid GELU, w = 0.79788 (x + 0.044715 x³) for the tanh GELU."""
        if KIND == 0:
            w = 0.851 * x
        else:
            w = x * (0.7978845608028654 + 0.035677408136300125 * x * x)
        return w

    @triton.jit
    def _gelu_and_grad(x, KIND: tl.constexpr, FAST: tl.constexpr):
        """(GELU(x), d GELU(x) / dx) for the three kinds, sharing their transcendental; where only
        GELU is used the compiler drops the derivative. With ``FAST`` one MUFU op (tanh.approx)."""
        if KIND == 1:
            cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
            y = x * cdf
            g = cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
        elif FAST:
            # s = (1 + t) / 2 with t = tanh w, s(1 - s) = (1 - t²) / 4 in g = s + x s(1 - s) 2w'
            t = _tanh_approx(_tanh_arg(x, KIND), FAST)
            s = 0.5 + 0.5 * t
            if KIND == 0:
                q = 0.4255 * x  # x 2w' / 4, 2w' = 1.702
            else:
                q = 0.3989422804014327 * x * (1.0 + 0.134145 * x * x)
            y = x * s
            g = s + q * (1.0 - t * t)
        else:
            if KIND == 0:
                s = tl.sigmoid(1.702 * x)
                q = 1.702 * x
            else:
                s = tl.sigmoid(2.0 * _tanh_arg(x, KIND))
                q = 1.5957691216057308 * x * (1.0 + 0.134145 * x * x)
            y = x * s
            g = s + q * s * (1.0 - s)
        return y, g

    @triton.jit
    def _gelu_folded(s, FAST: tl.constexpr):
        """``s (1 + tanh s)`` = 1.702 GELU(x) of the sigmoid GELU at s = 0.851 x: one MUFU op and
        one FMA, the scales before and after folded into weights (see :func:`_conv_forward`)."""
        return s + s * _tanh_approx(s, FAST)

    @triton.jit
    def _dot(a, b, acc, DOT_F32: tl.constexpr):
        """``acc + a @ b`` on tensor cores (fp32 operands as TF32). ``DOT_F32`` (set under the
        interpreter only) multiplies bf16 operands as fp32, which is exact: Triton 3.6's
        interpreter multiplies bf16 bit patterns."""
        if DOT_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, b, acc, input_precision="tf32")

    @triton.jit
    def _conv1(f1_ptr, j, p, n, dot, scale):
        """Filter j of conv1 before its activation, times ``scale`` (folded into the three
        weights): scale F1[j] · [w_prev; w_new; w_dot]."""
        return ((tl.load(f1_ptr + j * 3) * scale) * p + (tl.load(f1_ptr + j * 3 + 1) * scale) * n
                + (tl.load(f1_ptr + j * 3 + 2) * scale) * dot)

    @triton.jit
    def _conv_forward(prev_ptr, new_ptr, f1_ptr, f2_ptr, rows, n_rows, d, stride_prev,
                      stride_new, eps, N1: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr,
                      DP: tl.constexpr, BLOCK_R: tl.constexpr, KIND: tl.constexpr,
                      FAST: tl.constexpr, FOLD: tl.constexpr):
        """For a block of rows: w_prev, w_new, w_dot (fp32 ``[BLOCK_R, DP]``), conv2 before its
        activation (``[BLOCK_R, N2P, DP]``), and H2's offsets ``k*d + m`` and mask.

        ``FOLD`` (the sigmoid GELU with ``FAST``): conv1's weights are scaled by 0.851 and
        conv2's by 0.5, so that conv1's activation is :func:`_gelu_folded` (1.702 GELU) and
        conv2 comes back times 0.851, ready for :func:`_activate_h2`: the scales of the
        activations' arguments and values cost no per-element multiply.
        """
        cols = tl.arange(0, DP)
        rmask = rows < n_rows
        cmask = cols < d
        r64 = rows.to(tl.int64)
        m2 = rmask[:, None] & cmask[None, :]
        p = tl.load(prev_ptr + r64[:, None] * stride_prev + cols[None, :], mask=m2, other=0.0)
        n = tl.load(new_ptr + r64[:, None] * stride_new + cols[None, :], mask=m2, other=0.0)
        p = p.to(tl.float32)
        n = n.to(tl.float32)
        dot = p * n / (tl.sqrt(tl.sum(p * p, axis=1))[:, None] + eps)
        ks = tl.arange(0, N2P)
        kmask = ks < N2
        v = tl.zeros((BLOCK_R, N2P, DP), dtype=tl.float32)
        for j in tl.static_range(N1):
            f2col = tl.load(f2_ptr + ks * N1 + j, mask=kmask, other=0.0)
            if FOLD:
                h1 = _gelu_folded(_conv1(f1_ptr, j, p, n, dot, 0.851), FAST)
                f2col = 0.5 * f2col
            else:
                h1 = _gelu_and_grad(_conv1(f1_ptr, j, p, n, dot, 1.0), KIND, FAST)[0]
            v += f2col[None, :, None] * h1[:, None, :]
        offs = r64[:, None, None] * (N2 * d) + ks[None, :, None] * d + cols[None, None, :]
        m3 = rmask[:, None, None] & kmask[None, :, None] & cmask[None, None, :]
        return p, n, dot, v, offs, m3

    @triton.jit
    def _activate_h2(v, KIND: tl.constexpr, FAST: tl.constexpr):
        """H2 from conv2 as :func:`_conv_forward` returns it with ``FOLD = KIND == 0 and FAST``."""
        if KIND == 0 and FAST:
            y = 0.5875440658049353 * _gelu_folded(v, FAST)  # 1 / 1.702
        else:
            y = _gelu_and_grad(v, KIND, FAST)[0]
        return y

    @triton.jit
    def _conv_stage_kernel(
        prev_ptr, new_ptr, f1_ptr, f2_ptr, h2_ptr,
        n_rows, d, stride_prev, stride_new, eps,
        N1: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr, DP: tl.constexpr,
        BLOCK_R: tl.constexpr, KIND: tl.constexpr, FAST: tl.constexpr,
    ):
        """H2 of a block of rows, written flattened row-major: ``h2[r, k*d + m]``."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        _, _, _, v, offs, m3 = _conv_forward(prev_ptr, new_ptr, f1_ptr, f2_ptr, rows, n_rows, d,
                                             stride_prev, stride_new, eps, N1, N2, N2P, DP,
                                             BLOCK_R, KIND, FAST, KIND == 0 and FAST)
        h2 = _activate_h2(v, KIND, FAST)
        tl.store(h2_ptr + offs, h2.to(h2_ptr.dtype.element_ty), mask=m3)

    @triton.jit
    def _conv_into_h2(prev_ptr, new_ptr, f1_ptr, f2_ptr, h2_ptr, n_rows, d, stride_prev,
                      stride_new, eps, N1: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr,
                      DP: tl.constexpr, BLOCK_R: tl.constexpr, CONV_R: tl.constexpr,
                      KIND: tl.constexpr, FAST: tl.constexpr):
        """The one-kernel transfer's conv phase: this program's ``BLOCK_R`` rows of H2 from
        ``prev`` and ``new``, ``CONV_R`` rows at a time, written to ``h2``, from where the
        products read them back while they are still in L2."""
        for r0 in range(0, BLOCK_R, CONV_R):
            sub = tl.program_id(0) * BLOCK_R + r0 + tl.arange(0, CONV_R)
            _, _, _, v, offs, m3 = _conv_forward(
                prev_ptr, new_ptr, f1_ptr, f2_ptr, sub, n_rows, d, stride_prev, stride_new,
                eps, N1, N2, N2P, DP, CONV_R, KIND, FAST, KIND == 0 and FAST)
            tl.store(h2_ptr + offs, _activate_h2(v, KIND, FAST).to(h2_ptr.dtype.element_ty),
                     mask=m3)
        tl.debug_barrier()  # every thread's H2 rows written before any is read

    @triton.jit
    def _h2_columns(h2_ptr, r64, rmask, ks, K):
        """H2's columns ``ks`` of a block of rows (zeros past K or past the rows)."""
        return tl.load(h2_ptr + r64[:, None] * K + ks[None, :],
                       mask=rmask[:, None] & (ks < K)[None, :], other=0.0)

    @triton.jit
    def _w1t_block(w1t_ptr, ks, hs, K, H):
        """W_fᵀ's rows ``ks`` and columns ``hs`` (zeros past K or H)."""
        return tl.load(w1t_ptr + ks[:, None] * H + hs[None, :],
                       mask=(ks < K)[:, None] & (hs < H)[None, :], other=0.0)

    @triton.jit
    def _fc1_streamed(h2_ptr, w1t_ptr, r64, rmask, hs, acc, K, H, BLOCK_K: tl.constexpr,
                      DOT_F32: tl.constexpr):
        """``acc`` + a block of rows' H2 times W_fᵀ's columns ``hs``, sweeping H2's columns
        ``BLOCK_K`` at a time (each sweep reads the block's H2 again)."""
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            a = _h2_columns(h2_ptr, r64, rmask, ks, K)
            acc = _dot(a, _w1t_block(w1t_ptr, ks, hs, K, H), acc, DOT_F32)
        return acc

    @triton.jit
    def _mlp_kernel(
        h2_ptr, w1t_ptr, b1_ptr, w2t_ptr, b2_ptr, out_ptr, u_ptr,
        prev_ptr, new_ptr, f1_ptr, f2_ptr,
        n_rows, stride_out, stride_prev, stride_new, eps,
        K: tl.constexpr, H: tl.constexpr, d: tl.constexpr, DP: tl.constexpr,
        N1: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr, KIND: tl.constexpr,
        FAST: tl.constexpr, DOT_F32: tl.constexpr, SAVE_U: tl.constexpr, KA: tl.constexpr,
        KB: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
        CONV_R: tl.constexpr,
    ):
        """``out = GELU(h2 W1ᵀ + b1) W2ᵀ + b2`` for a block of rows; fc1's output stays on chip.

        ``w1t`` is W_fᵀ ``[K, H]`` and ``w2t`` is W_oᵀ ``[H, d]``, both contiguous in the compute
        dtype; with ``SAVE_U`` the pre-activation u ``[rows, H]`` is stored for the backward.
        ``CONV_R`` > 0: first compute this block's H2 here (:func:`_conv_into_h2`): the whole
        transfer in one kernel. ``CONV_R`` = 0: ``h2`` holds H2 already.
        ``BLOCK_K`` > 0: each block of hidden units sweeps H2 (:func:`_fc1_streamed`).
        ``BLOCK_K`` = 0: the block's H2 is read once, before the loop over hidden units, as two
        power-of-two pieces of columns ``[0, KA)`` and ``[KA, KA + KB)`` (:func:`_k_pieces`),
        and stays on chip; the loop then streams only the weights.
        """
        if CONV_R > 0:
            _conv_into_h2(prev_ptr, new_ptr, f1_ptr, f2_ptr, h2_ptr, n_rows, d, stride_prev,
                          stride_new, eps, N1, N2, N2P, DP, BLOCK_R, CONV_R, KIND, FAST)
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < n_rows
        r64 = rows.to(tl.int64)
        cols = tl.arange(0, DP)
        cmask = cols < d
        if BLOCK_K == 0:
            ka = tl.arange(0, KA)
            a_lo = _h2_columns(h2_ptr, r64, rmask, ka, K)
            if KB > 0:
                kb = KA + tl.arange(0, KB)
                a_hi = _h2_columns(h2_ptr, r64, rmask, kb, K)
        acc_out = tl.zeros((BLOCK_R, DP), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            hmask = hs < H
            acc = tl.zeros((BLOCK_R, BLOCK_H), dtype=tl.float32)
            if BLOCK_K == 0:
                acc = _dot(a_lo, _w1t_block(w1t_ptr, ka, hs, K, H), acc, DOT_F32)
                if KB > 0:
                    acc = _dot(a_hi, _w1t_block(w1t_ptr, kb, hs, K, H), acc, DOT_F32)
            else:
                acc = _fc1_streamed(h2_ptr, w1t_ptr, r64, rmask, hs, acc, K, H, BLOCK_K, DOT_F32)
            u = acc + tl.load(b1_ptr + hs, mask=hmask, other=0.0)[None, :]
            if SAVE_U:
                tl.store(u_ptr + r64[:, None] * H + hs[None, :], u.to(u_ptr.dtype.element_ty),
                         mask=rmask[:, None] & hmask[None, :])
            w2 = tl.load(w2t_ptr + hs[:, None] * d + cols[None, :],
                         mask=hmask[:, None] & cmask[None, :], other=0.0)
            # Masked hidden units have u = 0, GELU(0) = 0, and zero rows of w2t.
            z = _gelu_and_grad(u, KIND, FAST)[0].to(w2.dtype)
            acc_out = _dot(z, w2, acc_out, DOT_F32)
        out = acc_out + tl.load(b2_ptr + cols, mask=cmask, other=0.0)[None, :]
        tl.store(out_ptr + r64[:, None] * stride_out + cols[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])

    @triton.jit
    def _mlp_backward_kernel(
        g_ptr, w2_ptr, u_ptr, du_ptr, z_ptr, dw2_ptr, db1_ptr,
        n_rows, H: tl.constexpr, d: tl.constexpr,
        DP: tl.constexpr, KIND: tl.constexpr, FAST: tl.constexpr, DZ_GIVEN: tl.constexpr,
        DOT_F32: tl.constexpr, ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        """``du = dz ⊙ GELU'(u)`` for a block of hidden units over this program's rows, and the
        partial sums over those rows of db1 = Σ du and, without ``DZ_GIVEN``, of
        dW_o = Σ doutᵀ GELU(u).

        Program (i, j) takes units ``j*BLOCK_H ...`` of rows ``i*ROWS ...`` (``BLOCK_R`` at a
        time) and writes ``db1[i, units]`` and ``dw2[i, :, units]``, so no sum crosses programs
        (no atomics: the launch can be rerun, as the autotuner does).
        Without ``DZ_GIVEN``, ``g`` is dout ``[rows, d]`` and dz = dout W_o is computed here
        (``w2`` is W_o ``[d, H]``, in dout's dtype): z = GELU(u) never leaves the chip. With
        ``DZ_GIVEN`` (IEEE fp32, whose products run on cuBLAS) ``g`` is dz ``[rows, H]``, and
        z is stored to ``z`` for cuBLAS's dW_o.
        """
        hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        hmask = hs < H
        cols = tl.arange(0, DP)
        cmask = cols < d
        if not DZ_GIVEN:
            w2 = tl.load(w2_ptr + cols[:, None] * H + hs[None, :],
                         mask=cmask[:, None] & hmask[None, :], other=0.0)
        db1 = tl.zeros((BLOCK_H,), dtype=tl.float32)
        dw2 = tl.zeros((DP, BLOCK_H), dtype=tl.float32)
        tl.static_assert(ROWS % BLOCK_R == 0, "ROWS must be a multiple of BLOCK_R")
        part = tl.program_id(0).to(tl.int64)
        for r0 in range(0, ROWS, BLOCK_R):  # constant trips (Triton's interpreter needs them)
            rows = part * ROWS + r0 + tl.arange(0, BLOCK_R)
            rmask = rows < n_rows
            m2 = rmask[:, None] & hmask[None, :]
            offs = rows[:, None] * H + hs[None, :]
            # Masked rows and units load u = 0 and dz = 0: du = 0 there, and GELU(0) = 0.
            if DZ_GIVEN:
                dz = tl.load(g_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            else:
                g = tl.load(g_ptr + rows[:, None] * d + cols[None, :],
                            mask=rmask[:, None] & cmask[None, :], other=0.0)
                dz = _dot(g, w2, tl.zeros((BLOCK_R, BLOCK_H), dtype=tl.float32), DOT_F32)
            u = tl.load(u_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            z, dgelu = _gelu_and_grad(u, KIND, FAST)
            du = (dz * dgelu).to(du_ptr.dtype.element_ty)
            tl.store(du_ptr + offs, du, mask=m2)
            db1 += tl.sum(du.to(tl.float32), axis=0)  # of du as stored, as dW_f's GEMM reads it
            if DZ_GIVEN:
                tl.store(z_ptr + offs, z.to(z_ptr.dtype.element_ty), mask=m2)
            else:
                dw2 = _dot(tl.trans(g), z.to(g.dtype), dw2, DOT_F32)
        tl.store(db1_ptr + part * H + hs, db1, mask=hmask)
        if not DZ_GIVEN:
            tl.store(dw2_ptr + part * (d * H) + cols[:, None] * H + hs[None, :], dw2,
                     mask=cmask[:, None] & hmask[None, :])

    @triton.jit
    def _conv_backward_kernel(
        prev_ptr, new_ptr, f1_ptr, f2_ptr, dh2_ptr, dnew_ptr, df1_ptr, df2_ptr,
        n_rows, d, stride_prev, stride_new, eps,
        N1: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr, DP: tl.constexpr,
        BLOCK_R: tl.constexpr, KIND: tl.constexpr, FAST: tl.constexpr,
    ):
        """dŴ_t of a block of rows from dH2, and this program's partial sums of dF1, dF2.

        Only Ŵ_t's slot of the stack carries a gradient (w_prev and w_dot are constants).
        Partials go to ``df1[pid, j*3 + c]`` and ``df2[pid, k*N1 + j]``.
        """
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        p, n, dot, v, offs, m3 = _conv_forward(prev_ptr, new_ptr, f1_ptr, f2_ptr, rows, n_rows, d,
                                               stride_prev, stride_new, eps, N1, N2, N2P, DP,
                                               BLOCK_R, KIND, FAST, False)
        ks = tl.arange(0, N2P)
        kmask = ks < N2
        # conv2's padding channels (k >= N2) set to -0.0, a constant the compiler can drop from
        # the sums over k (x + -0.0 is x; x + 0.0 is not, for x = -0.0): with n2 = 5 padded to 8
        # that removes 5-13% of this kernel's instructions (benchmarks/triton_kernels.py).
        kpad = kmask[None, :, None]
        dh2 = tl.load(dh2_ptr + offs, mask=m3, other=0.0).to(tl.float32)
        dv = tl.where(kpad, dh2 * _gelu_and_grad(v, KIND, FAST)[1], -0.0)
        dn = tl.zeros((BLOCK_R, DP), dtype=tl.float32)
        for j in tl.static_range(N1):
            a = _conv1(f1_ptr, j, p, n, dot, 1.0)
            h1, dh1da = _gelu_and_grad(a, KIND, FAST)
            f2col = tl.load(f2_ptr + ks * N1 + j, mask=kmask, other=0.0)
            tl.store(df2_ptr + pid * (N2 * N1) + ks * N1 + j,
                     tl.sum(tl.sum(dv * h1[:, None, :], axis=2), axis=0), mask=kmask)
            da = tl.sum(tl.where(kpad, f2col[None, :, None] * dv, -0.0), axis=1) * dh1da
            tl.store(df1_ptr + pid * (N1 * 3) + j * 3, tl.sum(tl.sum(da * p, axis=1), axis=0))
            tl.store(df1_ptr + pid * (N1 * 3) + j * 3 + 1, tl.sum(tl.sum(da * n, axis=1), axis=0))
            tl.store(df1_ptr + pid * (N1 * 3) + j * 3 + 2,
                     tl.sum(tl.sum(da * dot, axis=1), axis=0))
            dn += tl.load(f1_ptr + j * 3 + 1) * da
        cols = tl.arange(0, DP)
        tl.store(dnew_ptr + rows.to(tl.int64)[:, None] * d + cols[None, :], dn,
                 mask=(rows < n_rows)[:, None] & (cols < d)[None, :])


def available() -> bool:
    """True when a CUDA device and Triton are both present."""
    return triton is not None and torch.cuda.is_available()


def interpreting() -> bool:
    """True when this module's kernels were built for Triton's interpreter (the CPU): Triton
    was imported with ``TRITON_INTERPRET=1`` set."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_conv_stage_kernel, InterpretedFunction)


def kernels_run_on(t: Tensor) -> bool:
    """Whether the Triton kernels (rather than their torch twins) compute for ``t``'s device."""
    if triton is None:
        return False
    return t.is_cuda or (interpreting() and t.device.type == "cpu")


def _compute_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _fast(precision: str) -> int:
    """The kernels' ``FAST``: 0 for fp32 (exact activations); for TF32 and bf16 the tanh form
    of every activation, on ``tanh.approx`` (1) on a GPU, on an exact tanh (2) under Triton's
    interpreter, so that the tests there check the same algebra."""
    if precision == "fp32":
        return 0
    return 2 if interpreting() else 1


@contextmanager
def _cublas_precision(precision: str) -> Iterator[None]:
    """cuBLAS's fp32 GEMMs in TF32 for ``"tf32"`` and in IEEE fp32 otherwise, for the block.

    Through ``torch.set_float32_matmul_precision``, which neither of torch's two TF32 flag APIs
    objects to afterwards (setting one of them and reading the other raises).
    """
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _pow2(n: int, least: int) -> int:
    return max(least, 1 << (n - 1).bit_length())


def _k_pieces(k: int) -> tuple[int, int]:
    """(KA, KB): H2's ``k`` columns as two power-of-two pieces of at least 16 (a tensor-core
    product's least depth), KA the largest power of two within k and KB the rest padded (0 if
    none): 320 = 256 + 64. Padding the whole to a power of two instead would add up to k - 1
    columns of zeros to fc1's products (192 at 320)."""
    ka = max(16, 1 << (k.bit_length() - 1))
    return ka, (_pow2(k - ka, 16) if k > ka else 0)


# --- block sizes ------------------------------------------------------------------------------
# On a GPU each kernel is autotuned once per shape key over its list (the first entry, tiny, is
# the interpreter's and is left out there). The GPU entries compile for sm_90 without spilling
# registers at the authors' sizes (d = 64, n1 = 10, n2 = 5, hidden = 512) for every precision that
# launches them, but for 4 of the 139 (kernel, precision, entry, save_u) builds, which spill
# 8-64 bytes a thread (``benchmarks/triton_kernels.py`` compiles them all, no GPU needed). The
# fused MLP's BLOCK_K = 0 entries (H2's block kept in shared memory) are sized for bf16: 13 of
# their builds, 12 of them TF32's (2 of the spilling ones among them), need more shared memory
# than a block may have, and the autotuner skips them (it times such a launch as infinite); the
# first of them fits every precision. At BLOCK_R = 128 the FC weights are read from L2 half as
# often per row as at 64. For the conv kernels what counts is rows per warp: in the compiled code
# the conv stage issues the fewest instructions a row at 8 rows a warp (CONV_R / num_warps too),
# its backward at 4 (more rows a warp spill), so those lead; the backward's one-warp entry (the
# interpreter's too) needs no barrier for its sums over rows and issues 10% fewer instructions a
# row in TF32 and 8% fewer in fp32. The MLP backward moves 2.7 kB a row through device memory in
# bf16 and 4.9 kB in TF32 (about 180 and 320 SM cycles a row on an H200 at 4 TB/s) against
# 110-150 cycles a row of issued instructions: memory-bound, so its list runs from large tiles to
# small ones with more thread blocks an SM (up to 5 in bf16) to keep more loads in flight.

# kernel: (block names, (blocks..., warps, stages) per configuration, autotune key)
BLOCKS = {
    "conv_stage": (("BLOCK_R",),
                   ((4, 1, 1), (32, 4, 1), (64, 8, 1), (16, 2, 1), (32, 8, 1), (16, 4, 1)),
                   ["N1", "N2", "DP", "KIND", "FAST"]),
    "conv_backward": (("BLOCK_R",),
                      ((4, 1, 1), (16, 4, 1), (32, 8, 1), (16, 8, 1), (8, 4, 1), (4, 1, 1)),
                      ["N1", "N2", "DP", "KIND", "FAST"]),
    "mlp": (("BLOCK_R", "BLOCK_K", "BLOCK_H"),
            ((16, 16, 16, 4, 1), (128, 32, 64, 8, 3), (64, 64, 128, 8, 3), (128, 64, 64, 8, 3),
             (64, 32, 128, 8, 3), (64, 64, 64, 8, 3), (128, 32, 64, 8, 4),
             (64, 0, 32, 4, 2), (64, 0, 64, 4, 2), (128, 0, 16, 8, 2), (128, 0, 32, 8, 3),
             (128, 0, 64, 8, 3), (256, 0, 32, 8, 2)),
            ["K", "H", "d", "KIND", "FAST", "SAVE_U"]),
    "transfer": (("BLOCK_R", "BLOCK_K", "BLOCK_H", "CONV_R"),
                 ((16, 16, 16, 4, 4, 1), (128, 32, 64, 64, 8, 3), (64, 64, 128, 64, 8, 3),
                  (64, 64, 64, 32, 4, 3), (128, 32, 64, 32, 8, 3), (64, 32, 128, 64, 8, 3),
                  (64, 64, 64, 64, 8, 3),
                  (64, 0, 32, 32, 4, 2), (128, 0, 16, 32, 8, 2), (128, 0, 32, 32, 8, 3),
                  (256, 0, 32, 32, 8, 2)),
                 ["K", "H", "d", "N1", "N2", "KIND", "FAST", "SAVE_U"]),
    "mlp_backward": (("BLOCK_R", "BLOCK_H"),
                     ((16, 16, 4, 1), (64, 64, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2),
                      (32, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2)),
                     ["H", "d", "KIND", "FAST", "DZ_GIVEN"]),
}
# conv_backward writes per-program partial sums: the autotuner zeroes them after its trials.
_RESET = {"conv_backward": ["df1_ptr", "df2_ptr"]}
# The one-kernel transfer may write W_t over W_{t-1} (or Ŵ_t) in place: each trial run is undone.
_RESTORE = {"transfer": ["prev_ptr", "new_ptr"]}
# The conv stage inside the fused MLP kernel (one launch; H2 read back while in L2) instead of in
# a kernel of its own (two launches, each at its own occupancy). Both compute the same; which
# is faster is a GPU measurement (benchmarks/gpu_transfer.py times both).
ONE_KERNEL = False
# Rows a program of the MLP backward sums dW_o and db1 over: its partial dW_o (d*H fp32 values,
# 256 bytes a row at d = 64, hidden = 512, written once and read once) stays small beside the
# traffic the kernel saves (z written and read, du read again for db1: 3 kB a row in bf16, 6 kB
# in TF32). A multiple of every BLOCK_R.
ROWS_PER_PROGRAM = 512
_launchers: dict[str, object] = {}


def jit_kernel(name: str):
    """The ``@triton.jit`` function of kernel ``name`` (a key of :data:`BLOCKS`)."""
    return {"conv_stage": _conv_stage_kernel, "conv_backward": _conv_backward_kernel,
            "mlp": _mlp_kernel, "transfer": _mlp_kernel,
            "mlp_backward": _mlp_backward_kernel}[name]


def _launcher(name: str):
    """Kernel ``name``: autotuned on a GPU; with the interpreter's fixed small blocks on a CPU
    (the autotuner times runs, which means nothing in the interpreter); with the first GPU
    entry when ``SML_TRITON_AUTOTUNE=0`` (tests: each new shape would compile every entry)."""
    if name not in _launchers:
        names, blocks, key = BLOCKS[name]
        if interpreting():
            _launchers[name] = _Fixed(jit_kernel(name), dict(zip(names, blocks[0])))
        elif os.environ.get("SML_TRITON_AUTOTUNE", "1") == "0":
            b = blocks[1]
            _launchers[name] = _Fixed(jit_kernel(name), {**dict(zip(names, b[:-2])),
                                                      "num_warps": b[-2], "num_stages": b[-1]})
        else:
            _launchers[name] = _autotuned(name)
    return _launchers[name]


def _autotuned(name: str, do_bench=None) -> _Autotuned:
    """Kernel ``name`` under Triton's autotuner over its GPU entries (``do_bench``: the
    autotuner's timer, CUDA events unless given)."""
    names, blocks, key = BLOCKS[name]
    configs = [triton.Config(dict(zip(names, b[:-2])), num_warps=b[-2], num_stages=b[-1])
               for b in blocks[1:]]
    return _Autotuned(triton.autotune(
        configs=configs, key=key, reset_to_zero=_RESET.get(name),
        restore_value=_RESTORE.get(name), do_bench=do_bench)(jit_kernel(name)))


class _Autotuned:
    """``kernel[grid](...)`` through Triton's autotuner, keeping what each tuning found (per
    key: the chosen configuration and every configuration's time) where Triton keeps only the
    last tuning's times."""

    def __init__(self, tuner) -> None:
        self.tuner, self.tunings = tuner, {}

    def __getitem__(self, grid):
        launch = self.tuner[grid]

        def run(*args, **kwargs) -> None:
            known = len(self.tuner.cache)
            launch(*args, **kwargs)
            for key in list(self.tuner.cache)[known:]:  # a new key: this call tuned for it
                self.tunings[key] = (self.tuner.cache[key], dict(self.tuner.configs_timings))
        return run


def _smallest_block_rows(name: str) -> int:
    names, blocks, _ = BLOCKS[name]
    return min(b[names.index("BLOCK_R")] for b in blocks)


class _Fixed:
    """``kernel[grid](...)`` with fixed block sizes, called like an autotuned kernel."""

    def __init__(self, kernel, meta: dict[str, int]) -> None:
        self.kernel, self.meta = kernel, meta

    def __getitem__(self, grid):
        g = grid(self.meta) if callable(grid) else grid
        return lambda *args, **kw: self.kernel[g](*args, **self.meta, **kw)


def tuned_configs() -> dict[str, dict]:
    """What each kernel launched with so far, for benchmark reports: a fixed launcher's blocks
    (``"fixed"``); for an autotuned one, per autotuning key (the shapes and dtypes it tuned for),
    the configuration chosen (``"best"``) and each configuration's median time in µs (``"us"``,
    None for one that could not launch, such as one needing more shared memory than a block may
    have)."""
    def describe(meta: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in meta.items())

    def config(c) -> str:
        return describe({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages})

    out: dict[str, dict] = {}
    for name, launch in _launchers.items():
        if isinstance(launch, _Fixed):
            out[name] = {"fixed": describe(launch.meta)}
            continue
        out[name] = {
            str(key): {"best": config(best),
                       "us": {config(c): (None if t[0] == float("inf") else round(t[0] * 1e3, 2))
                              for c, t in timings.items()}}
            for key, (best, timings) in launch.tunings.items()}
    return out


# --- the steps ------------------------------------------------------------------------------


def conv_stage_torch(
    prev: Tensor, new: Tensor, f1: Tensor, f2: Tensor, eps: float, kind: str
) -> Tensor:
    """Plain-torch stack+conv stage: ``[B, d] x2 -> H2 flattened row-major [B, n2*d]``.

    Differentiable in ``new``, ``f1`` and ``f2`` (w_prev and w_dot are constants).
    """
    p, n = prev.float().detach(), new.float()
    dot = p * n.detach() / (torch.linalg.vector_norm(p, dim=1, keepdim=True) + eps)
    x = torch.stack((p, n, dot), 1)  # [B, 3, d]
    h1 = gelu(torch.einsum("jc,bcd->bjd", f1.float(), x), kind)
    h2 = gelu(torch.einsum("kj,bjd->bkd", f2.float(), h1), kind)
    return h2.reshape(new.shape[0], f2.shape[0] * new.shape[1])


def conv_stage(
    prev: Tensor, new: Tensor, f1: Tensor, f2: Tensor, eps: float, kind: str,
    precision: str = "fp32",
) -> Tensor:
    """H2 as ``[B, n2*d]`` in ``precision``'s compute dtype: the Triton kernel where it runs,
    else torch."""
    out_dtype = _compute_dtype(precision)
    if not kernels_run_on(prev):
        return conv_stage_torch(prev, new, f1, f2, eps, kind).to(out_dtype)
    b, d = new.shape
    n1, n2 = f1.shape[0], f2.shape[0]
    out = torch.empty(b, n2 * d, dtype=out_dtype, device=new.device)
    if b == 0:
        return out
    prev, new = _unit_stride(prev), _unit_stride(new)
    _launcher("conv_stage")[lambda m: (triton.cdiv(b, m["BLOCK_R"]),)](
        prev, new, f1.float().contiguous(), f2.float().contiguous(), out,
        b, d, prev.stride(0), new.stride(0), float(eps),
        N1=n1, N2=n2, N2P=_pow2(n2, 2), DP=_pow2(d, 16), KIND=_KIND_CODE[kind],
        FAST=_fast(precision),
    )
    return out


def _unit_stride(t: Tensor) -> Tensor:
    return t if t.stride(1) == 1 else t.contiguous()


def mlp(
    h2: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, kind: str, precision: str,
    out: Tensor | None = None, save_u: bool = False, conv: tuple | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``GELU(h2 W_fᵀ + b1) W_oᵀ + b2`` as ``[B, d]`` fp32, and u (``[B, H]``) if ``save_u``.

    ``h2`` ``[B, K]`` is in the compute dtype of ``precision``; ``w1`` is W_f ``[H, K]``, ``w2``
    W_o ``[d, H]`` (fp32 parameters; cast here). ``out`` may be a row-strided view. With
    ``conv`` = (prev, new, F1, F2, eps) the kernel computes H2 itself into ``h2`` first (the
    one-kernel transfer; TF32 and bf16 on the kernels only).

    TF32 and bf16 run the fused kernel. IEEE fp32 runs on cuBLAS with u through memory:
    IEEE fp32 has no tensor-core path, and Triton's fp32 dot is an FMA loop at the register limit
    at these tiles (compiled for sm_90: 246-255 registers a thread, up to 208 bytes spilled)
    where cuBLAS's SGEMM is the tuned one; at fp32 rates u's traffic is a small share of the time.
    """
    cd = _compute_dtype(precision)
    b, k = h2.shape
    hidden, d = w1.shape[0], w2.shape[0]
    if out is None:
        out = torch.empty(b, d, dtype=torch.float32, device=h2.device)
    if precision == "fp32" or not kernels_run_on(h2):
        if conv is not None:
            raise ValueError("the one-kernel transfer runs TF32 or bf16 on the Triton kernels")
        with _cublas_precision(precision):
            u = torch.addmm(b1.to(cd), h2, w1.t().to(cd))
            res = torch.addmm(b2.to(cd), gelu(u.float(), kind).to(cd), w2.t().to(cd))
        out.copy_(res)
        return out, (u if save_u else None)
    u = torch.empty(b, hidden, dtype=cd, device=h2.device) if save_u else out
    if b == 0:
        return out, (u if save_u else None)
    w1t = w1.detach().t().to(cd).contiguous()  # [K, H]
    w2t = w2.detach().t().to(cd).contiguous()  # [H, d]
    ka, kb = _k_pieces(k)
    out_rows = out if out.stride(1) == 1 else torch.empty(b, d, device=out.device)
    if conv is None:  # the conv arguments are unused: any tensor, sizes 1
        launch, prev, new, f1, f2, eps = "mlp", w1t, w1t, w1t, w1t, 0.0
        sizes = {"N1": 1, "N2": 1, "N2P": 1, "CONV_R": 0}
    else:
        prev, new, f1, f2, eps = conv
        prev, new = _unit_stride(prev), _unit_stride(new)
        f1, f2 = f1.detach().float().contiguous(), f2.detach().float().contiguous()
        launch = "transfer"
        sizes = {"N1": f1.shape[0], "N2": f2.shape[0], "N2P": _pow2(f2.shape[0], 2)}
    _launcher(launch)[lambda m: (triton.cdiv(b, m["BLOCK_R"]),)](
        h2.contiguous(), w1t, b1.detach().float().contiguous(), w2t,
        b2.detach().float().contiguous(), out_rows, u, prev, new, f1, f2,
        b, out_rows.stride(0), prev.stride(0), new.stride(0), float(eps),
        K=k, H=hidden, d=d, DP=_pow2(d, 16), KIND=_KIND_CODE[kind], FAST=_fast(precision),
        DOT_F32=interpreting(), SAVE_U=save_u, KA=ka, KB=kb, **sizes,
    )
    if out_rows is not out:
        out.copy_(out_rows)
    return out, (u if save_u else None)


def mlp_backward(
    dout: Tensor, w2: Tensor, u: Tensor, kind: str, precision: str
) -> tuple[Tensor, Tensor, Tensor]:
    """fc1's and fc2's gradients from dout ``[B, d]`` and fc1's pre-activation u ``[B, H]``:
    (du ``[B, H]`` in u's dtype, dW_o ``[d, H]`` fp32, db1 ``[H]`` fp32), with du = (dout W_o)
    ⊙ GELU'(u) and dW_o = doutᵀ GELU(u).

    For TF32 and bf16 one kernel computes all three (dz = dout W_o and dW_o's products on the
    tensor cores): z = GELU(u) is never written, and db1 needs no pass over du. For IEEE fp32
    cuBLAS computes dz and dW_o, the kernel du, z and db1.
    """
    cd = _compute_dtype(precision)
    g, w = dout.to(cd).contiguous(), w2.detach().to(cd).contiguous()
    if not kernels_run_on(u):
        return _mlp_backward_torch(g, w, u, kind, precision)
    (b, hidden), d = u.shape, w.shape[0]
    dz_given = precision == "fp32"
    if dz_given:
        with _cublas_precision(precision):
            dz = torch.mm(g, w)  # [B, H]
    parts = max(1, triton.cdiv(b, ROWS_PER_PROGRAM))
    alloc = torch.empty if b else torch.zeros  # the kernel writes every partial sum
    du = torch.empty_like(u)
    z = torch.empty_like(u) if dz_given else du  # du: an unused pointer
    db1 = alloc(parts, hidden, dtype=torch.float32, device=u.device)
    dw2 = db1 if dz_given else alloc(parts, d, hidden, dtype=torch.float32, device=u.device)
    if b:
        _launcher("mlp_backward")[lambda m: (parts, triton.cdiv(hidden, m["BLOCK_H"]))](
            dz if dz_given else g, w, u.contiguous(), du, z, dw2, db1, b, H=hidden, d=d,
            DP=_pow2(d, 16), KIND=_KIND_CODE[kind], FAST=_fast(precision), DZ_GIVEN=dz_given,
            DOT_F32=interpreting(), ROWS=ROWS_PER_PROGRAM)
    if dz_given:
        with _cublas_precision(precision):
            return du, torch.mm(g.t(), z).float(), db1.sum(0)
    return du, dw2.sum(0), db1.sum(0)


def _mlp_backward_torch(
    g: Tensor, w: Tensor, u: Tensor, kind: str, precision: str
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`mlp_backward`'s plain-torch twin (``g`` dout and ``w`` W_o in u's dtype)."""
    with _cublas_precision(precision):
        dz = torch.mm(g, w)
    uf = u.float().requires_grad_(True)
    with torch.enable_grad():
        z = gelu(uf, kind)
        (du,) = torch.autograd.grad(z, uf, dz.float())
    du = du.to(u.dtype)
    with _cublas_precision(precision):
        dw2 = torch.mm(g.t(), z.detach().to(u.dtype)).float()
    return du, dw2, du.sum(0, dtype=torch.float32)


def conv_backward(
    prev: Tensor, new: Tensor, f1: Tensor, f2: Tensor, dh2: Tensor, eps: float, kind: str,
    precision: str = "fp32",
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the conv stage from dH2 ``[B, n2*d]``: (dŴ_t ``[B, d]``, dF1, dF2), fp32."""
    if not kernels_run_on(prev):
        n = new.detach().float().requires_grad_(True)
        a, b = f1.detach().float().requires_grad_(True), f2.detach().float().requires_grad_(True)
        with torch.enable_grad():
            h2 = conv_stage_torch(prev, n, a, b, eps, kind)
            return torch.autograd.grad(h2, (n, a, b), dh2.float())
    rows, d = new.shape
    n1, n2 = f1.shape[0], f2.shape[0]
    # One row of partial sums per program of the smallest block (zeros past the launched ones).
    programs = max(1, triton.cdiv(rows, _smallest_block_rows("conv_backward")))
    dnew = torch.empty(rows, d, dtype=torch.float32, device=new.device)
    df1 = torch.zeros(programs, n1 * 3, dtype=torch.float32, device=new.device)
    df2 = torch.zeros(programs, n2 * n1, dtype=torch.float32, device=new.device)
    if rows:
        prev, new = _unit_stride(prev), _unit_stride(new)
        _launcher("conv_backward")[lambda m: (triton.cdiv(rows, m["BLOCK_R"]),)](
            prev, new, f1.detach().float().contiguous(), f2.detach().float().contiguous(),
            dh2.contiguous(), dnew, df1, df2, rows, d, prev.stride(0), new.stride(0),
            float(eps), N1=n1, N2=n2, N2P=_pow2(n2, 2), DP=_pow2(d, 16), KIND=_KIND_CODE[kind],
            FAST=_fast(precision),
        )
    return dnew, df1.sum(0).view(n1, 3), df2.sum(0).view(n2, n1)


# --- materialise and training -----------------------------------------------------------------


@torch.no_grad()
def transfer_rows_into(
    prev: Tensor, new: Tensor, params: Params, eps: float, kind: str, out: Tensor,
    precision: str = "fp32",
) -> None:
    """``out[:] = f_Θ(prev, new)`` for one chunk of rows, no autograd.

    ``params`` is (F1, F2, W_f, b1, W_o, b2). ``out`` may alias ``prev`` or ``new``: the conv
    stage reads them in full before the fused MLP writes ``out``.
    """
    _forward(prev, new, params, eps, kind, precision, out, save_u=False)


def _forward(
    prev: Tensor, new: Tensor, params: Params, eps: float, kind: str, precision: str,
    out: Tensor | None, save_u: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(out, u if ``save_u``, H2): the conv stage and the fused MLP, as one kernel when
    :data:`ONE_KERNEL` says so and the MLP runs on the kernels, else as two."""
    f1, f2, w1, b1, w2, b2 = params
    if ONE_KERNEL and precision != "fp32" and kernels_run_on(new):
        h2 = torch.empty(new.shape[0], f2.shape[0] * new.shape[1],
                         dtype=_compute_dtype(precision), device=new.device)
        out, u = mlp(h2, w1, b1, w2, b2, kind, precision, out, save_u, (prev, new, f1, f2, eps))
    else:
        h2 = conv_stage(prev, new, f1, f2, eps, kind, precision)
        out, u = mlp(h2, w1, b1, w2, b2, kind, precision, out, save_u)
    return out, u, h2


class TransferRowsFunction(torch.autograd.Function):
    """f_Θ of a chunk of rows with the Triton forward and backward (see the module docstring).

    ``apply(prev, new, F1, F2, W_f, b1, W_o, b2, eps, kind, precision) -> [B, d]``; no
    gradient reaches ``prev``.
    """

    @staticmethod
    def forward(ctx, prev, new, f1, f2, w1, b1, w2, b2, eps, kind, precision):  # noqa: ANN001
        out, u, h2 = _forward(prev, new, (f1, f2, w1, b1, w2, b2), eps, kind, precision, None,
                              save_u=True)
        ctx.save_for_backward(prev, new, f1, f2, w1, w2, h2, u)
        ctx.eps, ctx.kind, ctx.precision = eps, kind, precision
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001
        prev, new, f1, f2, w1, w2, h2, u = ctx.saved_tensors
        kind, precision = ctx.kind, ctx.precision
        cd = _compute_dtype(precision)
        du, dw2, db1 = mlp_backward(dout, w2, u, kind, precision)
        with _cublas_precision(precision):
            dw1 = torch.mm(du.t(), h2).float()
            dh2 = torch.mm(du, w1.detach().to(cd))
        db2 = dout.float().sum(0)
        dnew, df1, df2 = conv_backward(prev, new, f1, f2, dh2, ctx.eps, kind, precision)
        return None, dnew, df1, df2, dw1, db1, dw2, db2, None, None, None


def transfer_rows(
    prev: Tensor, new: Tensor, params: Params, eps: float, kind: str, precision: str = "fp32"
) -> Tensor:
    """f_Θ(prev, new) for one chunk of rows, differentiable in ``new`` and in ``params``."""
    return TransferRowsFunction.apply(prev.detach(), new, *params, eps, kind, precision)
