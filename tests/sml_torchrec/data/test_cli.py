from sml_torchrec.data.cli import main
from sml_torchrec.data.period_dataset import PeriodDataset


def test_build_csv_then_info(tmp_path, capsys):
    log = tmp_path / "log.csv"
    rows = ["uid,iid,ts"] + [f"u{i % 7},i{i % 11},{1000 + 10 * i}" for i in range(60)]
    log.write_text("\n".join(rows) + "\n")
    out = tmp_path / "ds"
    main(["build", "--source", "csv", "--input", str(log), "--periods", "3", "--cut", "count",
          "--user-col", "uid", "--item-col", "iid", "--time-col", "ts", "--out", str(out)])
    assert "60 interactions, 7 users, 11 items, 3 periods" in capsys.readouterr().out
    ds = PeriodDataset(out)
    assert ds.meta.period_counts == [20, 20, 20]
    assert ds.raw_ids("user").to_pylist()[:3] == ["u0", "u1", "u2"]
    main(["info", str(out)])
    info = capsys.readouterr().out
    assert "7 users, 11 items, 3 periods" in info
    assert info.strip().splitlines()[-1].split()[:2] == ["2", "20"]


def test_bad_input_exits_with_the_culprit(tmp_path, capsys):
    log = tmp_path / "bad.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,3\n4,5,x7\n")
    rc = main(["build", "--source", "csv", "--input", str(log), "--periods", "1",
               "--out", str(tmp_path / "ds")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "timestamp" in err and "x7" in err
    assert not (tmp_path / "ds").exists()


def test_synthetic_build(tmp_path, capsys):
    main(["build", "--source", "synthetic", "--periods", "4", "--num-users", "100",
          "--out", str(tmp_path / "syn")])
    assert PeriodDataset(tmp_path / "syn").num_periods == 4
