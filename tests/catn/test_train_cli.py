"""`catn-train`: bad arguments are one line and exit 2 before any work; an earlier run's
results.json and models are replaced only with --overwrite; --help documents every flag."""

import json
import os

import pytest

from catn import cli as train
from catn.cli import main
from catn.config import TrainConfig
from tests.files import file_tree

SMALL = {"overlap_users": 160, "source_only_users": 30, "target_only_users": 30,
         "items_source": 25, "items_target": 25, "seed": 3}


def call(argv, capsys):
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    return rc, capsys.readouterr().err


def assert_one_line(rc, err, fragment):
    lines = [line for line in err.splitlines() if not line.startswith("usage:")]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("catn-train: error: "), err
    assert fragment in lines[0], err
    assert "Traceback" not in err


BAD = [
    ("nproc 0", ["--nproc", "0"], "--nproc: must be >= 1, got 0"),
    ("nproc huge", ["--nproc", "100000"], "--nproc: 100000 local ranks"),
    ("eta 0", ["--eta", "0"], "--eta: 0 is outside (0, 1]"),
    ("eta above 1", ["--eta", "1,1.5"], "--eta: 1.5 is outside (0, 1]"),
    ("eta nan", ["--eta", "nan"], "--eta: nan is outside (0, 1]"),
    ("eta empty", ["--eta", ""], "--eta: empty"),
    ("eta repeated", ["--eta", "0.5,0.5"], "more than once"),
    ("eta not a number", ["--eta", "half"], "--eta: want comma-separated floats"),
    ("unknown method", ["--methods", "catn,bogus"], "--methods: unknown ['bogus']"),
    ("no method", ["--methods", ","], "--methods: empty"),
    ("bad seed", ["--seeds", "1,x"], "--seeds: want comma-separated ints"),
    ("negative seed", ["--seeds", "-1"], "--seeds: want distinct integers >= 0"),
    ("epochs 0", ["--epochs", "0"], "--epochs: must be >= 1, got 0"),
    ("lr 0", ["--lr", "0"], "--lr: must be a positive number"),
    ("dropout 1", ["--dropout", "1"], "--dropout: must be in [0, 1)"),
    ("window over doc", ["--window", "9", "--doc-len", "4"], "--window: 9 words do not fit"),
    ("window over default doc", ["--window", "81"], "--window: 81 words do not fit"),
    ("even window", ["--window", "4"], "--window: must be odd"),
    ("aspects 0", ["--aspects", "0"], "--aspects: must be >= 1"),
    ("timeout 0", ["--timeout", "0"], "--timeout: must be > 0"),
    ("unknown flag", ["--bogus"], "unrecognized arguments: --bogus"),
]
NPROC2 = {"eta above 1", "unknown method", "epochs 0"}


@pytest.mark.parametrize(
    "case,args,fragment,nproc",
    [(*b, "1") for b in BAD] + [(*b, "2") for b in BAD if b[0] in NPROC2],
    ids=[f"{b[0]}-1" for b in BAD] + [f"{b[0]}-2" for b in BAD if b[0] in NPROC2])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, capsys, case, args, fragment,
                                                    nproc):
    out = tmp_path / "out"
    rc, err = call(["--nproc", nproc, *args, "--out", str(out), "--no-progress"], capsys)
    assert_one_line(rc, err, fragment)
    assert not out.exists()


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_bad_paths_are_named(tmp_path, capsys, nproc):
    base = ["--nproc", nproc, "--out", str(tmp_path / "out")]
    rc, err = call([*base, "--data", str(tmp_path / "nope")], capsys)
    assert_one_line(rc, err, "nope: not a CATN dataset directory (no meta.json)")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "meta.json").write_text("{broken")
    rc, err = call([*base, "--data", str(tmp_path / "ds")], capsys)
    assert_one_line(rc, err, "meta.json: unreadable")
    rc, err = call([*base, "--word-vectors", str(tmp_path / "wv.txt")], capsys)
    assert_one_line(rc, err, "wv.txt: no such file")
    (tmp_path / "f").write_text("x")
    rc, err = call(["--nproc", nproc, "--out", str(tmp_path / "f")], capsys)
    assert_one_line(rc, err, "f is a file, not a directory")


