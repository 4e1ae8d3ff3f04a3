"""Typed configuration of a retraining run (what `sml-retrain` flags fill in)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_common.errors import ConfigError
from sml_torchrec.distributed.names import SHARDING_NAMES
from sml_torchrec.retrain.strategies import DEFAULT_STRATEGIES, STRATEGY_NAMES

if TYPE_CHECKING:
    from sml_torchrec.modules.transfer import TransferConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

PROTOCOL_NAMES = ("full", "sampled")
# sml_torchrec.retrain.serving.NEVER_TRAINED_RULES, named here for the same reason.
NEVER_TRAINED_NAMES = ("mean", "untrained")
# sml_torchrec.modules.transfer.PRECISIONS, named here so that the config needs no torch import.
TRANSFER_PRECISIONS = ("fp32", "tf32", "bf16")


__all__ = ["ConfigError", "PeriodRoles", "RetrainConfig"]


def _flag(name: str) -> str:
    return "argument --" + name.replace("_", "-")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A field whose ``help`` (and argparse ``choices``, ``metavar``) live next to it."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, **extra}, **kw)


@dataclass
class RetrainConfig:
    """Everything that decides a run's numbers; stored verbatim in results.json.

    Period roles (the authors' protocol), for P periods: ``init_periods`` train the shared
    initial MF; the periods up to the online phase are SML's offline meta-training periods;
    the last ``val_periods + test_periods`` are online: each model W_{s-1} is tested on D_s
    before it sees D_s. Validation periods are reported apart from the test periods.

    Each field's ``metadata["help"]`` is its ``sml-retrain --help`` text.
    """

    data: str | None = _opt(None, "period dataset directory from `sml-data build` "
                                  "(default: a built-in synthetic dataset, built once under "
                                  "OUT/data)", metavar="DIR")
    out: str = _opt("runs/default", "run directory: results.json, results.csv, results.png and "
                                    "the saved model (an earlier run's are replaced only with "
                                    "--overwrite)", metavar="DIR")
    strategies: list[str] = _opt(lambda: list(DEFAULT_STRATEGIES),
                                 "comma-separated strategies, rows of the table",
                                 choices=STRATEGY_NAMES)
    init_periods: int = _opt(3, "first periods that train the shared initial MF")
    val_periods: int = _opt(2, "online periods reported as validation (before the test ones)")
    test_periods: int = _opt(5, "last periods, averaged in the table")
    dim: int = _opt(32, "embedding dimension of the user and item tables")
    biases: bool = _opt(False, "MF-based strategies (sml, fine_tune, full_retrain, sample_based, "
                               "incctr, asmg) score p_u.q_i + b_u + b_i with a learned user and "
                               "item bias, trained like the tables (SML: in step 1; its "
                               "transfer covers the embeddings only)")
    table_lr: float = _opt(0.05, "learning rate of the tables (FBGEMM fused row-wise Adagrad)")
    l2_tables: float = _opt(1e-6, "L2 penalty on looked-up table rows (lambda1)")
    batch_size: int = _opt(1024, "interactions per step of table training, per rank")
    epochs: int = _opt(3, "epochs per period: table training of the baselines and of SML's new "
                          "W_hat_t")
    fresh_optimizer: bool = _opt(False, "restart the tables' row-wise Adagrad state at every "
                                        "period instead of carrying it over as one long "
                                        "training job does (carried, rows trained in earlier "
                                        "periods take ever smaller steps)")
    init_epochs: int = _opt(10, "epochs of the initial MF (the best on period INIT_PERIODS kept)")
    transfer_lr: float = _opt(1e-3, "Adam learning rate of SML's transfer Theta")
    l2_transfer: float = _opt(1e-4, "L2 penalty on Theta (lambda2)")
    transfer_batch_size: int = _opt(256, "interactions per step of transfer training, per rank")
    rounds: int = _opt(3, "SML outer rounds per period (Algorithms 1 and 2)")
    transfer_hidden: int = _opt(512, "hidden width of the transfer's MLP")
    transfer_n1: int = _opt(10, "transfer's first convolution: number of filters (n1)")
    transfer_n2: int = _opt(5, "transfer's second convolution: number of filters (n2)")
    transfer_precision: str = _opt("fp32", "matrix products of the transfer's GPU kernels: fp32 "
                                           "(IEEE), tf32 or bf16 (faster, ~1e-3 and ~1e-2 of "
                                           "the output's scale); CPUs compute in fp32",
                                   choices=TRANSFER_PRECISIONS)
    reservoir_size: int = _opt(10_000, "sample_based and incctr: old interactions replayed "
                                       "each period")
    kd_weight: float = _opt(0.2, "incctr: weight lambda of distilling the previous period's "
                                 "model: (1 - lambda) x log loss + lambda x distillation")
    asmg_window: int = _opt(3, "asmg: past periods' models the generator is trained over per "
                               "period (its GRU state carries the older ones)")
    asmg_hidden: int = _opt(4, "asmg: GRU hidden units per embedding coordinate")
    asmg_lr: float = _opt(1e-2, "asmg: Adam learning rate of the generator")
    sharding: str = _opt("row_wise", "how the tables are sharded over ranks",
                         choices=SHARDING_NAMES)
    protocols: list[str] = _opt(lambda: ["full", "sampled"],
                                "comma-separated evaluation protocols: full = rank all items, "
                                "sampled = NUM_EVAL_NEGATIVES sampled negatives",
                                choices=PROTOCOL_NAMES)
    num_eval_negatives: int = _opt(999, "sampled protocol: negatives per test interaction")
    never_trained: str = _opt("mean", "served vector of a user or item first seen in the tested "
                                      "period, for every strategy: mean = the mean of the "
                                      "served rows of the ids seen before, untrained = the "
                                      "model's own (initial) row", choices=NEVER_TRAINED_NAMES)
    tune: bool = _opt(False, "select each strategy's table_lr, epochs and l2_tables on the "
                             "validation periods' full recall@20 from a small grid around the "
                             "given values (retrain/tuning.py); results.json records the "
                             "choice")
    tune_stages: int = _opt(1, "with --tune, at most this many grids per strategy: while the "
                               "best setting so far is not its grid's centre, another grid "
                               "around it (retrain/tuning.py)")
    seed: int = _opt(0, "random seed (training and the synthetic data)")
    nproc: int = _opt(1, "local ranks to start (gloo on CPU); under torchrun ranks come "
                         "from the environment")
    checkpoint_dir: str | None = _opt(None, "directory of per-period checkpoints (default: "
                                            "none); a rerun resumes from the newest complete "
                                            "one", metavar="DIR")
    resume: bool = _opt(True, "resume from CHECKPOINT_DIR's newest complete checkpoint of this "
                              "same run (--no-resume: start afresh; refused if it holds "
                              "checkpoints, unless --overwrite)")
    keep_checkpoints: int = _opt(2, "complete checkpoints kept (older ones of this run are "
                                    "deleted)")
    save_model: bool = _opt(True, "save every strategy's served tables (and SML's Theta) after "
                                  "the last period to OUT/model as .npy files with a JSON "
                                  "manifest (--no-save-model: save nothing)")
    save_every_period: bool = _opt(False, "with --save-model, also keep the served tables after "
                                          "every period, not only the last")
    progress: bool = _opt(True, "progress bars over periods and epochs on rank 0 when stderr is "
                                "a terminal (--no-progress: none)")
    overwrite: bool = _opt(False, "replace an earlier run's OUT/results.json (.csv, .png) and "
                                  "OUT/model, and discard "
                                  "CHECKPOINT_DIR's checkpoints of another run (or of this one "
                                  "with --no-resume)")

    def __post_init__(self) -> None:
        # Messages name the flag: the CLI shows them as usage errors.
        for name, allowed in (("strategies", STRATEGY_NAMES), ("protocols", PROTOCOL_NAMES)):
            values = getattr(self, name)
            unknown = [s for s in values if s not in allowed]
            if unknown:
                raise ConfigError(f"{_flag(name)}: unknown {name} {unknown}; choose from "
                                  f"{','.join(allowed)}")
            if not values:
                raise ConfigError(f"{_flag(name)}: empty; choose from {','.join(allowed)}")
            dup = sorted({s for s in values if values.count(s) > 1})
            if dup:
                raise ConfigError(f"{_flag(name)}: lists {','.join(dup)} more than once")
        if self.never_trained not in NEVER_TRAINED_NAMES:
            raise ConfigError(f"{_flag('never_trained')}: unknown rule {self.never_trained!r}; "
                              f"choose from {','.join(NEVER_TRAINED_NAMES)}")
        if self.transfer_precision not in TRANSFER_PRECISIONS:
            raise ConfigError(f"{_flag('transfer_precision')}: unknown precision "
                              f"{self.transfer_precision!r}; choose from "
                              f"{','.join(TRANSFER_PRECISIONS)}")
        if self.sharding not in SHARDING_NAMES:
            raise ConfigError(f"{_flag('sharding')}: unknown sharding {self.sharding!r}; choose "
                              f"from {','.join(SHARDING_NAMES)}")
        for name in ("init_periods", "test_periods", "dim", "batch_size", "transfer_batch_size",
                     "init_epochs", "rounds", "transfer_hidden", "transfer_n1", "transfer_n2",
                     "num_eval_negatives", "nproc", "keep_checkpoints", "asmg_window",
                     "asmg_hidden", "tune_stages"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)}: must be >= 1, got {getattr(self, name)}")
        for name in ("val_periods", "epochs", "reservoir_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)}: must be >= 0, got {getattr(self, name)}")
        for name in ("table_lr", "transfer_lr", "asmg_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{_flag(name)}: must be a positive number, got {v}")
        for name in ("l2_tables", "l2_transfer"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{_flag(name)}: must be a number >= 0, got {v}")
        if not (math.isfinite(self.kd_weight) and 0 <= self.kd_weight <= 1):
            raise ConfigError(f"{_flag('kd_weight')}: must be in [0, 1], got {self.kd_weight}")
        if self.tune and self.val_periods < 1:
            raise ConfigError(f"{_flag('tune')} selects on the validation periods: needs "
                              f"{_flag('val_periods')} >= 1, got {self.val_periods}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"{_flag('seed')}: must be in 0..{2**32 - 1}, got {self.seed}")
        for name in ("out", "data", "checkpoint_dir"):
            if getattr(self, name) == "":
                raise ConfigError(f"{_flag(name)}: empty path")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> RetrainConfig:
        """The config in a TOML file (keys are field names, as flags with ``_``), with
        ``overrides`` on top; a key that is no field, or a value of the wrong type, is a
        :class:`ConfigError` naming the key and the file."""
        return cls(**{**read_toml(path), **overrides})

    def transfer_config(self) -> TransferConfig:
        """SML's transfer f_Θ as these fields set it (the rest at TransferConfig's defaults)."""
        from sml_torchrec.modules.transfer import TransferConfig

        return TransferConfig(n1=self.transfer_n1, n2=self.transfer_n2,
                              hidden=self.transfer_hidden, precision=self.transfer_precision)

    def decisive(self) -> dict[str, Any]:
        """The fields that decide the numbers: what a resumed checkpoint must match."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY_FIELDS}


