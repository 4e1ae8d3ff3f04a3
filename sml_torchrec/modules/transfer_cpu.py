"""CPU path of the SML transfer: fused C++ kernels for everything that is not a GEMM.

The transfer's FLOPs are ~98% in its two FC GEMMs, which MKL runs near the machine's matmul
rate. What keeps the eager ops well below that rate is the rest: the stack + conv1 + conv2
stage touches n1 + n2 full planes of the chunk for a few FLOPs each, and every activation is
another pass over memory. ``csrc/transfer_cpu.cpp`` does that part with ATen's vector type:

* ``stage_forward``: ``[prev; new; w_dot] -> conv1 -> act -> conv2 -> act`` per vector of
  columns, in registers, writing ``H2`` already flattened for fc1 (``[B, n2*d]``);
  optionally with ``∂H2/∂new`` in forward mode (``stage_grad_new`` then gives ``new``'s
  gradient from it: SML's step 1, where only ``new`` learns);
* ``stage_backward``: recomputes the stage and returns the gradients of ``new``, F1 and F2;
* ``bias_silu_keep_grad``: fc1's bias and activation in one pass after the GEMM, keeping the
  activation's derivative so its backward is one multiply (``materialize_`` runs the
  activation in place);
* ``materialize_``: the no-grad transfer of a whole table, chunks spread over the threads.

Only the authors' GELU (``x*sigmoid(1.702x)``, ``TransferConfig.gelu = "sigmoid"``) in
float32 runs here. On AVX-512 ``exp`` is the kernels' own (13 instructions with ``scalef``,
relative error ~2e-7 in the activations), elsewhere ATen's ``exp_u20`` (~4e-7); tests hold the
activations to float64 within 1e-6 and the whole path to the reference within 1e-4. The
extension is compiled on first use with ``torch.utils.cpp_extension`` (about 30 s, once per
machine: the build is cached under ``TORCH_EXTENSIONS_DIR``) for this CPU's vector ISA. Where
it cannot be built (no C++ compiler) :func:`load` warns once and returns ``None``;
``TransferNet`` then runs its eager fused ops, which compute the same function.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["SCALE", "TransferRowsCPU", "load", "materialize_rows", "supports"]

SCALE = 1.702  # the authors' GELU x*sigmoid(1.702x) = silu(1.702x) / 1.702
_SOURCE = Path(__file__).parent / "csrc" / "transfer_cpu.cpp"
# ATen's Vectorized<float> picks its implementation from these macros, the way torch's own
# per-ISA kernels are built.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}
_state: dict[str, object] = {}


def load() -> ModuleType | None:
    """The compiled kernels, building them on first call; ``None`` if they cannot be built."""
    if "ext" in _state:
        return _state["ext"]  # type: ignore[return-value]
    ext = None
    isa = torch.backends.cpu.get_cpu_capability()
    name = f"sml_transfer_cpu_{isa.lower()}"
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()
        if not _is_built(name):
            print(f"[sml_torchrec] building the fused CPU transfer kernel for {isa} (~30 s, "
                  "once per machine)", file=sys.stderr, flush=True)
        ext = cpp_extension.load(
            name=name,
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-fopenmp", *_ISA_FLAGS.get(isa, [])],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # no compiler, no headers, a failed build: run the eager ops
        warnings.warn(
            f"the fused CPU transfer kernel could not be built ({type(e).__name__}: "
            f"{str(e)[:300]}); TransferNet uses its eager fused ops instead",
            RuntimeWarning,
            stacklevel=2,
        )
    _state["ext"] = ext
    return ext


def _ninja_on_path() -> None:
    """cpp_extension runs ``ninja`` from PATH; the pip-installed one sits beside python."""
    here = Path(sys.executable).parent
    if shutil.which("ninja") is None and (here / "ninja").exists():
        os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"


def _is_built(name: str) -> bool:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").exists()
    except Exception:  # a private helper: if it moves, just print the message
        return False


def supports(new: Tensor, kind: str, n1: int, n2: int) -> bool:
    """Whether these rows can take the C++ path (CPU float32, the authors' GELU)."""
    return (kind == "sigmoid" and new.device.type == "cpu" and new.dtype == torch.float32
            and max(n1, n2) <= 16)


Params = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


class TransferRowsCPU(torch.autograd.Function):
    """f_Θ on one chunk of rows with a hand-written backward: ``[B, d] -> [B, d]``.

    ``prev`` gets no gradient (it is W_{t-1}); gradients reach ``new`` and every parameter
    only when autograd asks for them, so SML's step 1 (Θ detached) runs just the two
    grad-input GEMMs. Saved per chunk are H2 ``[B, n2*d]``, the derivative of fc1's activation
    ``[B, hidden]`` and, only when fc2's weight needs a gradient, the activation itself. When
    the stage's parameters need no gradient but ``new`` does (step 1), the forward also saves
    ∂H2/∂new ``[B, n2*d]`` and the backward is one multiply-add per H2 entry; otherwise the
    backward recomputes the stage.
    """

    @staticmethod
    def forward(ctx, prev: Tensor, new: Tensor, f1: Tensor, f2: Tensor, w1: Tensor,
                b1: Tensor, w2: Tensor, b2: Tensor, eps: float) -> Tensor:
        ext = load()
        prev, new = prev.contiguous(), new.contiguous()
        f1s = (f1 * SCALE).contiguous()
        f2c = f2.contiguous()
        h2 = new.new_empty(new.shape[0], f2.shape[0] * new.shape[1])
        need = ctx.needs_input_grad
        # SML step 1: only `new` needs a gradient from the stage, so the forward also takes
        # ∂h2/∂new (forward mode, 5 numbers a column) and the backward skips the recompute.
        jvp = torch.empty_like(h2) if need[1] and not (need[2] or need[3]) else None
        ext.stage_forward(prev, new, f1s, f2c, eps, h2, jvp)
        # fc1 without its bias; the kernel adds it, returns the activation z and leaves in
        # `dact` d(z / SCALE)/du for u = SCALE * fc1's pre-activation (fc2 takes z / SCALE).
        dact = torch.mm(h2, w1.t())
        z = ext.bias_silu_keep_grad(dact, (b1 * SCALE).contiguous(), 1.0 / SCALE)
        out = torch.addmm(b2, z, w2.t(), alpha=1.0 / SCALE)
        ctx.eps = eps
        ctx.save_for_backward(prev, new, f1s, f2c, w1, w2, h2, dact, z if need[6] else None,
                              *((jvp,) if jvp is not None else ()))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ext = load()
        prev, new, f1s, f2, w1, w2, h2, dact, z, *jvp = ctx.saved_tensors
        need = ctx.needs_input_grad
        need_new, need_stage_params = need[1], need[2] or need[3]
        grad = grad.contiguous()
        g_w2 = grad.t().mm(z).mul_(1.0 / SCALE) if need[6] else None
        g_b2 = grad.sum(0) if need[7] else None
        gu = torch.mm(grad, w2).mul_(dact)  # dL/du, u = SCALE * fc1's pre-activation
        g_w1 = gu.t().mm(h2) if need[4] else None
        g_b1 = gu.sum(0).mul_(SCALE) if need[5] else None
        g_new = g_f1 = g_f2 = None
        if jvp:  # only `new` needs the stage's gradient (see forward)
            g_new = ext.stage_grad_new(torch.mm(gu, w1), jvp[0], new.shape[1])
        elif need_stage_params:
            g_new, g_f1s, g_f2 = ext.stage_backward(
                torch.mm(gu, w1), prev, new, f1s, f2, ctx.eps, bool(need_new))
            g_f1 = g_f1s.mul_(SCALE) if need[2] else None
            g_f2 = g_f2 if need[3] else None
        return None, g_new, g_f1, g_f2, g_w1, g_b1, g_w2, g_b2, None


@torch.no_grad()
def materialize_rows(prev: Tensor, new: Tensor, p: Params, eps: float, out: Tensor,
                     chunk_rows: int) -> None:
    """``out[:] = f(prev, new)`` without autograd; ``out`` may alias ``prev`` or ``new``.

    Chunks of ``chunk_rows`` run concurrently, one per thread, each with single-threaded
    GEMMs; with fewer chunks than threads the chunks shrink to one per thread.
    """
    n = new.shape[0]
    if n == 0:
        return
    f1, f2, w1, b1, w2, b2 = p
    threads = torch.get_num_threads()
    if n < threads * chunk_rows:
        chunk_rows = -(-n // threads)
    target = out if out.is_contiguous() else torch.empty_like(
        out, memory_format=torch.contiguous_format)
    load().materialize_(
        prev.contiguous(), new.contiguous(), (f1 * SCALE).contiguous(), f2.contiguous(),
        w1.contiguous(), (b1 * SCALE).contiguous(), w2.contiguous(), b2.contiguous(), eps,
        1.0 / SCALE, target, chunk_rows)
    if target is not out:
        out.copy_(target)
