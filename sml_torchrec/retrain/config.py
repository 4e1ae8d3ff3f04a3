"""Typed configuration of a retraining run (what `sml-retrain` flags fill in)."""

from __future__ import annotations

from dataclasses import dataclass, field

STRATEGY_NAMES = ("sml", "fine_tune", "full_retrain", "sample_based", "gru4rec", "caser")
DEFAULT_STRATEGIES = ("sml", "fine_tune", "full_retrain", "sample_based")


@dataclass
class RetrainConfig:
    """Everything that decides a run's numbers; stored verbatim in results.json.

    Period roles (the authors' protocol), for P periods: ``init_periods`` train the shared
    initial MF; the periods up to the online phase are SML's offline meta-training periods;
    the last ``val_periods + test_periods`` are online: each model W_{s-1} is tested on D_s
    before it sees D_s. Validation periods are reported apart from the test periods.
    """

    data: str | None = None  # period dataset dir; None = built-in synthetic
    out: str = "runs/default"
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    init_periods: int = 3
    val_periods: int = 2
    test_periods: int = 5
    dim: int = 32
    # plain MF / Ŵ_t tables (FBGEMM fused row-wise Adagrad)
    table_lr: float = 0.05
    l2_tables: float = 1e-6  # λ1
    batch_size: int = 1024
    epochs: int = 3  # per period: table training of the baselines and of SML's new Ŵ_t
    init_epochs: int = 10
    # SML transfer Θ (dense Adam, gradients all-reduced)
    transfer_lr: float = 1e-3
    l2_transfer: float = 1e-4  # λ2
    transfer_batch_size: int = 256
    rounds: int = 3  # Algorithm 1/2 outer rounds per period
    transfer_hidden: int = 512
    transfer_n1: int = 10
    transfer_n2: int = 5
    reservoir_size: int = 10_000  # sample_based: replayed old interactions
    sharding: str = "row_wise"
    protocols: list[str] = field(default_factory=lambda: ["full", "sampled"])
    num_eval_negatives: int = 999
    seed: int = 0
    nproc: int = 1
    checkpoint_dir: str | None = None  # per-period checkpoints; None = none
    resume: bool = True  # continue from the newest complete checkpoint in checkpoint_dir
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGY_NAMES)}")
        bad = [p for p in self.protocols if p not in ("full", "sampled")]
        if bad:
            raise ValueError(f"unknown protocols {bad}; choose from ['full', 'sampled']")
        for name in ("init_periods", "test_periods", "dim", "batch_size", "rounds", "nproc"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_periods < 0 or self.epochs < 0 or self.init_epochs < 1:
            raise ValueError("val_periods and epochs must be >= 0, init_epochs >= 1")


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
            raise ValueError(
                f"{num_periods} periods cannot hold {cfg.init_periods} init + at least 1 "
                f"offline + {cfg.val_periods} validation + {cfg.test_periods} test periods"
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
