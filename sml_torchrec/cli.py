"""`sml-retrain`: period-by-period retraining of every strategy, tested period by period.

    sml-retrain                                   # synthetic data, all strategies, 1 rank
    sml-retrain --nproc 2 --out runs/x            # 2 local ranks (gloo on CPU)
    sml-retrain --data data/yelp --strategies sml,fine_tune --sharding row_wise
    sml-retrain --config run.toml --dim 64        # settings from a file, a flag on top
    torchrun --nproc_per_node 2 -m sml_torchrec   # or under torchrun / TorchX

Every field of :class:`RetrainConfig` is a flag (``--init-periods``, ``--transfer-lr``, ...).
Writes ``OUT/results.json``, ``OUT/results.csv``, ``OUT/results.png`` and the saved model
``OUT/model`` (see docs/results.md), and prints the paper-style table on stdout; the progress
lines go to stderr. The run itself is :func:`sml_torchrec.api.run`, which checks everything
the user gave before any rank starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from recsys_common.errors import EXIT_CODES_HELP, debug_requested, run_command
from sml_torchrec.api import RunResult, run
from sml_torchrec.retrain.config import ConfigError, RetrainConfig, read_toml

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
    p.add_argument("--config", metavar="FILE", default=None,
                   help="TOML file of settings, keys as the flags with _ (init_periods = 3, "
                        "strategies = [\"sml\", \"fine_tune\"]); flags given as well override "
                        "it (default: none)%(default).0s")
    p.add_argument("--debug", action="store_true",
                   help="also print the traceback of a user error (or set SML_TORCHREC_DEBUG=1)")
    return p


def _to_config(args: argparse.Namespace) -> RetrainConfig:
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(RetrainConfig)}
    for f in dataclasses.fields(RetrainConfig):
        if isinstance(getattr(RetrainConfig(), f.name), list):
            kw[f.name] = [s.strip() for s in kw[f.name].split(",") if s.strip()]
    return RetrainConfig(**kw)


def _parse(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and the arguments; ``--config FILE``'s values are the defaults that the
    other flags override."""
    parser = _parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = read_toml(known.config)
        except ConfigError as e:
            parser.error(f"argument --config: {e}")
        parser.set_defaults(**{k: ",".join(v) if isinstance(v, list) else v
                               for k, v in values.items()})
    return parser, parser.parse_args(argv)


def parse_config(argv: list[str] | None = None) -> RetrainConfig:
    """Flags (and ``--config FILE``) to config. Malformed flags exit 2 (argparse); values out
    of range raise :class:`ConfigError` (a ``ValueError``), which :func:`main` turns into a
    usage error."""
    return _to_config(_parse(argv)[1])


def _finish(result: RunResult) -> None:
    from sml_torchrec.retrain.loop import format_table

    print(format_table(result.results))
    print(f"\nwrote {result.results_path}, {result.csv_path.name}, {result.plot_path.name}"
          + (f" and the model in {result.model_dir}" if result.model_dir else ""))


def _body(argv: list[str] | None) -> None:
    parser, args = _parse(argv)
    try:
        cfg = _to_config(args)
    except ConfigError as e:
        parser.error(str(e))
    from recsys_common.process_group import max_local_ranks

    if cfg.nproc > max_local_ranks():
        parser.error(f"argument --nproc: {cfg.nproc} local ranks on a machine with "
                     f"{os.cpu_count()} CPUs; at most {max_local_ranks()}")
    result = run(cfg)
    if result is not None:  # rank 0
        _finish(result)


def main(argv: list[str] | None = None) -> int:
    """The ``sml-retrain`` command; returns its exit code (see ``--help``)."""
    return run_command(PROG, lambda: _body(argv), debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
