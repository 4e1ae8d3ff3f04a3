import pytest

from sml_torchrec.cli import parse_config
from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig


def test_period_roles_follow_the_protocol():
    cfg = RetrainConfig(init_periods=3, val_periods=2, test_periods=5)
    r = PeriodRoles.from_config(16, cfg)
    assert [r.role(s) for s in range(16)] == (
        ["init"] * 3 + ["offline"] * 6 + ["val"] * 2 + ["test"] * 5
    )
    assert r.last_offline == 8


def test_too_few_periods_is_explained():
    with pytest.raises(ValueError, match="cannot hold 3 init"):
        PeriodRoles.from_config(9, RetrainConfig(init_periods=3, val_periods=2, test_periods=5))


def test_flags_fill_the_dataclass():
    cfg = parse_config(["--strategies", "sml,fine_tune", "--dim", "16", "--transfer-lr", "0.01",
                        "--sharding", "table_wise"])
    assert cfg.strategies == ["sml", "fine_tune"]
    assert cfg.dim == 16 and cfg.transfer_lr == 0.01 and cfg.sharding == "table_wise"


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match=r"unknown strategies \['gru'\]"):
        parse_config(["--strategies", "sml,gru"])


def test_resume_refuses_a_changed_configuration():
    from dataclasses import asdict

    from sml_torchrec.retrain.loop import _config_changes

    a = asdict(RetrainConfig())
    b = asdict(RetrainConfig(dim=64, nproc=4, out="elsewhere"))
    assert _config_changes(a, b) == ["dim: 32 -> 64"]
