"""SML's transfer network f_Θ: combines W_{t-1} and Ŵ_t row by row into W_t.

For one embedding row (length d) the paper's transfer is::

    H0 = [w_prev; w_new; w_dot]              3 x d,  w_dot = w_prev ⊙ w_new / (‖w_prev‖ + ε)
    H1 = GELU(F1 @ H0)                        n1 x d  (conv1: n1 filters of height 3, no bias)
    H2 = GELU(F2 @ H1)                        n2 x d  (conv2: n2 filters over n1 channels)
    z  = GELU(W_f flatten(H2) + b1)           hidden  (flatten is row-major: index k*d + m)
    w  = W_o z + b2                           d

Three implementations compute the same function from the same parameters (the state_dict
does not depend on the implementation; switch at run time with ``net.config.impl = ...``):

* ``"reference"``: the layers written out as the paper draws them (``conv2d`` over a
  ``[N, 1, 3, d]`` image); the baseline that the others are tested against.
* ``"fused"``: on CPU in float32 with the authors' GELU, the C++ kernels of
  ``transfer_cpu``: the stack + conv stage runs in registers per vector of columns, the FC
  layers are MKL GEMMs with fc1's bias and activation applied in one pass, and training uses
  a hand-written backward. Elsewhere (other dtypes or GELU kinds, no C++ compiler) it runs the
  same algebra as eager ops: both convolutions are per-column linear maps 3 -> n1 -> n2, i.e.
  two tiny GEMMs over all N*d columns at once (channel-major layout); the FC layers run as
  ``addmm`` with the bias folded in. For the sigmoid GELU the constant 1.702 is folded into
  F1, b1 and the last GEMM's ``alpha`` so each activation is a single ``silu``. Rows are
  processed in cache-sized chunks (``config.chunk_rows``); under ``no_grad`` a leaner path
  reuses scratch buffers and activates in place. On CUDA with Triton installed, float32 rows
  run on the Triton kernels of ``transfer_triton`` instead, for materialise and training
  alike: the stack+conv stage as one kernel, fc1 + activation + fc2 as another that keeps
  fc1's output on chip, and a hand-written backward; ``config.precision`` picks IEEE fp32,
  TF32 or bf16 matrix products there.
* ``"compiled"``: ``torch.compile`` (inductor) of a pointwise formulation of the same chunk
  function, which lets inductor fuse the stack+conv stage into one loop nest.

This module imports with plain torch (no torchrec, no process group).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BACKENDS",
    "GELU_KINDS",
    "IMPLS",
    "PRECISIONS",
    "TransferConfig",
    "TransferNet",
    "choose_backend",
    "gelu",
    "materialize",
    "transfer_flops_per_row",
]

IMPLS = ("reference", "fused", "compiled")
# What computes the rows (see ``choose_backend``): "fused" runs on "triton", "cpu" or "eager".
BACKENDS = ("reference", "triton", "cpu", "eager", "compiled")
GELU_KINDS = ("sigmoid", "erf", "tanh")
# TransferConfig.precision: the GPU kernels' matrix products (see transfer_triton).
PRECISIONS = ("fp32", "tf32", "bf16")
# The authors' GELU approximation x * sigmoid(1.702 x).
_SIGMOID_GELU_SCALE = 1.702


@dataclass
class TransferConfig:
    """Hyper-parameters of f_Θ; defaults are the authors' (n1=10, n2=5, hidden 512)."""

    n1: int = 10  # conv1 filters (height 3 over the stacked [w_prev; w_new; w_dot])
    n2: int = 5  # conv2 filters over the n1 channels
    hidden: int = 512  # FC hidden width
    eps: float = 1e-8  # in w_dot = (w_prev * w_new) / (||w_prev|| + eps)
    # "sigmoid": x*sigmoid(1.702x) as the authors' code; "erf": exact GELU; "tanh"
    gelu: str = "sigmoid"
    # "reference" | "fused" | "compiled" (torch.compile of a pointwise formulation). "fused"
    # is the default: on CPU (d=64) it trained ~1.5x faster than "compiled", materialised as
    # fast and needs no compile step (benchmarks/transfer_throughput.py).
    impl: str = "fused"
    chunk_rows: int = 2048  # rows per chunk for forward and materialise (cache-sized)
    # Matrix products of the GPU (Triton) kernels: "fp32" (IEEE, exact to fp32 rounding),
    # "tf32" or "bf16" (faster, ~1e-3 and ~1e-2 of the output's scale; see transfer_triton).
    # The CPU kernels always compute in the rows' dtype.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _validate(self)


