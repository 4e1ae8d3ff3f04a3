"""`sml-retrain`: period-by-period retraining of every strategy, tested period by period.

    sml-retrain                                   # synthetic data, all strategies, 1 rank
    sml-retrain --nproc 2 --out runs/x            # 2 local ranks (gloo on CPU)
    sml-retrain --data data/yelp --strategies sml,fine_tune --sharding row_wise
    torchrun --nproc_per_node 2 -m sml_torchrec   # or under torchrun / TorchX

Every field of :class:`RetrainConfig` is a flag (``--init-periods``, ``--transfer-lr``, ...).
Writes ``OUT/results.json`` and prints the paper-style table.
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

from sml_torchrec.data.errors import DataError
from sml_torchrec.retrain.config import STRATEGY_NAMES, RetrainConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sml-retrain", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = RetrainConfig()
    for f in dataclasses.fields(RetrainConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, list):
            p.add_argument(flag, default=",".join(value), help="comma-separated list" + (
                f" from {','.join(STRATEGY_NAMES)}" if f.name == "strategies" else ""))
        elif f.name == "data":
            p.add_argument(flag, default=None,
                           help="period dataset dir from `sml-data build` (default: synthetic)")
        elif value is None:
            p.add_argument(flag, default=None)
        elif isinstance(value, bool):
            p.add_argument(flag, default=value, action=argparse.BooleanOptionalAction)
        else:
            p.add_argument(flag, type=type(value), default=value)
    return p


def parse_config(argv: list[str] | None = None) -> RetrainConfig:
    args = vars(_parser().parse_args(argv))
    for f in dataclasses.fields(RetrainConfig):
        if isinstance(getattr(RetrainConfig(), f.name), list):
            args[f.name] = [s for s in args[f.name].split(",") if s]
    return RetrainConfig(**args)


def _quiet() -> None:
    # TorchRec's planner and FBGEMM warn at length about things that do not apply on CPU.
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("torchrec", "fbgemm_gpu", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def prepare_data(cfg: RetrainConfig) -> tuple[str, str]:
    """(dataset dir, dataset name); builds the synthetic default once under OUT/data."""
    if cfg.data:
        return cfg.data, Path(cfg.data).name
    from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic

    path = Path(cfg.out) / "data" / "synthetic"
    if not (path / "metadata.json").is_file():
        build_synthetic(path, SyntheticConfig(seed=cfg.seed))
    return str(path), "synthetic"


def run_rank(cfg: RetrainConfig, data_dir: str, name: str) -> dict | None:
    """The job of one rank (called in each process)."""
    _quiet()
    import torch.distributed as dist

    from sml_torchrec.data.period_dataset import PeriodDataset
    from sml_torchrec.distributed.process_group import init_process_group
    from sml_torchrec.retrain.loop import format_table, run

    if "WORLD_SIZE" not in os.environ:
        # A one-rank job still needs a process group: DMP and DCP are collective APIs.
        from sml_torchrec.distributed.process_group import free_port

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                          WORLD_SIZE="1", LOCAL_RANK="0")
    init_process_group()
    results = run(cfg, PeriodDataset(data_dir), name)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / "results.json")
    print(format_table(results))
    print(f"\nwrote {out / 'results.json'}")
    return results


def main(argv: list[str] | None = None) -> None:
    _quiet()
    cfg = parse_config(argv)
    from sml_torchrec.distributed.process_group import launched_by_torchrun, run_local

    try:
        if launched_by_torchrun():
            # Under torchrun/TorchX: rank 0 builds the default data, the others wait for it.
            import torch.distributed as dist

            from sml_torchrec.distributed.process_group import init_process_group

            init_process_group()
            if dist.get_rank() == 0:
                data_dir, name = prepare_data(cfg)
            dist.barrier()
            data_dir, name = prepare_data(cfg) if dist.get_rank() else (data_dir, name)
            run_rank(cfg, data_dir, name)
        else:
            data_dir, name = prepare_data(cfg)
            if cfg.nproc == 1:
                run_rank(cfg, data_dir, name)
            else:
                run_local(run_rank, cfg.nproc, (cfg, data_dir, name), timeout_s=24 * 3600)
    except DataError as e:
        print(f"sml-retrain: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