# Settings that only say how and where a run goes; a run may be resumed with other values.
RUN_ONLY_FIELDS = frozenset(
    {"nproc", "resume", "out", "checkpoint_dir", "keep_checkpoints", "overwrite", "save_model",
     "save_every_period", "progress"}
)


@dataclass
class PeriodRoles:
    """Which period does what: ``offline`` = range(init, first_online), online to the end."""

    num_periods: int
    init: int
    first_online: int
    first_test: int

    @staticmethod
    def from_config(num_periods: int, cfg: RetrainConfig) -> PeriodRoles:
        online = cfg.val_periods + cfg.test_periods
        first_online = num_periods - online
        if first_online < cfg.init_periods + 1:
            raise ConfigError(
                f"{num_periods} periods cannot hold {cfg.init_periods} init + at least 1 "
                f"offline + {cfg.val_periods} validation + {cfg.test_periods} test periods "
                "(--init-periods, --val-periods, --test-periods)"
            )
        return PeriodRoles(num_periods, cfg.init_periods, first_online,
                           first_online + cfg.val_periods)

    @property
    def last_offline(self) -> int:
        return self.first_online - 1

    def role(self, s: int) -> str:
        if s < self.init:
            return "init"
        if s < self.first_online:
            return "offline"
        return "val" if s < self.first_test else "test"


def _toml_value(path: Path, key: str, value: Any, default: Any) -> Any:
    """``value`` of ``key`` as the field's type (a list may be given as "a,b" too)."""
    def bad(kind: str) -> ConfigError:
        return ConfigError(f"{path}: key {key!r} must be {kind}, got {value!r}")

    if isinstance(default, list):
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise bad("a list of names")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if not isinstance(value, str):  # paths and names (None defaults are paths)
        raise bad("a string")
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    """The :class:`RetrainConfig` fields set in a TOML file (``--config``), type-checked.

    Keys are the field names (``init_periods``, or ``init-periods`` as on the command line),
    all at the top level.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid TOML file ({e})") from None
    defaults = RetrainConfig()
    names = {f.name for f in fields(RetrainConfig)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ConfigError(f"{path}: unknown key {key!r}; the keys are the fields of "
                              f"RetrainConfig ({', '.join(sorted(names))})")
        out[name] = _toml_value(path, key, value, getattr(defaults, name))
    return out
