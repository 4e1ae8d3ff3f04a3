"""Starting ranks: under torchrun/TorchX (environment variables) or as N local processes.

`run_local` is what `--nproc N` and the multi-process tests use: it picks a free port, spawns
N processes, gives each the same environment torchrun would, and fails (stopping the rest) as
soon as one rank fails or the timeout passes, so a hung rank can never hang the caller. Ranks
die with the launcher (``PR_SET_PDEATHSIG`` on Linux), so a killed launcher leaves no rank
running on.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import queue
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys_common.errors import EXIT_USER_ERROR, RunFailed, UserError


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def max_local_ranks() -> int:
    """The most ranks ``--nproc`` may start here: more only thrash the machine (each rank is
    a full process with its own copy of the data)."""
    return max(8, 4 * (os.cpu_count() or 1))


def rank_world() -> tuple[int, int]:
    """(this process's rank, world size): (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_block(n: int) -> slice:
    """This rank's contiguous block of ``n`` rows: ceil(n / world) each, the last ones shorter
    or empty; together the blocks tile ``0..n-1`` in rank order."""
    rank, world_size = rank_world()
    per = -(-n // world_size)
    return slice(min(n, rank * per), min(n, (rank + 1) * per))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(backend: str | None = None, timeout_s: float = 300.0) -> torch.device:
    """Join the process group described by the torchrun environment (or, without one, a
    single-process group); returns this rank's device."""
    backend = backend or default_backend()
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if not launched_by_torchrun():
            # One process, no launcher: DMP and DCP are collective APIs and still need a group.
            # An in-memory store needs no port and leaves the environment alone (a caller's
            # later subprocess must not mistake itself for a torchrun worker).
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0,
                                    world_size=1, timeout=timeout)
        elif restart is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun keeps one store across worker restarts; keys left by the failed round
            # (a dead rank's address) would be read by the new one, so each round gets its own
            # key prefix.
            store = dist.PrefixStore(
                f"sml_torchrec/round{restart}",
                dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False, timeout=timeout),
            )
            dist.init_process_group(
                backend=backend, store=store, rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout,
            )
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _die_with_parent(parent_pid: int) -> None:
    """Make this rank die when its launcher dies, however it dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the check below still catches most cases
            pass
    # The launcher may have died before prctl took effect; the rank was then re-parented.
    if os.getppid() != parent_pid:
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _child(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple,
    results: Any,
    backend: str,
    threads: int | None,
    parent_pid: int,
) -> None:
    _die_with_parent(parent_pid)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        init_process_group(backend)
        out = fn(*args)
        # Plain pickle copies tensors into the message; the queue's default would share their
        # memory with this process, which may have exited by the time the parent reads it.
        results.put((rank, "ok", pickle.dumps(out)))
    except (UserError, RunFailed) as e:
        # The launcher reports these as one line, like a single process would.
        kind = "user_error" if isinstance(e, UserError) else "run_failed"
        results.put((rank, kind, (type(e).__name__, str(e), traceback.format_exc())))
        raise SystemExit(EXIT_USER_ERROR if kind == "user_error" else 1) from None
    except BaseException:  # noqa: BLE001 - the parent re-raises with this traceback
        results.put((rank, "error", traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class RankFailed(RuntimeError):
    """A rank raised an unexpected error; the message holds its traceback."""


class RankLost(RankFailed, RunFailed):
    """A rank died without reporting an error (killed by a signal, exited) or the run timed
    out. One line for the user (``RunFailed``), naming the rank and how it died."""

    def __init__(self, message: str, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


class _RankReport:
    """A one-line error raised in rank(s): its message plus the rank(s) it came from."""

    def __init__(self, message: str, ranks: list[int], kind: str, remote_traceback: str) -> None:
        where = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
        super().__init__(f"{message} (on {where})")
        self.ranks = ranks
        self.kind = kind  # the class name of the rank's exception
        self.remote_traceback = remote_traceback


class RankUserError(_RankReport, UserError, RankFailed):
    """A rank raised a :class:`UserError` (exit 2)."""


class RankRunFailed(_RankReport, RunFailed, RankFailed):
    """A rank raised a :class:`RunFailed` (e.g. a checkpoint could not be written; exit 1)."""


def describe_exit(exitcode: int) -> str:
    """'was killed by signal 9 (SIGKILL)' or 'died with exit code 3'."""
    if exitcode < 0:
        try:
            name = f" ({signal.Signals(-exitcode).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {-exitcode}{name}"
    return f"died with exit code {exitcode}"


# How long to keep listening after the first failure: a rank's own report, and the exit of a
# rank that died first, often arrive just after a peer's "connection reset" error.
_FAILURE_GRACE_S = 1.5


def _root_cause(
    reports: dict[int, tuple[str, Any]], deaths: dict[int, int], order: list[int]
) -> BaseException:
    """The failure to show: a rank that died silently (a signal, ``os._exit``) caused the
    others' errors; then a user error; then the first unexpected error. ``order`` is the order
    in which ranks were seen failing."""
    silent = [r for r in order if r in deaths and r not in reports]
    if silent:
        r = silent[0]
        return RankLost(f"rank {r} {describe_exit(deaths[r])}", rank=r)
    for status, cls in (("user_error", RankUserError), ("run_failed", RankRunFailed)):
        found = [r for r in order if reports.get(r, ("",))[0] == status]
        if found:
            kind, message, tb = reports[found[0]][1]
            same = sorted(r for r in found if reports[r][1][1] == message)
            return cls(message, same, kind, tb)
    r = next(r for r in order if r in reports)
    return RankFailed(f"rank {r} failed:\n{reports[r][1]}")


def _stop(procs: list, finished: bool) -> None:
    """Reap the ranks. After a failure or an interruption SIGTERM every live rank at once,
    after a normal end give them time to exit by themselves; SIGKILL what is left."""
    if finished:
        deadline = time.monotonic() + 30.0
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def run_local(
    fn: Callable[..., Any],
    nproc: int,
    args: tuple = (),
    timeout_s: float = 600.0,
    backend: str | None = None,
    threads: int | None = None,
) -> list[Any]:
    """Run ``fn(*args)`` on ``nproc`` fresh processes joined in one process group.

    ``fn`` must be importable (module level). Returns the per-rank return values, in rank order.
    If any rank fails the others are stopped and this raises :class:`RankUserError` (a rank
    raised a ``UserError``: its message and rank), :class:`RankRunFailed` (likewise for a
    ``RunFailed``), :class:`RankLost` (a rank was killed or
    exited, or ``timeout_s`` passed: which rank and how) or :class:`RankFailed` (an unexpected
    error: its traceback). The ranks die with this process, even when it is SIGKILLed; when it
    is interrupted (Ctrl-C, SIGTERM raising :class:`~recsys_common.errors.Terminated`) they are
    stopped before the exception propagates.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    backend = backend or default_backend()
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_child,
            args=(r, nproc, port, fn, args, results, backend, threads, os.getpid()),
            daemon=False,
        )
        for r in range(nproc)
    ]
    watch = _RankWatch(nproc)
    failure: BaseException | None = None
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.start()
        while len(watch.outputs) < nproc:
            watch.poll(results, procs)
            failure = watch.failure(deadline, timeout_s)
            if failure is not None:
                break
    finally:
        # Normal end: the ranks are exiting by themselves. Failure or interruption: stop them.
        _stop([p for p in procs if p.pid is not None],
              finished=failure is None and len(watch.outputs) == nproc)
    if failure is not None:
        raise failure
    return [watch.outputs[r] for r in range(nproc)]


