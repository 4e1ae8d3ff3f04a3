"""The Python API of a retraining run: :func:`run` does what ``sml-retrain`` does.

    from sml_torchrec import RetrainConfig, run

    result = run(RetrainConfig(data="data/ml", out="runs/ml", strategies=["sml", "fine_tune"]))
    print(result.results["protocols"]["full"]["sml"]["recall@20"], result.model_dir)

It works in a plain process (no process group needed: one is made for the run and torn down
after it), with ``nproc=N`` local ranks (spawned, gloo on CPU), and under torchrun/TorchX
(every rank calls it; rank 0 gets the result, the others ``None``).

Everything the user gave is checked before any rank starts: the config, the dataset's
``metadata.json`` against the period fields, an earlier run's outputs in ``out`` (replaced
only with ``overwrite``) and the checkpoints in ``checkpoint_dir`` (resumed only if they are of
this same dataset and configuration; see :func:`sml_torchrec.retrain.checkpoint.prepare`).
Mistakes raise :class:`~recsys_common.errors.UserError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_common.errors import (
    RunFailed,
    Terminated,
    UserError,
    check_output_dir,
    refuse_to_replace,
)
from recsys_common.files import write_json_atomic
from sml_torchrec.retrain.config import ConfigError, PeriodRoles, RetrainConfig

if TYPE_CHECKING:  # torch is imported only once a run starts
    from sml_torchrec.data.synthetic import SyntheticConfig
    from sml_torchrec.retrain.checkpoint import RunIdentity

__all__ = ["RetrainConfig", "RunResult", "run"]

RESULTS_NAME = "results.json"
# Library loggers whose INFO lines (the per-period progress) a run shows when the caller has
# not configured logging.
LOGGERS = ("sml_torchrec",)


@dataclass
class RunResult:
    """What a finished run returns (on rank 0)."""

    results: dict  # the content of results.json (docs/results.md)
    out: Path  # the run directory
    results_path: Path  # OUT/results.json
    csv_path: Path  # OUT/results.csv, every tested period's metrics
    plot_path: Path  # OUT/results.png, recall/hit@20 and NDCG@20 per period
    model_dir: Path | None  # OUT/model (None with save_model=False)


def _synthetic_config(cfg: RetrainConfig) -> SyntheticConfig:
    from sml_torchrec.data.synthetic import SyntheticConfig

    return SyntheticConfig(seed=cfg.seed)


def _synthetic_path(cfg: RetrainConfig) -> Path:
    return Path(cfg.out) / "data" / "synthetic"


def check_inputs(cfg: RetrainConfig) -> None:
    """Everything that can be checked before any data is built or rank started (UserError)."""
    from sml_torchrec.retrain.export import check_model_output
    from sml_torchrec.retrain.report import CSV_NAME, PLOT_NAME

    out = Path(cfg.out)
    check_output_dir(out)
    for name in (RESULTS_NAME, CSV_NAME, PLOT_NAME):
        refuse_to_replace(out / name, cfg.overwrite)
    if cfg.save_model:
        check_model_output(out, cfg.overwrite)
    if cfg.checkpoint_dir:
        check_output_dir(cfg.checkpoint_dir, "--checkpoint-dir")
    if cfg.data:
        from sml_torchrec.data.period_dataset import PeriodDataset

        ds = PeriodDataset(cfg.data)  # checks metadata.json against the files; names what is broken
        periods, where = ds.num_periods, f"{cfg.data} ({ds.root / 'metadata.json'})"
    else:
        syn = _synthetic_config(cfg)
        periods, where = syn.periods, "the synthetic dataset"
        _check_synthetic_cache(cfg, syn)
    try:
        PeriodRoles.from_config(periods, cfg)
    except ConfigError as e:
        raise UserError(f"{where}: {e}") from None


def _built_with(path: Path) -> dict | None:
    """The SyntheticConfig (as a dict) a synthetic dataset at ``path`` was built with."""
    try:
        built = json.loads((path / "metadata.json").read_text())["build"]["synthetic"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return built if isinstance(built, dict) else None


def _check_synthetic_cache(cfg: RetrainConfig, syn: SyntheticConfig) -> None:
    """OUT/data/synthetic is ours to build; it is never rebuilt over something else."""
    path = _synthetic_path(cfg)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    built = _built_with(path)
    if built is None:
        raise UserError(f"{path} exists and is not a synthetic dataset built by sml-retrain; "
                        "choose another --out")
    if built != dataclasses.asdict(syn) and not cfg.overwrite:
        raise UserError(f"{path} was built with other settings (seed {built.get('seed')}, this "
                        f"run has {syn.seed}); pass --overwrite to rebuild it, or choose "
                        "another --out")


def prepare_data(cfg: RetrainConfig) -> tuple[str, str]:
    """(dataset dir, dataset name); builds the synthetic default once under OUT/data."""
    if cfg.data:
        return cfg.data, Path(cfg.data).resolve().name
    from sml_torchrec.data.synthetic import build_synthetic

    path = _synthetic_path(cfg)
    syn = _synthetic_config(cfg)
    if _built_with(path) != dataclasses.asdict(syn):  # check_inputs allowed the rebuild
        build_synthetic(path, syn)
    return str(path), "synthetic"


def prepare_checkpoints(cfg: RetrainConfig, data_dir: str) -> RunIdentity | None:
    """This run's checkpoint identity (None without a checkpoint_dir); refuses another run's."""
    if not cfg.checkpoint_dir:
        return None
    from sml_torchrec.retrain import checkpoint

    identity, _ = checkpoint.prepare(
        cfg.checkpoint_dir, checkpoint.dataset_fingerprint(data_dir), cfg.decisive(),
        cfg.resume, cfg.overwrite)
    return identity


def _show_progress_lines(rank: int) -> None:
    """The per-period lines (INFO) on rank 0's stderr, warnings on every rank's. A caller who
    wants them elsewhere adds a handler to the ``sml_torchrec`` logger before the run; then
    it is left alone."""
    from sml_torchrec.retrain.progress_bars import TqdmLoggingHandler

    for name in LOGGERS:
        lg = logging.getLogger(name)
        if lg.handlers and not any(isinstance(h, TqdmLoggingHandler) for h in lg.handlers):
            continue
        if not lg.handlers:
            lg.addHandler(TqdmLoggingHandler())
        lg.propagate = False
        lg.setLevel(logging.INFO if rank == 0 else logging.WARNING)


# (category, message regex, module regex): what the stack says about itself on every run here
# and that a user can do nothing about. Anything else still shows.
KNOWN_WARNINGS = (
    # TorchRec's sharded modules are built on ShardedTensor; so are our shard-local ops.
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor", ""),
    # DMP's own DDP wrapper passes broadcast_buffers.
    (FutureWarning, r"`broadcast_buffers` is deprecated", r"torchrec\."),
    # The planner's default storage reservation; the plans here are small and exact.
    (FutureWarning, r"HeuristicalStorageReservation is known to cause issues", r"torchrec\."),
    # TorchRec's documented way to attach fused optimizers (README "SML inside your model").
    (DeprecationWarning, r"This API is deprecated\. Please use Pytorch Distributed", r"torchrec\."),
    # TorchRec's row-wise sharding collectives (on 2+ ranks), reported from torch's c10d.
    (FutureWarning, r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is "
     r"deprecated", r"torch\.distributed\."),
    # TorchRec and FBGEMM script and import their kernels at import time.
    (DeprecationWarning, r"`torch\.jit\.(script|interface)` is deprecated", r"torch\.jit\."),
    (DeprecationWarning, r"\s*\S*\s*(Failed to import|The Python module fbgemm_gpu)",
     r"fbgemm_gpu\."),
)


def _narrow_warnings() -> None:
    """Silence the :data:`KNOWN_WARNINGS` only (the ones a default run raises, seen with
    ``-W default`` on 1 and 2 ranks), and TorchRec's planner log notes about
    hardware discovery (it logs them as warnings on every plan, on CPU too)."""
    import warnings

    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    # Logged, not warned: the planner's topology and dry-run notes, and torch.fx's note on
    # is_fx_tracing hit by TorchRec's sharding.
    for name in ("torchrec.distributed.planner", "torch.fx._symbolic_trace"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_rank(
    cfg: RetrainConfig, data_dir: str, name: str, identity: RunIdentity | None = None
) -> dict | None:
    """The job of one rank (called in each process); rank 0 returns the results."""
    _narrow_warnings()
    import torch.distributed as dist

    from recsys_common.process_group import init_process_group
    from sml_torchrec.data.period_dataset import PeriodDataset
    from sml_torchrec.retrain.loop import run as run_loop

    created = not dist.is_initialized()
    init_process_group()  # one rank without a launcher gets a single-process group
    try:
        rank = dist.get_rank()
        _show_progress_lines(rank)
        results = run_loop(cfg, PeriodDataset(data_dir), name, identity)
    finally:
        if created:  # a single-process group made for this run only
            dist.destroy_process_group()
    return results if rank == 0 else None


def finish(cfg: RetrainConfig, results: dict) -> RunResult:
    """Rank 0 after the ranks: results.json, results.csv and results.png into OUT."""
    from sml_torchrec.retrain.report import write_reports

    out = Path(cfg.out)
    path = write_json_atomic(out / RESULTS_NAME, results)
    csv_path, plot_path = write_reports(results, out)
    model = out / results["model"] if results.get("model") else None
    return RunResult(results, out, path, csv_path, plot_path, model)


def _stopped(cfg: RetrainConfig, why: str) -> str:
    """``why`` plus where a rerun of the same command would resume from."""
    from sml_torchrec.retrain.checkpoint import resume_hint

    hint = resume_hint(cfg.checkpoint_dir)
    return f"{why}; {hint}" if hint else why


def _under_torchrun(cfg: RetrainConfig) -> RunResult | None:
    # Rank 0 checks and prepares (builds the default data, decides about checkpoints); the
    # others wait for its verdict, so a user error is reported once and no rank trains.
    import torch.distributed as dist

    from recsys_common.process_group import init_process_group

    init_process_group()
    rank = dist.get_rank()
    box: list = [None]
    if rank == 0:
        try:
            check_inputs(cfg)
            data_dir, name = prepare_data(cfg)
            box[0] = ("ok", data_dir, name, prepare_checkpoints(cfg, data_dir))
        except UserError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        dist.destroy_process_group()
        raise UserError(box[0][1] if rank == 0 else f"{box[0][1]} (reported by rank 0)")
    _, data_dir, name, identity = box[0]
    try:
        results = run_rank(cfg, data_dir, name, identity)
    except UserError as e:
        raise UserError(f"{e} (on rank {rank})") from e
    done = finish(cfg, results) if rank == 0 else None
    dist.destroy_process_group()
    return done


def run(config: RetrainConfig) -> RunResult | None:
    """Run every strategy of ``config`` through the periods and test them; see the module
    docstring. Returns the results and where they (and the model) were written; ``None`` on
    ranks other than 0 under torchrun."""
    from recsys_common.process_group import launched_by_torchrun, run_local

    cfg = config
    _narrow_warnings()
    if launched_by_torchrun():
        return _under_torchrun(cfg)
    check_inputs(cfg)
    data_dir, name = prepare_data(cfg)
    identity = prepare_checkpoints(cfg, data_dir)
    try:
        if cfg.nproc == 1:
            results = run_rank(cfg, data_dir, name, identity)
        else:
            results = run_local(run_rank, cfg.nproc, (cfg, data_dir, name, identity),
                                timeout_s=24 * 3600)[0]
    except RunFailed as e:  # a rank killed, a checkpoint that could not be written
        raise RunFailed(_stopped(cfg, str(e))) from e
    except Terminated as e:
        raise Terminated(_stopped(cfg, f"{e}; ranks stopped, no results written")) from e
    return finish(cfg, results)
