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


def test_transfer_precision_reaches_the_transfer_and_is_checked():
    from sml_torchrec.modules.transfer import PRECISIONS
    from sml_torchrec.retrain.config import TRANSFER_PRECISIONS

    assert TRANSFER_PRECISIONS == PRECISIONS
    assert parse_config(["--transfer-precision", "bf16"]).transfer_precision == "bf16"
    assert RetrainConfig().transfer_precision == "fp32"
    with pytest.raises(SystemExit):  # argparse's choices
        parse_config(["--transfer-precision", "fp16"])
    with pytest.raises(ValueError, match="--transfer-precision: unknown precision 'fp16'"):
        RetrainConfig(transfer_precision="fp16")
    t = RetrainConfig(transfer_precision="tf32", transfer_n1=4, transfer_n2=3,
                      transfer_hidden=40).transfer_config()
    assert (t.n1, t.n2, t.hidden, t.precision) == (4, 3, 40, "tf32")


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match=r"unknown strategies \['gru'\]"):
        parse_config(["--strategies", "sml,gru"])


def test_resume_refuses_a_changed_configuration():
    from dataclasses import asdict

    from sml_torchrec.retrain.loop import _config_changes

    a = asdict(RetrainConfig())
    b = asdict(RetrainConfig(dim=64, nproc=4, out="elsewhere"))
    assert _config_changes(a, b) == ["dim: 32 -> 64"]


def test_config_file_fills_the_dataclass_and_flags_override_it(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('strategies = ["sml", "fine_tune"]\ninit-periods = 4\ndim = 16\n'
                 'table_lr = 1\nsave_every_period = true\n')
    cfg = parse_config(["--config", str(f), "--dim", "24"])
    assert cfg.strategies == ["sml", "fine_tune"] and cfg.init_periods == 4
    assert cfg.dim == 24 and cfg.table_lr == 1.0 and cfg.save_every_period
    assert RetrainConfig.from_toml(f, dim=12) == RetrainConfig(
        strategies=["sml", "fine_tune"], init_periods=4, dim=12, table_lr=1.0,
        save_every_period=True)


@pytest.mark.parametrize("text, fragment", [
    ("dimm = 3\n", "unknown key 'dimm'"),
    ("dim = '3'\n", "key 'dim' must be an integer"),
    ("strategies = 3\n", "key 'strategies' must be a list of names"),
    ("dim = \n", "not a valid TOML file"),
])
def test_config_file_mistakes_name_the_key_and_the_file(tmp_path, text, fragment):
    from recsys_common.errors import ConfigError

    f = tmp_path / "run.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as e:
        RetrainConfig.from_toml(f)
    assert str(f) in str(e.value)


def test_cli_reports_a_bad_config_file_in_one_line(tmp_path, capsys):
    from sml_torchrec.cli import main

    f = tmp_path / "run.toml"
    f.write_text("epochz = 1\n")
    try:
        rc = main(["--config", str(f), "--out", str(tmp_path / "out")])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and f"argument --config: {f}: unknown key 'epochz'" in err
    assert not (tmp_path / "out").exists()
