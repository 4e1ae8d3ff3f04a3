"""`sml-retrain`: period-by-period retraining of every strategy, tested period by period.

    sml-retrain                                   # synthetic data, all strategies, 1 rank
    sml-retrain --nproc 2 --out runs/x            # 2 local ranks (gloo on CPU)
    sml-retrain --data data/yelp --strategies sml,fine_tune --sharding row_wise
    torchrun --nproc_per_node 2 -m sml_torchrec   # or under torchrun / TorchX

Every field of :class:`RetrainConfig` is a flag (``--init-periods``, ``--transfer-lr``, ...).
Writes ``OUT/results.json`` and prints the paper-style table.

Everything the user gave is checked before any rank starts: the flags, the dataset's
``metadata.json`` against the period flags, an earlier run's ``results.json`` (replaced only
with ``--overwrite``) and the checkpoints in ``--checkpoint-dir`` (resumed only if they are of
this same dataset and configuration; see :func:`sml_torchrec.retrain.checkpoint.prepare`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_common.errors import (
    EXIT_CODES_HELP,
    RunFailed,
    Terminated,
    UserError,
    check_output_dir,
    debug_requested,
    refuse_to_replace,
    run_command,
)
from recsys_common.files import write_json_atomic
from sml_torchrec.retrain.config import ConfigError, PeriodRoles, RetrainConfig

if TYPE_CHECKING:  # the CLI imports torch only once the arguments are known to be good
    from sml_torchrec.data.synthetic import SyntheticConfig
    from sml_torchrec.retrain.checkpoint import RunIdentity

PROG = "sml-retrain"


def _parser() -> argparse.ArgumentParser:
    """One flag per :class:`RetrainConfig` field, its help, choices and default from the field."""
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0], epilog=EXIT_CODES_HELP,
        usage="%(prog)s [--data DIR] [--out DIR] [--nproc N] [options]  (--help lists them)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = RetrainConfig()
    for f in dataclasses.fields(RetrainConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        help_ = f.metadata["help"]
        choices = f.metadata.get("choices")
        metavar = f.metadata.get("metavar")
        if isinstance(value, list):
            # Checked by RetrainConfig (unknown, empty, repeated) so that the message can name
            # the bad element; argparse's choices cannot see inside a comma list.
            p.add_argument(flag, default=",".join(value), metavar="A,B,...",
                           help=f"{help_}; from {','.join(choices)}")
        elif isinstance(value, bool):
            action = "store_true" if value is False else argparse.BooleanOptionalAction
            p.add_argument(flag, default=value, action=action, help=help_)
        elif value is None:
            # The help says what None means; "%(default).0s" (empty) stops the formatter from
            # appending "(default: None)".
            p.add_argument(flag, default=None, metavar=metavar, help=help_ + "%(default).0s")
        else:
            p.add_argument(flag, type=type(value), default=value, choices=choices,
                           metavar=metavar, help=help_)
    p.add_argument("--debug", action="store_true",
                   help="also print the traceback of a user error (or set SML_TORCHREC_DEBUG=1)")
    return p


def _to_config(args: argparse.Namespace) -> RetrainConfig:
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(RetrainConfig)}
    for f in dataclasses.fields(RetrainConfig):
        if isinstance(getattr(RetrainConfig(), f.name), list):
            kw[f.name] = [s.strip() for s in kw[f.name].split(",") if s.strip()]
    return RetrainConfig(**kw)


def parse_config(argv: list[str] | None = None) -> RetrainConfig:
    """Flags to config. Malformed flags exit 2 (argparse); values out of range raise
    :class:`ConfigError` (a ``ValueError``), which :func:`main` turns into a usage error."""
    return _to_config(_parser().parse_args(argv))


def _quiet() -> None:
    # TorchRec's planner and FBGEMM warn at length about things that do not apply on CPU.
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("torchrec", "fbgemm_gpu", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _synthetic_config(cfg: RetrainConfig) -> SyntheticConfig:
    from sml_torchrec.data.synthetic import SyntheticConfig

    return SyntheticConfig(seed=cfg.seed)


def _synthetic_path(cfg: RetrainConfig) -> Path:
    return Path(cfg.out) / "data" / "synthetic"


def check_inputs(cfg: RetrainConfig) -> None:
    """Everything that can be checked before any data is built or rank started (UserError)."""
    out = Path(cfg.out)
    check_output_dir(out)
    refuse_to_replace(out / "results.json", cfg.overwrite)
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
        raise UserError(f"{path} exists and is not a synthetic dataset built by {PROG}; "
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
    """This run's checkpoint identity (None without --checkpoint-dir); refuses another run's."""
    if not cfg.checkpoint_dir:
        return None
    from sml_torchrec.retrain import checkpoint

    identity, _ = checkpoint.prepare(
        cfg.checkpoint_dir, checkpoint.dataset_fingerprint(data_dir), cfg.decisive(),
        cfg.resume, cfg.overwrite)
    return identity


def run_rank(
    cfg: RetrainConfig, data_dir: str, name: str, identity: RunIdentity | None = None
) -> dict | None:
    """The job of one rank (called in each process); rank 0 returns the results."""
    _quiet()
    import torch.distributed as dist

    from recsys_common.process_group import init_process_group
    from sml_torchrec.data.period_dataset import PeriodDataset
    from sml_torchrec.retrain.loop import run

    init_process_group()  # one rank without a launcher gets a single-process group
    results = run(cfg, PeriodDataset(data_dir), name, identity)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    return results


def _finish(cfg: RetrainConfig, results: dict) -> None:
    from sml_torchrec.retrain.loop import format_table

    path = write_json_atomic(Path(cfg.out) / "results.json", results)
    print(format_table(results))
    print(f"\nwrote {path}")


def _stopped(cfg: RetrainConfig, why: str) -> str:
    """``why`` plus where a rerun of the same command would resume from."""
    from sml_torchrec.retrain.checkpoint import resume_hint

    hint = resume_hint(cfg.checkpoint_dir)
    return f"{why}; {hint}" if hint else why


def _under_torchrun(cfg: RetrainConfig) -> None:
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
    if rank == 0:
        _finish(cfg, results)
    dist.destroy_process_group()


def _body(argv: list[str] | None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        cfg = _to_config(args)
    except ConfigError as e:
        parser.error(str(e))
    from recsys_common.process_group import (
        launched_by_torchrun,
        max_local_ranks,
        run_local,
    )

    if cfg.nproc > max_local_ranks():
        parser.error(f"argument --nproc: {cfg.nproc} local ranks on a machine with "
                     f"{os.cpu_count()} CPUs; at most {max_local_ranks()}")
    _quiet()

    if launched_by_torchrun():
        _under_torchrun(cfg)
        return
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
    _finish(cfg, results)


def main(argv: list[str] | None = None) -> int:
    """The ``sml-retrain`` command; returns its exit code (see ``--help``)."""
    return run_command(PROG, lambda: _body(argv), debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