def _validate(c: TransferConfig) -> None:
    if c.impl not in IMPLS:
        raise ValueError(f"TransferConfig.impl must be one of {IMPLS}, got {c.impl!r}")
    if c.precision not in PRECISIONS:
        raise ValueError(
            f"TransferConfig.precision must be one of {PRECISIONS}, got {c.precision!r}"
        )
    if c.gelu not in GELU_KINDS:
        raise ValueError(f"TransferConfig.gelu must be one of {GELU_KINDS}, got {c.gelu!r}")
    if min(c.n1, c.n2, c.hidden, c.chunk_rows) < 1:
        raise ValueError(f"n1, n2, hidden and chunk_rows must be positive: {c}")


def transfer_flops_per_row(dim: int, config: TransferConfig | None = None) -> int:
    """Multiply-add FLOPs (2 per MAC) of one row: conv1 + conv2 + fc1 + fc2.

    Biases, w_dot and activations are not counted. n1=10, n2=5, hidden=512, d=64 gives
    3,840 + 6,400 + 327,680 + 65,536 = 403,456.
    """
    c = config or TransferConfig()
    return 2 * (3 * c.n1 * dim + c.n1 * c.n2 * dim + c.n2 * dim * c.hidden + c.hidden * dim)


def gelu(x: Tensor, kind: str = "sigmoid") -> Tensor:
    """The GELU variant named by ``kind`` (see :class:`TransferConfig`), out of place."""
    if kind == "sigmoid":
        return x * torch.sigmoid(_SIGMOID_GELU_SCALE * x)
    if kind == "erf":
        return F.gelu(x)
    if kind == "tanh":
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"unknown GELU kind {kind!r}")


def _w_dot(prev: Tensor, new: Tensor, eps: float) -> Tensor:
    # A constant of the graph, as in the authors' code: no gradient flows through it.
    new = new.detach()
    return prev * new / (torch.linalg.vector_norm(prev, dim=1, keepdim=True) + eps)


# --- fused path -----------------------------------------------------------------------------
# With the sigmoid GELU, g(x) = x*sigmoid(s x) = silu(s x) / s. Feeding every activation a
# pre-activation scaled by s and letting it return s*g keeps the scale exact through the
# linear layers: conv1 uses s*F1, conv2 is unchanged, fc1 adds s*b1 (beta=s), fc2 undoes it
# with alpha=1/s. For erf/tanh s = 1 and the activation is F.gelu.


def _scale(kind: str) -> float:
    return _SIGMOID_GELU_SCALE if kind == "sigmoid" else 1.0


def _act(u: Tensor, kind: str) -> Tensor:
    if kind == "sigmoid":
        return F.silu(u)
    return F.gelu(u, approximate="tanh" if kind == "tanh" else "none")


def _act_(u: Tensor, kind: str) -> Tensor:
    if kind == "sigmoid":
        return F.silu(u, inplace=True)
    return torch.ops.aten.gelu_(u, approximate="tanh" if kind == "tanh" else "none")


def _act_out(u: Tensor, kind: str, out: Tensor) -> Tensor:
    """``out[:] = act(u)``; ``out`` may be a strided view."""
    if kind == "sigmoid":
        return torch.ops.aten.silu.out(u, out=out)
    # gelu.out mishandles a strided ``out`` (it writes as if contiguous): activate, then copy.
    return out.copy_(_act_(u, kind))


