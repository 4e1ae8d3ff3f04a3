"""`sml-retrain`: bad arguments and inputs are one line and exit 2 before any work; an earlier
run's files are never replaced without --overwrite."""

import json
import os
import subprocess
import sys

import pytest

from sml_torchrec.cli import main
from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic
from sml_torchrec.retrain import checkpoint
from tests.files import file_tree

TINY = SyntheticConfig(num_users=160, periods=7, initial_items=40, new_items_per_period=15,
                       seed=3)
FLAGS = ["--init-periods", "2", "--val-periods", "1", "--test-periods", "2", "--dim", "8",
         "--transfer-hidden", "16", "--batch-size", "128", "--transfer-batch-size", "128",
         "--init-epochs", "1", "--epochs", "1", "--rounds", "1", "--num-eval-negatives", "50"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "tiny"
    build_synthetic(d, TINY)
    return d


def call(argv, capsys):
    """Run the command in-process; (exit code, stderr)."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    return rc, capsys.readouterr().err


def assert_one_line(rc, err, fragment, prog="sml-retrain"):
    """Exit 2 and one error line (argparse adds one short usage line before it)."""
    lines = [line for line in err.splitlines() if not line.startswith("usage:")]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert fragment in lines[0], err
    assert "Traceback" not in err


def _bad_metadata(tmp_path, tiny, text):
    d = tmp_path / "bad"
    d.mkdir()
    if text is not None:
        (d / "metadata.json").write_text(text)
    return ["--data", str(d)]


# (case, arguments (tiny data and a fresh --out are added), fragment of the message)
BAD = [
    ("empty strategies", ["--strategies", ""], "--strategies: empty"),
    ("unknown strategy", ["--strategies", "sml,gru"], "unknown strategies ['gru']"),
    ("repeated strategy", ["--strategies", "sml,sml"], "sml more than once"),
    ("bad sharding", ["--sharding", "diagonal"], "invalid choice: 'diagonal'"),
    ("nproc 0", ["--nproc", "0"], "--nproc: must be >= 1, got 0"),
    ("nproc huge", ["--nproc", "100000"], "--nproc: 100000 local ranks"),
    ("dim 0", ["--dim", "0"], "--dim: must be >= 1, got 0"),
    ("dim not a number", ["--dim", "x"], "--dim: invalid int value: 'x'"),
    ("negative lr", ["--table-lr", "-1"], "--table-lr: must be a positive number"),
    ("nan lr", ["--transfer-lr", "nan"], "--transfer-lr: must be a positive number"),
    ("unknown protocol", ["--protocols", "full,top"], "unknown protocols ['top']"),
    ("negative seed", ["--seed", "-1"], "--seed: must be in 0.."),
    ("keep 0 checkpoints", ["--keep-checkpoints", "0"], "--keep-checkpoints: must be >= 1"),
    ("unknown flag", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("periods exceed the dataset", ["--init-periods", "5"], "7 periods cannot hold 5 init"),
    ("empty checkpoint dir", ["--checkpoint-dir", ""], "--checkpoint-dir: empty path"),
]
NPROC2 = {"empty strategies", "unknown strategy", "bad sharding", "dim 0",
          "periods exceed the dataset"}


@pytest.mark.parametrize(
    "case,args,fragment,nproc",
    [(*b, "1") for b in BAD] + [(*b, "2") for b in BAD if b[0] in NPROC2],
    ids=[f"{b[0]}-1" for b in BAD] + [f"{b[0]}-2" for b in BAD if b[0] in NPROC2])
def test_bad_arguments_are_one_line_before_any_work(tiny, tmp_path, capsys, case, args,
                                                    fragment, nproc):
    out = tmp_path / "out"
    rc, err = call(["--data", str(tiny), *FLAGS, "--nproc", nproc, *args, "--out", str(out)],
                   capsys)
    assert_one_line(rc, err, fragment)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("nproc", ["1", "2"])
@pytest.mark.parametrize("text,fragment", [
    (None, "metadata.json: missing"),
    ("{not json", "metadata.json: line 1: invalid JSON"),
    ('{"num_users": 3}', "metadata.json: format_version is None"),
])
def test_missing_or_corrupt_metadata_is_named(tiny, tmp_path, capsys, text, fragment, nproc):
    rc, err = call([*_bad_metadata(tmp_path, tiny, text), *FLAGS, "--nproc", nproc,
                    "--out", str(tmp_path / "out")], capsys)
    assert_one_line(rc, err, fragment)


def test_missing_data_dir_and_file_as_out_are_named(tiny, tmp_path, capsys):
    rc, err = call(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert_one_line(rc, err, "nope: not a directory")
    (tmp_path / "file").write_text("x")
    rc, err = call(["--data", str(tiny), "--out", str(tmp_path / "file")], capsys)
    assert_one_line(rc, err, "file is a file, not a directory")
    rc, err = call(["--data", str(tiny), *FLAGS, "--out", str(tmp_path / "o"),
                    "--checkpoint-dir", str(tmp_path / "file")], capsys)
    assert_one_line(rc, err, "--checkpoint-dir")
    assert (tmp_path / "file").read_text() == "x"


def test_debug_adds_the_traceback(tiny, tmp_path, capsys):
    rc, err = call(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--debug"],
                   capsys)
    assert rc == 2 and "Traceback" in err
    assert err.splitlines()[-1] == f"sml-retrain: error: {tmp_path / 'nope'}: not a directory " \
                                   "(build one with `sml-data build`)"


def test_help_shows_meaning_choices_and_default_of_every_flag():
    p = subprocess.run([sys.executable, "-m", "sml_torchrec", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "--sharding {row_wise,table_wise,column_wise}" in text
    assert "how the tables are sharded over ranks (default: row_wise)" in text
    from sml_torchrec.retrain.strategies import STRATEGY_NAMES

    # argparse may break the long list inside a word: compare without any whitespace.
    assert "from" + ",".join(STRATEGY_NAMES) in "".join(text.split())
    assert "--tune" in text and "--never-trained {mean,untrained}" in text
    assert "--overwrite" in text and "--debug" in text and "exit codes:" in text


def test_parsing_flags_imports_neither_torch_nor_torchrec():
    code = ("import sys; from sml_torchrec.cli import parse_config; "
            "c = parse_config(['--sharding', 'column_wise', '--strategies', 'sml,caser']); "
            "print(c.sharding, sorted(m for m in ('torch', 'torchrec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["column_wise", "[]"]


def test_console_exit_code_and_stderr(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sml_torchrec", "--strategies", "",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-1].startswith("sml-retrain: error: argument --strategies")


@pytest.fixture
def earlier_run(tmp_path):
    """A run directory holding the user's files and an earlier run's results.json."""
    d = tmp_path / "run"
    (d / "notes").mkdir(parents=True)
    (d / "notes" / "todo.txt").write_text("my notes\n")
    (d / "results.json").write_text('{"earlier": true}\n')
    (d / "analysis.ipynb").write_bytes(os.urandom(256))
    return d


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_earlier_results_are_kept_without_overwrite(tiny, earlier_run, capsys, nproc):
    before = file_tree(earlier_run)
    rc, err = call(["--data", str(tiny), *FLAGS, "--nproc", nproc, "--out", str(earlier_run)],
                   capsys)
    assert_one_line(rc, err, "results.json exists")
    assert "--overwrite" in err and "another --out" in err
    assert file_tree(earlier_run) == before


def test_overwrite_run_then_checkpoints_of_another_run_are_refused(tiny, tmp_path,
                                                                   earlier_run, capsys):
    """One real (tiny, 1-rank) run: --overwrite replaces only results.json; then a dataset
    rebuilt in place, a changed flag and --no-resume are each refused, touching nothing."""
    data = tmp_path / "data"
    build_synthetic(data, TINY)
    ckpt = earlier_run / "ckpt"
    args = ["--data", str(data), *FLAGS, "--strategies", "fine_tune", "--out", str(earlier_run),
            "--checkpoint-dir", str(ckpt)]
    before = file_tree(earlier_run)
    rc, err = call([*args, "--overwrite"], capsys)
    assert rc == 0, err
    after = file_tree(earlier_run)
    assert json.loads((earlier_run / "results.json").read_text())["dataset"] == "data"
    assert {k: v for k, v in after.items() if k in before and k != "results.json"} == {
        k: v for k, v in before.items() if k != "results.json"}
    assert checkpoint.list_checkpoints(ckpt)

    # Same shape, other contents: the old checkpoints must not resume (a fresh --out, so
    # that results.json is not what stops it).
    build_synthetic(data, SyntheticConfig(**{**TINY.__dict__, "seed": 4}), overwrite=True)
    snapshot = file_tree(earlier_run)
    other = ["--out", str(tmp_path / "other")]
    rc, err = call([*args, *other], capsys)
    assert_one_line(rc, err, "holds checkpoints of another run (dataset files changed: "
                    "metadata.json, periods/period=00000.parquet, periods/period=00001.parquet "
                    "and 5 more)")
    assert "pass --overwrite to delete them" in err and "another --checkpoint-dir" in err
    build_synthetic(data, TINY, overwrite=True)  # the original data again, but another flag
    rc, err = call([*args, *other, "--dim", "16"], capsys)
    assert_one_line(rc, err, "dim: 8 -> 16")
    rc, err = call([*args, *other, "--no-resume"], capsys)
    assert_one_line(rc, err, "--no-resume: ")
    assert file_tree(earlier_run) == snapshot and not (tmp_path / "other").exists()


def test_the_synthetic_default_is_never_built_over_something_else(tmp_path, capsys):
    out = tmp_path / "run"
    mine = out / "data" / "synthetic"
    mine.mkdir(parents=True)
    (mine / "photo.jpg").write_bytes(b"\xff\xd8")
    before = file_tree(out)
    rc, err = call(["--out", str(out)], capsys)
    assert_one_line(rc, err, "is not a synthetic dataset built by sml-retrain")
    rc, err = call(["--out", str(out), "--overwrite"], capsys)  # not ours: never replaced
    assert_one_line(rc, err, "is not a synthetic dataset built by sml-retrain")
    assert file_tree(out) == before


def test_a_synthetic_default_of_another_seed_needs_overwrite(tmp_path, capsys):
    from dataclasses import asdict

    from sml_torchrec.api import _built_with, _synthetic_config
    from sml_torchrec.retrain.config import RetrainConfig

    out = tmp_path / "run"
    seed0 = _synthetic_config(RetrainConfig(seed=0))
    build_synthetic(out / "data" / "synthetic", seed0)
    assert _built_with(out / "data" / "synthetic") == asdict(seed0)  # so a rerun reuses it
    before = file_tree(out)
    rc, err = call(["--out", str(out), "--seed", "1"], capsys)
    assert_one_line(rc, err, "was built with other settings (seed 0, this run has 1)")
    assert file_tree(out) == before


def test_an_out_that_cannot_be_written_is_refused_before_work(tiny, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, err = call(["--data", str(tiny), "--out", str(tmp_path / "file" / "sub")], capsys)
    assert_one_line(rc, err, "file is a file, not a directory")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        rc, err = call(["--data", str(tiny), "--out", str(locked / "run")], capsys)
        assert_one_line(rc, err, "locked is not writable")


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_an_earlier_model_or_a_foreign_model_dir_is_kept(tiny, tmp_path, capsys, nproc):
    """OUT/model is replaced only with --overwrite and only if it is a saved model; a staging
    directory that is not ours is never touched. All refused before any work."""
    out = tmp_path / "run"
    model = out / "model"
    model.mkdir(parents=True)
    (model / "manifest.json").write_text('{"format": "sml-torchrec-model"}')
    args = ["--data", str(tiny), *FLAGS, "--nproc", nproc, "--out", str(out)]
    before = file_tree(out)
    rc, err = call(args, capsys)
    assert_one_line(rc, err, "model exists (an earlier run's model); pass --overwrite")
    (model / "manifest.json").write_text('{"mine": true}')
    before = file_tree(out)
    rc, err = call([*args, "--overwrite"], capsys)
    assert_one_line(rc, err, "model exists and is not a saved model")
    assert file_tree(out) == before
    (model / "manifest.json").unlink()
    model.rmdir()
    (out / ".model-partial").mkdir()
    (out / ".model-partial" / "notes.txt").write_text("mine")
    before = file_tree(out)
    rc, err = call([*args, "--overwrite"], capsys)
    assert_one_line(rc, err, ".model-partial exists and was not made by sml-retrain")
    assert file_tree(out) == before
    from sml_torchrec.api import check_inputs
    from sml_torchrec.retrain.config import RetrainConfig

    # Without saving a model, the directory is no obstacle.
    check_inputs(RetrainConfig(data=str(tiny), out=str(out), save_model=False, init_periods=2,
                               val_periods=1, test_periods=2))
