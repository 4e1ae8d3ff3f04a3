"""The ``catn-train`` command: flags (derived from :class:`~catn.config.TrainConfig`), checks
before any work, launching the ranks, and the printed tables.

Run ``catn-train`` (one process), ``catn-train --nproc 2`` (local ranks, gloo on CPU) or under
torchrun / TorchX (ranks from the environment; nccl on GPU). The training itself is
:func:`catn.train.run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from catn.baselines import LABELS
from catn.config import TrainConfig, flag_label, flag_names
from catn.data.errors import DataError
from catn.report import finish_outputs, format_table, out_dir
from recsys_common.cli_args import add_dataclass_flags, dataclass_kwargs
from recsys_common.errors import (
    EXIT_CODES_HELP,
    ConfigError,
    Terminated,
    UserError,
    check_output_dir,
    debug_requested,
    refuse_to_replace,
    run_command,
)
from recsys_common.process_group import max_local_ranks

PROG = "catn-train"


def _rank_main(cfg: TrainConfig) -> dict | None:
    """Entry point of each local rank (module level: spawn pickles it)."""
    from catn.train import run

    return run(cfg)


def scenario_of(cfg: TrainConfig) -> str:
    """The corpus' scenario name, from meta.json alone (DataError names a missing/bad one)."""
    if cfg.data is None:
        return f"synthetic(seed={cfg.synthetic.get('seed', cfg.synthetic_seed)})"
    meta_path = os.path.join(cfg.data, "meta.json")
    if not os.path.isfile(meta_path):
        raise DataError(cfg.data, "not a CATN dataset directory (no meta.json); build one with "
                                  "`catn-data build`")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(meta_path, f"unreadable: {e}") from None
    return str(meta.get("scenario", "unknown")) if isinstance(meta, dict) else "unknown"


def check_inputs(cfg: TrainConfig) -> None:
    """What can be checked before any data is read or rank started (UserError)."""
    out = out_dir(cfg, scenario_of(cfg))
    check_output_dir(out)
    for name in ("results.json", "models"):
        refuse_to_replace(os.path.join(out, name), cfg.overwrite)
    if cfg.word_vectors and not os.path.isfile(cfg.word_vectors):
        raise UserError(f"--word-vectors {cfg.word_vectors}: no such file")


def finish(cfg: TrainConfig, results: dict, wall_s: float) -> None:
    """Print the tables; write results.json, its CSV and plot (the models are already
    saved by :func:`catn.train.run`)."""
    results["wall_seconds"] = wall_s
    print()
    print(format_table(results, "mse", LABELS))
    print()
    print(format_table(results, "mae", LABELS))
    path = finish_outputs(results, out_dir(cfg, results["scenario"]), LABELS)
    print(f"\nwall time {wall_s:.1f}s; results written to {path} (with results.csv, "
          f"mse_vs_eta.png and the best model per eta under models/)")


def _parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainConfig` field with help; type, default, choices from it."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Data-parallel CATN training and the cold-start MSE table.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        usage="%(prog)s [--data DIR] [--out DIR] [--nproc N] [options]  (--help lists them)")
    add_dataclass_flags(p, TrainConfig, flag_names)
    p.add_argument("--debug", action="store_true",
                   help="also print the traceback of a user error (or set SML_TORCHREC_DEBUG=1)")
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags to config; any bad flag or value exits 2 with the usage line (argparse)."""
    p = _parser()
    kw = dataclass_kwargs(p, p.parse_args(argv), TrainConfig, flag_label)
    try:
        cfg = TrainConfig(**kw)
        cfg.resolved().__post_init__()  # the data-dependent defaults, too (window vs doc_len)
    except ConfigError as e:
        p.error(str(e))
    if cfg.nproc > max_local_ranks():
        p.error(f"argument --nproc: {cfg.nproc} local ranks on a machine with "
                f"{os.cpu_count()} CPUs; at most {max_local_ranks()}")
    return cfg


def _under_torchrun(cfg: TrainConfig, t0: float) -> None:
    import torch.distributed as dist

    from catn.train import run
    from recsys_common.process_group import init_process_group

    init_process_group()
    rank = dist.get_rank()
    try:
        # every rank checks (cheap: meta.json and a stat), so all stop together
        check_inputs(cfg)
        results = run(cfg)
    except UserError as e:
        raise UserError(f"{e} (on rank {rank})") from e
    if rank == 0:
        finish(cfg, results, time.perf_counter() - t0)
    dist.destroy_process_group()


def _body(argv: list[str] | None) -> None:
    cfg = parse_args(argv)
    from recsys_common.process_group import launched_by_torchrun, run_local

    t0 = time.perf_counter()
    if launched_by_torchrun():
        _under_torchrun(cfg, t0)
        return
    check_inputs(cfg)
    try:
        if cfg.nproc > 1:
            results = run_local(_rank_main, cfg.nproc, (cfg,), timeout_s=cfg.timeout_s)[0]
        else:
            results = _rank_main(cfg)
    except Terminated as e:
        raise Terminated(f"{e}; ranks stopped, no results written") from e
    finish(cfg, results, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """The ``catn-train`` command; returns its exit code (see ``--help``)."""
    return run_command(PROG, lambda: _body(argv), debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