Params = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]  # F1, F2, W_f, b1, W_o, b2


def _fused_chunk(prev: Tensor, new: Tensor, p: Params, eps: float, kind: str) -> Tensor:
    """Autograd-capable fused transfer of one chunk of rows: ``[B, d] -> [B, d]``."""
    f1, f2, w1, b1, w2, b2 = p
    b, d = new.shape
    s = _scale(kind)
    # Channel-major [3, B*d]: each conv becomes one GEMM over all columns of the chunk.
    x = torch.stack((prev, new, _w_dot(prev, new, eps))).view(3, b * d)
    h1 = _act(torch.mm(f1 * s if s != 1.0 else f1, x), kind)
    h2 = _act(torch.mm(f2, h1), kind)
    h2 = h2.view(f2.shape[0], b, d).transpose(0, 1).reshape(b, f2.shape[0] * d)
    z = _act(torch.addmm(b1, h2, w1.t(), beta=s), kind)
    return torch.addmm(b2, z, w2.t(), alpha=1.0 / s)


class _Scratch:
    """Reusable buffers for the no-grad fused path, sized for ``rows`` rows."""

    def __init__(self, rows: int, dim: int, n1: int, n2: int, hidden: int, like: Tensor):
        new = lambda *shape: torch.empty(*shape, dtype=like.dtype, device=like.device)  # noqa: E731
        self.x = new(3 * rows * dim)
        self.h1 = new(n1 * rows * dim)
        self.u2 = new(n2 * rows * dim)
        self.h2 = new(rows * n2 * dim)
        self.z = new(rows * hidden)
        self.norm = new(rows)


@torch.no_grad()
def _fused_chunk_into(
    prev: Tensor, new: Tensor, p: Params, eps: float, kind: str, out: Tensor, buf: _Scratch
) -> None:
    """``out[:] = f(prev, new)`` for one chunk, in place, without autograd or allocations."""
    f1, f2, w1, b1, w2, b2 = p
    b, d = new.shape
    n1, n2, hidden = f1.shape[0], f2.shape[0], w1.shape[0]
    s = _scale(kind)
    if b == 0:
        return
    x = buf.x[: 3 * b * d].view(3, b, d)
    x[0].copy_(prev)
    x[1].copy_(new)
    torch.linalg.vector_norm(prev, dim=1, out=buf.norm[:b])
    torch.mul(prev, new, out=x[2]).div_(buf.norm[:b].add_(eps).unsqueeze(1))
    h1 = buf.h1[: n1 * b * d].view(n1, b * d)
    _act_(torch.mm(f1 * s, x.view(3, b * d), out=h1), kind)
    u2 = buf.u2[: n2 * b * d].view(n2, b * d)
    torch.mm(f2, h1, out=u2)
    h2 = buf.h2[: b * n2 * d].view(b, n2, d)
    # The transpose to the row-major flatten rides on the activation's (strided) write.
    _act_out(u2.view(n2, b, d), kind, out=h2.transpose(0, 1))
    z = buf.z[: b * hidden].view(b, hidden)
    _act_(torch.addmm(b1, h2.view(b, n2 * d), w1.t(), beta=s, out=z), kind)
    if out.is_contiguous():
        torch.addmm(b2, z, w2.t(), alpha=1.0 / s, out=out)
    else:
        out.copy_(torch.addmm(b2, z, w2.t(), alpha=1.0 / s))


# --- compiled path --------------------------------------------------------------------------