@pytest.fixture
def earlier_run(tmp_path):
    d = tmp_path / "run"
    (d / "plots").mkdir(parents=True)
    (d / "plots" / "mse.png").write_bytes(os.urandom(300))
    (d / "results.json").write_text('{"earlier": true}\n')
    return d


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_earlier_results_are_kept_without_overwrite(earlier_run, capsys, nproc):
    before = file_tree(earlier_run)
    rc, err = call(["--nproc", nproc, "--out", str(earlier_run), "--no-progress"], capsys)
    assert_one_line(rc, err, "results.json exists")
    assert "--overwrite" in err and "another --out" in err
    assert file_tree(earlier_run) == before


def test_default_out_is_checked_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "runs" / "catn-synthetic_seed_0_"
    d.mkdir(parents=True)
    (d / "results.json").write_text("{}")
    rc, err = call(["--no-progress"], capsys)
    assert_one_line(rc, err, "runs/catn-synthetic_seed_0_/results.json exists")
    assert (d / "results.json").read_text() == "{}"


def test_overwrite_replaces_only_the_runs_outputs(earlier_run, capsys, monkeypatch):
    orig = train.parse_args

    def parse(argv):
        cfg = orig(argv)
        cfg.synthetic = SMALL
        return cfg

    monkeypatch.setattr(train, "parse_args", parse)
    before = file_tree(earlier_run)
    rc, err = call(["--eta", "1", "--methods", "item_mean,global_mean", "--no-progress",
                    "--out", str(earlier_run), "--overwrite"], capsys)
    assert rc == 0, err
    res = json.loads((earlier_run / "results.json").read_text())
    assert set(res["eta"]["1.0"]) == {"item_mean", "global_mean"}
    after = file_tree(earlier_run)
    assert after.pop("results.json") != before.pop("results.json")
    # the run's own new outputs; the user's other files are untouched
    assert after.pop("results.csv") and after.pop("mse_vs_eta.png")
    assert after == before


def test_flags_are_the_config_fields_and_old_spellings_still_work():
    new = train.parse_args(["--num-aspects", "3", "--etas", "1,0.5", "--timeout-s", "5",
                            "--no-use-aux", "--no-use-global-correlation",
                            "--no-centre-aspects", "--no-progress"])
    old = train.parse_args(["--aspects", "3", "--eta", "1,0.5", "--timeout", "5", "--no-aux",
                            "--no-global-correlation", "--no-centre-aspects",
                            "--no-progress"])
    assert new == old
    assert (new.num_aspects, new.etas, new.timeout_s) == (3, (1.0, 0.5), 5.0)
    assert not (new.use_aux or new.use_global_correlation or new.centre_aspects
                or new.progress)


def test_parser_defaults_are_the_configs():
    assert train.parse_args([]) == TrainConfig()


def test_every_flag_field_has_a_flag_and_synthetic_has_none():
    from dataclasses import fields

    flags = {o for a in train._parser()._actions for o in a.option_strings}
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert (flag in flags) == (f.name != "synthetic"), flag


def test_earlier_models_are_kept_without_overwrite(tmp_path, capsys):
    d = tmp_path / "run"
    (d / "models" / "eta_1.0").mkdir(parents=True)
    before = file_tree(d)
    rc, err = call(["--out", str(d), "--no-progress"], capsys)
    assert_one_line(rc, err, "models exists")
    assert file_tree(d) == before


def _flag_help(text: str) -> dict[str, str]:
    """``--flag`` -> its help text, from argparse's --help output."""
    out, flag = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            head, _, rest = stripped.partition("  ")
            flag = head.split(",")[0].split()[0].split("/")[0]
            out[flag] = rest.strip()
        elif flag and stripped:
            out[flag] += " " + stripped
        else:
            flag = None
    return out


@pytest.mark.parametrize("command", ["catn-train", "catn-data build", "catn-data info"])
def test_help_shows_meaning_and_default_of_every_flag(capsys, command):
    from catn.data.cli import main as data_main

    argv = command.split()[1:] + ["--help"]
    with pytest.raises(SystemExit) as e:
        (main if command == "catn-train" else data_main)(argv)
    assert e.value.code == 0
    helps = _flag_help(capsys.readouterr().out)
    assert len(helps) >= (20 if command == "catn-train" else 2)
    for flag, text in helps.items():
        if flag in ("-h", "--help"):
            continue
        assert len(text) > 10, (flag, text)  # a meaning, not just a name
        # the default, shown by the formatter or said in words (what "none given" means)
        assert "default" in text.lower(), (flag, text)
