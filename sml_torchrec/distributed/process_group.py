"""Starting ranks: under torchrun/TorchX (environment variables) or as N local processes.

`run_local` is what `--nproc N` and the multi-process tests use: it picks a free port, spawns
N processes, gives each the same environment torchrun would, and fails (killing the rest) as
soon as one rank fails or the timeout passes, so a hung rank can never hang the caller.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(backend: str | None = None, timeout_s: float = 300.0) -> torch.device:
    """Join the process group described by the torchrun environment; returns this rank's device."""
    backend = backend or default_backend()
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
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


def _child(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple,
    results: Any,
    backend: str,
    threads: int | None,
) -> None:
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
    except BaseException:  # noqa: BLE001 - the parent re-raises with this traceback
        results.put((rank, "error", traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class RankFailed(RuntimeError):
    """A rank raised, died or timed out; the message holds its traceback or exit code."""


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
    Raises :class:`RankFailed` with the failing rank's traceback if any rank fails, dies, or
    the whole run exceeds ``timeout_s``; the other ranks are terminated.
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
            args=(r, nproc, port, fn, args, results, backend, threads),
            daemon=False,
        )
        for r in range(nproc)
    ]
    for p in procs:
        p.start()
    outputs: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    failure: str | None = None
    try:
        while len(outputs) < nproc and failure is None:
            try:
                rank, status, payload = results.get(timeout=0.2)
            except Exception:  # queue.Empty
                rank = None
            if rank is not None:
                if status == "ok":
                    outputs[rank] = pickle.loads(payload)
                else:
                    failure = f"rank {rank} failed:\n{payload}"
                continue
            for r, p in enumerate(procs):
                if r not in outputs and p.exitcode not in (None, 0):
                    # Give a dying rank's queued traceback a moment to arrive.
                    time.sleep(0.5)
                    if results.empty():
                        failure = f"rank {r} died with exit code {p.exitcode}"
                    break
            if failure is None and time.monotonic() > deadline:
                failure = f"timed out after {timeout_s:.0f}s waiting for ranks " + ", ".join(
                    str(r) for r in range(nproc) if r not in outputs
                )
    finally:
        if failure is not None:
            for p in procs:
                if p.is_alive():
                    p.kill()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    if failure is not None:
        raise RankFailed(failure)
    return [outputs[r] for r in range(nproc)]