def _pointwise_chunk(prev: Tensor, new: Tensor, p: Params, eps: float, kind: str) -> Tensor:
    """The chunk function written as broadcasts and small sums, for inductor to fuse."""
    f1, f2, w1, b1, w2, b2 = p
    x = torch.stack((prev, new, _w_dot(prev, new, eps)), 1)  # [B, 3, d]
    h1 = gelu((f1[None, :, :, None] * x[:, None]).sum(2), kind)  # [B, n1, d]
    h2 = gelu((f2[None, :, :, None] * h1[:, None]).sum(2), kind)  # [B, n2, d]
    z = gelu(torch.addmm(b1, h2.flatten(1), w1.t()), kind)
    return torch.addmm(b2, z, w2.t())


# One top-level function per GELU kind: dynamo keeps its compiled graphs (and its recompile
# limit) per code object, so the kinds do not evict each other.
def _pointwise_sigmoid(prev: Tensor, new: Tensor, p: Params, eps: float) -> Tensor:
    return _pointwise_chunk(prev, new, p, eps, "sigmoid")


def _pointwise_erf(prev: Tensor, new: Tensor, p: Params, eps: float) -> Tensor:
    return _pointwise_chunk(prev, new, p, eps, "erf")


def _pointwise_tanh(prev: Tensor, new: Tensor, p: Params, eps: float) -> Tensor:
    return _pointwise_chunk(prev, new, p, eps, "tanh")


_POINTWISE = {"sigmoid": _pointwise_sigmoid, "erf": _pointwise_erf, "tanh": _pointwise_tanh}
_compiled: dict[str, Callable[..., Tensor]] = {}


def _cpu_kernel_ok(new: Tensor, c: TransferConfig) -> bool:
    """Whether the fused path runs on the C++ kernels of ``transfer_cpu`` for these rows."""
    from sml_torchrec.modules import transfer_cpu

    return transfer_cpu.supports(new, c.gelu, c.n1, c.n2) and transfer_cpu.load() is not None


def choose_backend(config: TransferConfig, rows: Tensor) -> str:
    """Which implementation computes ``rows``: the one place that decides.

    ``impl="reference"`` and ``impl="compiled"`` name their back end. For ``impl="fused"``:
    ``"triton"`` for float32 rows on CUDA with Triton (``transfer_triton``, with or without
    gradients), else ``"cpu"`` where the C++ kernels of ``transfer_cpu`` apply (float32, the
    authors' GELU, a compiled extension), else ``"eager"`` (the same algebra as torch ops).
    """
    if config.impl != "fused":
        return config.impl
    if rows.is_cuda and rows.dtype == torch.float32:
        from sml_torchrec.modules import transfer_triton

        if transfer_triton.available():
            return "triton"
    return "cpu" if _cpu_kernel_ok(rows, config) else "eager"


def _cpu_chunk(prev: Tensor, new: Tensor, p: Params, eps: float, kind: str) -> Tensor:
    from sml_torchrec.modules.transfer_cpu import TransferRowsCPU

    return TransferRowsCPU.apply(prev, new, *p, eps)


def _triton_chunk(prev: Tensor, new: Tensor, p: Params, eps: float, kind: str,
                  precision: str) -> Tensor:
    from sml_torchrec.modules import transfer_triton

    return transfer_triton.transfer_rows(prev, new, p, eps, kind, precision)


def _compiled_chunk(prev: Tensor, new: Tensor, p: Params, eps: float, kind: str) -> Tensor:
    if new.shape[0] < 2:
        # Sizes 0 and 1 are specialised by dynamo; the eager fused path computes the same.
        return _fused_chunk(prev, new, p, eps, kind)
    fn = _compiled.get(kind)
    if fn is None:
        # Created on first use so that importing this module never starts inductor.
        fn = _compiled[kind] = torch.compile(_POINTWISE[kind])
    # The row count varies from batch to batch: one shape-generic graph instead of a
    # recompile per size (past dynamo's recompile limit it would fall back to eager).
    torch._dynamo.maybe_mark_dynamic(prev, 0)
    torch._dynamo.maybe_mark_dynamic(new, 0)
    # Plain tensors, detached when no gradient is wanted: dynamo guards on Parameter vs
    # Tensor and on requires_grad, so this keeps it to one graph per grad mode.
    if torch.is_grad_enabled():
        p = tuple(t.view(t.shape) for t in p)  # type: ignore[assignment]
    else:
        new, p = new.detach(), tuple(t.detach() for t in p)  # type: ignore[assignment]
    return fn(prev, new, p, eps)