@dataclass
class _RankWatch:
    """What :func:`run_local` has heard from its ranks: results, failure reports, exit codes."""

    nproc: int
    outputs: dict[int, Any] = field(default_factory=dict)
    reports: dict[int, tuple[str, Any]] = field(default_factory=dict)
    deaths: dict[int, int] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # ranks in the order they were seen failing
    first_failure: float | None = None

    def poll(self, results: Any, procs: list) -> None:
        """Take one message from the ranks (waiting up to 0.2 s) and note ranks that died."""
        try:
            rank, status, payload = results.get(timeout=0.2)
            if status == "ok":
                self.outputs[rank] = pickle.loads(payload)
            elif rank not in self.reports:
                self.reports[rank] = (status, payload)
                if rank not in self.order:
                    self.order.append(rank)
        except queue.Empty:
            pass
        for r, p in enumerate(procs):
            if r not in self.outputs and r not in self.deaths and p.exitcode not in (None, 0):
                self.deaths[r] = p.exitcode
                if r not in self.order:
                    self.order.append(r)

    def failure(self, deadline: float, timeout_s: float) -> BaseException | None:
        """The error to raise now, or None to keep waiting.

        After the first failure the others get a grace period to report theirs, so the root
        cause (not a peer's broken connection) is what is raised.
        """
        now = time.monotonic()
        if self.order and self.first_failure is None:
            self.first_failure = now
        if self.first_failure is not None and (
            now - self.first_failure > _FAILURE_GRACE_S or len(self.order) == self.nproc
        ):
            return _root_cause(self.reports, self.deaths, self.order)
        if now > deadline:
            return RankLost(
                f"timed out after {timeout_s:.0f}s waiting for ranks "
                + ", ".join(str(r) for r in range(self.nproc) if r not in self.outputs)
            )
        return None
