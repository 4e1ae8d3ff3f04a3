"""TorchX components: ``torchx run -s local_cwd launch/components.py:sml_retrain ...``.

Each component returns a ``torchx.specs.AppDef`` built on TorchX's ``dist.ddp`` (one role,
``torchrun`` per node). The same component runs on any scheduler; only scheduler flags change::

    torchx run -s local_cwd  launch/components.py:sml_retrain --nproc_per_node 2
    torchx run -s slurm      launch/components.py:sml_retrain --nnodes 4 --nproc_per_node 8
    torchx run -s kubernetes -cfg queue=default launch/components.py:sml_retrain --nnodes 4 \\
        --image <your image with this package installed>

Parameters are validated here, when ``torchx run`` builds the app, so a typo fails before any
rank starts. Extra arguments after ``--`` go to the program unchanged (``-- --dim 64``).

``--out`` is a stable run directory: a relaunch (or torchrun's restart) resumes from its
checkpoints; an earlier run's ``results.json`` there is replaced only with ``--overwrite True``.
"""

import contextlib
import io
import shlex
from typing import Callable, Dict, List, Optional

import torchx
import torchx.specs as specs
from torchx.components.dist import ddp

from catn.baselines import DEFAULT_METHODS, METHOD_NAMES
from catn.data.etas import ETAS, format_etas
from sml_torchrec.retrain.strategies import DEFAULT_STRATEGIES, STRATEGY_NAMES


def _ddp_app(
    args: List[str], parse: Callable[[List[str]], object], module: str, name: str,
    nnodes: int, nproc_per_node: int, max_restarts: int, **resources: object,
) -> specs.AppDef:
    """``dist.ddp`` running ``python -m module *args``, validated before any rank starts."""
    if nnodes < 1 or nproc_per_node < 1 or max_restarts < 0:
        raise ValueError("nnodes and nproc_per_node must be >= 1, max_restarts >= 0")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parse(args)  # fail now, not on every rank
    except SystemExit as e:
        why = (err.getvalue().strip().splitlines() or [""])[-1]
        raise ValueError(
            f"invalid {name.replace('_', '-')} arguments: {shlex.join(args)}: {why}") from e
    app = ddp(*args, m=module, name=name, j=f"{nnodes}x{nproc_per_node}", **resources)
    return _with_restarts(app, max_restarts)


def _with_restarts(app: specs.AppDef, max_restarts: int) -> specs.AppDef:
    # dist.ddp never passes --max-restarts to torchrun, and local_cwd does not retry: without
    # this a crashed rank ends the job. torchrun restarts *all* workers; the program resumes
    # from its newest complete checkpoint on start.
    if max_restarts > 0:
        role = app.roles[0]
        role.args = [a.replace("torchrun ", f"torchrun --max-restarts {max_restarts} ", 1)
                     for a in role.args]
    return app


def sml_retrain(
    *script_args: str,
    data: str = "",
    strategies: str = ",".join(DEFAULT_STRATEGIES),
    out: str = "runs/torchx",
    checkpoint_dir: str = "",
    overwrite: bool = False,
    nnodes: int = 1,
    nproc_per_node: int = 2,
    max_restarts: int = 0,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    image: str = torchx.IMAGE,
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Period-by-period retraining (SML and baselines) on sharded TorchRec tables.

    Args:
        script_args: further sml-retrain flags, e.g. ``-- --dim 64 --sharding row_wise``
        data: period dataset directory from ``sml-data build`` (empty: built-in synthetic)
        strategies: comma list of {strategies}
        out: run directory (results.json, results.csv, results.png, the saved model/)
        checkpoint_dir: per-period checkpoints (empty: OUT/checkpoints); a relaunch resumes
        overwrite: replace an earlier run's outputs in OUT and discard checkpoints of
            another run (another dataset or config) in checkpoint_dir
        nnodes: number of nodes
        nproc_per_node: ranks per node
        max_restarts: torchrun restarts of all workers after a failure (resume from checkpoint)
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        h: a registered named resource (overrides cpu/gpu/memMB)
        image: container image (ignored by local_cwd)
        env: extra environment variables, e.g. ``LOGLEVEL=INFO``
        rdzv_port: rendezvous port on the first node (multi-node)
    """
    from sml_torchrec.cli import parse_config

    checkpoint_dir = checkpoint_dir or f"{out}/checkpoints"
    args = ["--strategies", strategies, "--out", out, "--checkpoint-dir", checkpoint_dir]
    if data:
        args += ["--data", data]
    if overwrite:
        args.append("--overwrite")
    args += list(script_args)
    return _ddp_app(
        args, parse_config, "sml_torchrec", "sml_retrain", nnodes, nproc_per_node, max_restarts,
        image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB, env=env, rdzv_port=rdzv_port,
    )


# The strategy names come from the registry, so the help cannot drift from what runs.
sml_retrain.__doc__ = sml_retrain.__doc__.format(strategies=", ".join(STRATEGY_NAMES))


def catn_train(
    *script_args: str,
    data: str = "",
    methods: str = ",".join(DEFAULT_METHODS),
    eta: str = format_etas(ETAS),
    out: str = "runs/catn-torchx",
    overwrite: bool = False,
    nnodes: int = 1,
    nproc_per_node: int = 2,
    max_restarts: int = 0,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    image: str = torchx.IMAGE,
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Data-parallel CATN training and the cold-start MSE table.

    Args:
        script_args: further catn-train flags, e.g. ``-- --epochs 20``
        data: dataset directory from ``catn-data build`` (empty: built-in synthetic)
        methods: comma list of methods (rows of the table), from {methods}
        eta: comma list of η shares of overlapping training users, each in (0, 1]
        out: run directory (results.json, results.csv, results.png, the saved model/)
        overwrite: replace OUT/results.json of an earlier run
        nnodes: number of nodes
        nproc_per_node: ranks per node
        max_restarts: torchrun restarts of all workers after a failure
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        h: a registered named resource (overrides cpu/gpu/memMB)
        image: container image (ignored by local_cwd)
        env: extra environment variables
        rdzv_port: rendezvous port on the first node (multi-node)
    """
    from catn.cli import parse_args

    args = ["--methods", methods, "--etas", eta, "--out", out, "--no-progress"]
    if data:
        args += ["--data", data]
    if overwrite:
        args.append("--overwrite")
    args += list(script_args)
    return _ddp_app(
        args, parse_args, "catn.cli", "catn_train", nnodes, nproc_per_node, max_restarts,
        image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB, env=env, rdzv_port=rdzv_port,
    )


# The method names come from catn's registry, so the help cannot drift from what runs.
catn_train.__doc__ = catn_train.__doc__.format(methods=", ".join(METHOD_NAMES))