# --- module ---------------------------------------------------------------------------------


class TransferNet(nn.Module):
    """f_Θ for one table: ``forward(prev [N, d], new [N, d]) -> [N, d]``.

    Parameters (the same names and shapes for every ``impl``):
    ``conv1`` F1 ``[n1, 3]``, ``conv2`` F2 ``[n2, n1]`` (no conv biases, as in the paper),
    ``fc1`` (W_f: ``n2*d -> hidden``, weight ``[hidden, n2*d]``, bias b1 ``[hidden]``),
    ``fc2`` (W_o: ``hidden -> d``, weight ``[d, hidden]``, bias b2 ``[d]``).

    ``prev`` (W_{t-1}) is a constant: it is detached and gets no gradient. ``w_dot`` is a
    constant too (authors' code), so gradients reach ``new`` only through the Ŵ_t slot of the
    stack, and reach every parameter. Works for any N >= 0 and any d.

    Initialisation: PyTorch's defaults for the layers the authors use (they set nothing
    explicitly), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in 3 for F1 (a 3x1 conv on
    one input channel), n1 for F2 (a 1x1 conv) and ``nn.Linear``'s default for the FC layers.
    """

    def __init__(self, dim: int, config: TransferConfig | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        c = config if config is not None else TransferConfig()
        _validate(c)
        self.config = c
        self.dim = dim
        self.conv1 = nn.Parameter(torch.empty(c.n1, 3))
        self.conv2 = nn.Parameter(torch.empty(c.n2, c.n1))
        self.fc1 = nn.Linear(c.n2 * dim, c.hidden)
        self.fc2 = nn.Linear(c.hidden, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for f in (self.conv1, self.conv2):
            bound = 1.0 / math.sqrt(f.shape[1])
            nn.init.uniform_(f, -bound, bound)
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def extra_repr(self) -> str:
        c = self.config
        return f"dim={self.dim}, gelu={c.gelu!r}, impl={c.impl!r}, chunk_rows={c.chunk_rows}"

    def params(self) -> Params:
        """(F1, F2, W_f, b1, W_o, b2), read at call time so ``functional_call`` works."""
        return (self.conv1, self.conv2, self.fc1.weight, self.fc1.bias,
                self.fc2.weight, self.fc2.bias)

    def _check(self, prev: Tensor, new: Tensor) -> None:
        if prev.dim() != 2 or prev.shape != new.shape or new.shape[1] != self.dim:
            raise ValueError(
                f"prev and new must both be [N, {self.dim}], got {tuple(prev.shape)} "
                f"and {tuple(new.shape)}"
            )

    def reference(self, prev: Tensor, new: Tensor, params: Params | None = None) -> Tensor:
        """The paper's layers written straightforwardly (the baseline implementation)."""
        c, n = self.config, new.shape[0]
        f1, f2, w1, b1, w2, b2 = self.params() if params is None else params
        prev = prev.detach()
        h0 = torch.stack((prev, new, _w_dot(prev, new, c.eps)), 1).unsqueeze(1)  # [N,1,3,d]
        h1 = gelu(F.conv2d(h0, f1.view(c.n1, 1, 3, 1)), c.gelu)  # [N, n1, 1, d]
        h2 = gelu(F.conv2d(h1, f2.view(c.n2, c.n1, 1, 1)), c.gelu)  # [N, n2, 1, d]
        z = gelu(F.linear(h2.reshape(n, c.n2 * self.dim), w1, b1), c.gelu)
        return F.linear(z, w2, b2)

    def forward(
        self, prev: Tensor, new: Tensor, params: Params | None = None, backend: str | None = None
    ) -> Tensor:
        """``params`` replaces (F1, F2, W_f, b1, W_o, b2), e.g. with detached copies so that Θ
        is a constant (SML step 1). ``backend`` (one of :data:`BACKENDS`) overrides
        :func:`choose_backend`, e.g. to measure one against another.
        """
        self._check(prev, new)
        c = self.config
        _validate(c)
        prev = prev.detach()
        p = self.params() if params is None else params
        needs_grad = torch.is_grad_enabled() and (
            new.requires_grad or any(t.requires_grad for t in p)
        )
        backend = backend or choose_backend(c, new)
        _check_backend(backend)
        if backend == "reference":
            return self.reference(prev, new, p)
        if not needs_grad and backend != "compiled":
            out = torch.empty_like(new, memory_format=torch.contiguous_format)
            _materialize_rows(self, prev, new, out, c.chunk_rows, p, backend)
            return out
        fn = {"cpu": _cpu_chunk, "eager": _fused_chunk, "compiled": _compiled_chunk,
              "triton": functools.partial(_triton_chunk, precision=c.precision)}[backend]
        n, step = new.shape[0], c.chunk_rows
        if n <= step:
            return fn(prev, new, p, c.eps, c.gelu)
        chunks = [
            fn(prev[i : i + step], new[i : i + step], p, c.eps, c.gelu) for i in range(0, n, step)
        ]
        return torch.cat(chunks)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _materialize_rows(
    net: TransferNet, prev: Tensor, new: Tensor, out: Tensor, step: int, params: Params,
    backend: str,
) -> None:
    c, n = net.config, new.shape[0]
    p = tuple(t.detach() for t in params)
    if backend == "cpu":
        from sml_torchrec.modules.transfer_cpu import materialize_rows

        materialize_rows(prev, new, p, c.eps, out, step)
        return
    eager = backend == "eager"
    buf = _Scratch(min(step, n), net.dim, c.n1, c.n2, c.hidden, like=new) if eager else None
    for i in range(0, n, step):
        j = min(i + step, n)
        if backend == "triton":
            from sml_torchrec.modules import transfer_triton

            transfer_triton.transfer_rows_into(prev[i:j], new[i:j], p, c.eps, c.gelu, out[i:j],
                                               c.precision)
        elif backend == "eager":
            _fused_chunk_into(prev[i:j], new[i:j], p, c.eps, c.gelu, out[i:j], buf)
        elif backend == "reference":
            out[i:j].copy_(net.reference(prev[i:j], new[i:j]))
        else:
            out[i:j].copy_(_compiled_chunk(prev[i:j], new[i:j], p, c.eps, c.gelu))


@torch.no_grad()
def materialize(
    net: TransferNet, prev: Tensor, new: Tensor, out: Tensor, chunk_rows: int | None = None,
    backend: str | None = None,
) -> None:
    """``out[:] = net(prev, new)``, chunk by chunk, with memory bounded by the chunk size.

    ``out`` may be the same tensor as ``prev`` (or ``new``): each chunk is read in full before
    it is written. ``chunk_rows`` defaults to ``net.config.chunk_rows``; ``backend`` (one of
    :data:`BACKENDS`) overrides :func:`choose_backend`, e.g. to measure one against another.
    """
    net._check(prev, new)
    _validate(net.config)
    if out.shape != new.shape:
        raise ValueError(f"out must be {tuple(new.shape)}, got {tuple(out.shape)}")
    step = chunk_rows if chunk_rows is not None else net.config.chunk_rows
    if step < 1:
        raise ValueError(f"chunk_rows must be positive, got {step}")
    if backend is not None:
        _check_backend(backend)
    chosen = backend or choose_backend(net.config, new)
    _materialize_rows(net, prev, new, out, step, net.params(), chosen)
