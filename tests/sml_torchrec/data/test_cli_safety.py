"""`sml-data` faced with bad input and with directories it must not touch.

Every user error must end in exit code 2 and exactly one line `sml-data: error: ...` naming the
culprit; every directory that is not a period dataset (and every input) must come out of a
build byte-identical.
"""

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sml_torchrec.data.cli import main
from sml_torchrec.data.period_dataset import PeriodDataset, period_file_name
from tests.files import file_tree

HEADER = "user_id,item_id,timestamp"
GOOD = [f"u{i % 5},i{i % 7},{1000 + 10 * i}" for i in range(40)]


def _csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _assert_one_line_error(rc: int, err: str, fragment: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("sml-data: error: "), err
    assert fragment in lines[0], err


def _build_csv(log: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--source", "csv", "--input", str(log), "--out", str(out), *extra]


# ------------------------------------------------------------------------------- bad inputs


def _parquet(path: Path, **cols) -> Path:
    pq.write_table(pa.table(cols), path)
    return path


def _w(name: str, data: bytes):
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return make


def _rows(*rows: str, header: str = HEADER, name: str = "log.csv"):
    return _w(name, ("\n".join([header, *rows]) + "\n").encode())


def _zip(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "log.csv", "w") as z:
        z.writestr("log.csv", "\n".join([HEADER, *GOOD]))
    return tmp / "log.csv"


def _tar(compressed: bool):
    def make(tmp: Path) -> Path:
        _json_lines(_review())(tmp)
        with tarfile.open(tmp / "review.tar", "w:gz" if compressed else "w") as t:
            t.add(tmp / "review.json", arcname="review.json")
        (tmp / "review.tar").replace(tmp / "review.json")  # named like the log it holds
        return tmp / "review.json"

    return make


def _json_lines(*objs, name="review.json"):
    return _w(name, "".join((o if isinstance(o, str) else json.dumps(o)) + "\n"
                            for o in objs).encode())


def _review(user="u", item="b", date="2020-01-01 00:00:00", stars=4):
    return {"user_id": user, "business_id": item, "date": date, "stars": stars}


def _dir(tmp: Path) -> Path:
    (tmp / "logs").mkdir()
    return tmp / "logs"


BAD_BUILDS = [
    # (id, make the input, source, extra args, fragment of the one error line)
    *[(f"id-{tok}", _rows(f"{tok},i1,5", "u2,i1,6"), "csv", [],
       f"column 'user_id': row 1: {tok!r} is a missing value, not an id")
      for tok in ("NaN", "nan", "null", "None", "NULL", "N/A")],
    ("id-empty", _rows("u1,,5", "u2,i1,6"), "csv", [], "column 'item_id': row 1: missing id"),
    ("id-blank-many", _rows(*[f" ,i{k},{k}" for k in range(6)]), "csv", [],
     "row 1 (also 2, 3 and 3 more)"),
    ("id-parquet-null", lambda t: _parquet(t / "log.parquet", user_id=["a", None, "c"],
                                           item_id=["x", "y", "z"], timestamp=[1, 2, 3]),
     "csv", ["--periods", "1"], "log.parquet: column 'user_id': row 2: missing id"),
    ("id-parquet-nan", lambda t: _parquet(t / "log.parquet", user_id=[1.0, float("nan"), 3.0],
                                          item_id=[1, 2, 3], timestamp=[1, 2, 3]),
     "csv", ["--periods", "1"], "row 2: missing id (NaN)"),
    ("ts-negative-count", _rows("u1,i1,5", "u2,i2,-5"), "csv", ["--cut", "count"],
     "column 'timestamp': row 2: timestamp -5 is negative"),
    ("ts-negative-time", _rows("u1,i1,-1", "u2,i2,5"), "csv", ["--periods", "1"],
     "row 1: timestamp -1 is negative"),
    ("ts-text", _rows("u1,i1,5", "u2,i2,abc"), "csv", [], "row 2: 'abc' is not an integer"),
    ("ts-iso-date", _rows("u1,i1,2020-01-01"), "csv", [], "'2020-01-01' is not an integer"),
    ("ts-repeated-header", _rows("u1,i1,5", HEADER, "u2,i2,6"), "csv", [],
     "a repeated header line?"),
    ("periods-vs-one-timestamp", _rows("u1,i1,7", "u2,i2,7", "u3,i3,7"), "csv",
     ["--periods", "5"], "needs at least 5 distinct timestamps, the log has 1"),
    ("periods-vs-rows-count", _rows("u1,i1,7", "u2,i2,8"), "csv",
     ["--periods", "5", "--cut", "count"], "needs at least 5 interactions, the log has 2"),
    ("time-gap", _rows("u1,i1,0", "u2,i2,1", "u3,i3,2", "u4,i4,99"), "csv",
     ["--periods", "3"], "period(s) 1 of 3 would be empty"),
    ("zip-named-csv", _zip, "csv", [], "is a zip archive"),
    ("tar", _tar(False), "yelp", [], "review.json: is a tar archive; extract it"),
    ("tar-gz", _tar(True), "yelp", [], "gzip-compressed, and a tar archive; extract it"),
    ("empty-gzip", _w("log.csv", gzip.compress(b"")), "csv", [], "empty file (gzip-compressed)"),
    ("utf16", _w("log.csv", ("\n".join([HEADER, *GOOD])).encode("utf-16")), "csv", [],
     "is UTF-16 text"),
    ("binary", _w("log.csv", b"\x00\x01\x02binary" * 10), "csv", [], "is a binary file"),
    ("not-utf8", _w("log.csv", f"{HEADER}\nu1,i1,5\nu\xe9,i2,6\n".encode("latin-1")), "csv", [],
     "line 3: byte 0xe9 at column 2 is not UTF-8"),
    ("header-not-utf8", _w("log.csv", b"user_id,item_id,tim\xe7stamp\nu1,i1,5\n"), "csv", [],
     "log.csv: line 1: byte 0xe7 at column 20 is not UTF-8"),
    ("empty-file", _w("log.csv", b""), "csv", [], "log.csv: empty file"),
    ("header-only", _rows(), "csv", [], "no records: the log has no data rows"),
    ("missing-column", _rows("u1,i1,5", header="uid,item_id,timestamp"), "csv", [],
     "missing user column 'user_id'; the CSV header has columns: uid, item_id, timestamp"),
    ("wrong-delimiter", _rows("u1;i1;5", header="user_id;item_id;timestamp"), "csv", [],
     "pass --delimiter ';'"),
    ("duplicate-header", _rows("u1,u1,i1,5", header="user_id,user_id,item_id,timestamp"), "csv",
     [], "names column 'user_id' twice"),
    ("ragged-row", _rows("u1,i1,5", "u2,i2", "u3,i3,7"), "csv", [],
     "row 2: Expected 3 columns, got 2"),
    ("quote-spanning-lines", _rows("u1,i1,5", 'u0,"i2,7', "u2,i2,8", "u3,i3"), "csv", [],
     "Expected 3 columns"),
    ("control-characters", _rows("u1,i1,5", "u1\x0b", "u2,i2,8"), "csv", [],
     "row 2: Expected 3 columns, got 1: u1\\x0b"),
    ("input-missing", lambda t: t / "nope.csv", "csv", [], "nope.csv: no such file"),
    ("input-dir-yelp", _dir, "yelp", [], "logs: is a directory"),
    ("input-dir-no-parquet", _dir, "csv", [], "directory has no files ending in .parquet"),
    ("kcore-removes-all", _rows(*GOOD[:6]), "csv", ["--kcore", "5", "--periods", "1"],
     "--kcore 5 removed all 6 interactions"),
    ("yelp-malformed", _json_lines(_review(), '{"user_id": "u", oops'), "yelp", [],
     "review.json: line 2: malformed JSON"),
    ("yelp-missing-field", _json_lines({"user_id": "u", "date": "2020-01-01"}), "yelp", [],
     "line 1: missing field 'business_id'"),
    ("yelp-nan-id", _json_lines(_review(), _review(user="NaN")), "yelp", [],
     "user_id: line 2: 'NaN' is a missing value"),
    ("yelp-before-1970", _json_lines(_review(date="1969-12-31 00:00:00")), "yelp", [],
     "date: line 1: timestamp -86400 is negative"),
    ("yelp-not-utf8", _w("review.json", json.dumps(_review()).encode() + b"\n{\"user_id\": "
                         b"\"\xff\"}\n"), "yelp", [], "line 2: byte 0xff"),
    ("movielens-negative-ts", _w("u.data", b"1\t2\t3\t5\n1\t3\t4\t-9\n"), "movielens", [],
     "row 2: timestamp -9 is negative"),
    ("movielens-empty", _w("u.data", b"\n\n"), "movielens", [], "holds only blank lines"),
    ("header-spaces", _rows("u1,i1,5", header="user_id, item_id, timestamp"), "csv", [],
     "(column ' item_id' has spaces around its name)"),
    ("header-case", _rows("u1,i1,5", header="User_ID,item_id,timestamp"), "csv", [],
     "(did you mean 'User_ID'? names are case-sensitive)"),
    ("header-near-miss", _rows("u1,i1,5", header="userid,item_id,timestamp"), "csv", [],
     "(did you mean 'userid'?)"),
    ("tsv-as-csv", _rows("u1\ti1\t5", header="user_id\titem_id\ttimestamp"), "csv", [],
     "pass --delimiter '\\t'"),
    ("truncated-gzip", lambda t: _w("log.csv", gzip.compress(
        ("\n".join([HEADER, *GOOD * 50])).encode())[:300])(t), "csv", [],
     "Truncated compressed stream"),
    ("parquet-truncated", lambda t: _w("log.parquet", _parquet(
        t / "full.parquet", user_id=[1, 2], item_id=[3, 4], timestamp=[5, 6]
    ).read_bytes()[:40])(t), "csv", [], "log.parquet: cannot read as parquet"),
    ("parquet-not-utf8", lambda t: _parquet(
        t / "log.parquet", user_id=pa.array([b"a", b"\xff"], pa.binary()).view(pa.string()),
        item_id=[1, 2], timestamp=[5, 6]), "csv", [], "log.parquet: cannot read as parquet"),
    ("parquet-list-ids", lambda t: _parquet(t / "log.parquet", user_id=[1, 2],
                                            item_id=[[1], [2]], timestamp=[5, 6]),
     "csv", [], "column 'item_id': has type list<element: int64>, expected integer or string"),
    ("movielens-all-filtered", _w("ratings.dat", b"1::2::3::5\n"), "movielens",
     ["--min-rating", "4", "--periods", "1"], "a filter (--min-rating) dropped them all"),
    ("adressa-null-token", _json_lines({"userId": "null", "id": "a", "time": 5}, name="day"),
     "adressa", [], "userId: line 1: 'null' is a missing value"),
]


@pytest.mark.parametrize("make,source,extra,fragment", [r[1:] for r in BAD_BUILDS],
                         ids=[r[0] for r in BAD_BUILDS])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, make, source, extra, fragment):
    src = make(tmp_path)
    out = tmp_path / "ds"
    rc, _, err = _run(["build", "--source", source, "--input", str(src), "--out", str(out),
                       *extra], capsys)
    _assert_one_line_error(rc, err, fragment)
    assert not out.exists()


BAD_FLAGS = [
    (["--periods", "0"], "argument --periods: must be >= 1, got 0"),
    (["--periods", "x"], "argument --periods: 'x' is not an integer"),
    (["--kcore", "-1"], "argument --kcore: must be >= 0, got -1"),
    (["--delimiter", ";;"], "argument --delimiter: must be one character, got ';;'"),
    (["--delimiter", '"'], "cannot separate fields"),
    (["--cut", "weekly"], "argument --cut: invalid choice: 'weekly'"),
    (["--min-rating", "3"], "--min-rating applies only to --source movielens/yelp, not csv"),
    (["--seed", "1"], "--seed applies only to --source synthetic"),
    (["--user-col", "t", "--time-col", "t"], "must name different columns"),
]


@pytest.mark.parametrize("extra,fragment", BAD_FLAGS, ids=[" ".join(r[0]) for r in BAD_FLAGS])
def test_bad_flags_are_refused_by_the_parser(tmp_path, capsys, extra, fragment):
    log = _csv(tmp_path / "log.csv", GOOD)
    with pytest.raises(SystemExit) as e:
        main(_build_csv(log, tmp_path / "ds", *extra))
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["build", "--source", "synthetic", "--out", "X", "--input", "a.csv"],
     "--input is not used by --source synthetic"),
    (["build", "--source", "yelp", "--out", "X"], "--input is required for --source yelp"),
    (["build", "--source", "synthetic", "--out", "X", "--num-users", "0"],
     "--num-users: must be >= 1"),
    (["build", "--source", "synthetic", "--out", "X", "--min-rating", "nan"],
     "'nan' is not a finite number"),
    (["build", "--source", "nope", "--out", "X"], "invalid choice: 'nope'"),
    (["build", "--source", "synthetic", "--out", ""], "argument --out: must not be empty"),
    (["build", "--source", "csv", "--input", " ", "--out", "X"], "--input: must not be empty"),
])
def test_bad_flag_combinations(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and fragment in capsys.readouterr().err


def test_synthetic_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--source", "synthetic", "--periods", "5000", "--num-users", "100000",
              "--out", str(tmp_path / "ds")])
    assert e.value.code == 2 and "GiB of memory" in capsys.readouterr().err
    rc, _, err = _run(["build", "--source", "synthetic", "--periods", "3", "--num-users", "1",
                       "--out", str(tmp_path / "ds")], capsys)
    _assert_one_line_error(rc, err, "got no interactions with 1 users; use more users")
    assert not (tmp_path / "ds").exists()


def test_bom_and_crlf_are_fine(tmp_path, capsys):
    (tmp_path / "log.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join([HEADER, *GOOD]).encode())
    rc, out, err = _run(_build_csv(tmp_path / "log.csv", tmp_path / "ds", "--periods", "2"),
                        capsys)
    assert rc == 0 and "40 interactions, 5 users, 7 items" in out


def test_help_shows_defaults_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{csv,movielens,yelp,adressa,synthetic}" in text
    assert "(default: 10)" in text and "--overwrite" in text and "--debug" in text
    assert "(default: time)" in text and "(default: user_id)" in text


def test_compressed_csv_is_read_by_content_whatever_its_name(tmp_path, capsys):
    data = ("\n".join([HEADER, *GOOD]) + "\n").encode()
    for name, packed in (("a.csv", gzip.compress(data)), ("b.csv", bz2.compress(data)),
                         ("c.csv.gz", data), ("d.csv", lzma.compress(data))):
        (tmp_path / name).write_bytes(packed)
        rc, out, err = _run(_build_csv(tmp_path / name, tmp_path / f"ds-{name}", "--periods",
                                       "2"), capsys)
        assert rc == 0, err
        assert "40 interactions, 5 users, 7 items, 2 periods" in out


def test_count_cut_warns_about_straddling_timestamps(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", [f"u{k},i{k},{k // 4}" for k in range(12)])
    rc, _, err = _run(_build_csv(log, tmp_path / "ds", "--periods", "2", "--cut", "count"),
                      capsys)
    assert rc == 0
    lines = err.strip().splitlines()
    assert lines == ["sml-data: warning: --cut count: 1 timestamp(s) straddle a period boundary "
                     "(their interactions are split between two periods); use --cut time to "
                     "cut on time only"]
    assert PeriodDataset(tmp_path / "ds").meta.build["straddling_timestamps"] == 1
    # cutting between timestamps: no warning
    rc, _, err = _run(_build_csv(log, tmp_path / "ds2", "--periods", "3", "--cut", "count"),
                      capsys)
    assert rc == 0 and err == ""


def test_milliseconds_are_fine(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", [f"u{i % 5},i{i % 7},{1_600_000_000_000 + 10 * i}"
                                      for i in range(40)])
    rc, out, err = _run(_build_csv(log, tmp_path / "ds", "--periods", "4"), capsys)
    assert rc == 0 and "4 periods" in out


# ------------------------------------------------------------------------- damaged datasets


@pytest.fixture
def dataset(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", GOOD)
    assert main(_build_csv(log, tmp_path / "ds", "--periods", "3")) == 0
    capsys.readouterr()
    return tmp_path / "ds"


def _edit_meta(**changes):
    def edit(ds: Path) -> None:
        meta = json.loads((ds / "metadata.json").read_text())
        for k, v in changes.items():
            meta[k] = v(meta) if callable(v) else v
        (ds / "metadata.json").write_text(json.dumps(meta))

    return edit


def _remove(name):
    return lambda ds: (ds / name).unlink()


def _write(name, data: bytes):
    return lambda ds: (ds / name).write_bytes(data)


def _copy_period(src: int, dst: int):
    return lambda ds: (ds / period_file_name(dst)).write_bytes(
        (ds / period_file_name(src)).read_bytes())


DAMAGE = [
    ("items-upto", _edit_meta(items_upto=lambda m: [m["items_upto"][0] - 1,
                                                    *m["items_upto"][1:]]),
     "metadata.json: items_upto[0] is"),
    ("users-upto-and-num-users", _edit_meta(users_upto=lambda m: [u + 1 for u in m["users_upto"]],
                                            num_users=lambda m: m["num_users"] + 1),
     "metadata.json: users_upto[0] is"),
    ("num-users", _edit_meta(num_users=lambda m: m["num_users"] + 3),
     "metadata.json: users_upto[2] is 5 but num_users is 8"),
    ("period-counts", _edit_meta(period_counts=lambda m: [m["period_counts"][0] + 1,
                                                          *m["period_counts"][1:]]),
     "period=00000.parquet: has"),
    ("num-periods", _edit_meta(num_periods=2), "period_counts must be 2 integers"),
    ("period-start", _edit_meta(period_start=lambda m: [m["period_start"][0] - 1,
                                                        *m["period_start"][1:]]),
     "metadata.json: period 0 spans timestamps"),
    ("missing-field", _edit_meta(cut=None), "cut is None"),
    ("extra-period-file", _copy_period(0, 3), "periods/ also holds period=00003.parquet"),
    ("missing-period-file", _remove(period_file_name(1)), "missing file for period 1"),
    ("corrupt-period-file", _write(period_file_name(2), b"PAR1 not really"),
     "period=00002.parquet: unreadable parquet file"),
    ("missing-map", _remove("user_map.parquet"), "user_map.parquet: missing"),
    ("bad-json", _write("metadata.json", b'{"num_users": 3,'), "metadata.json: line 1: invalid"),
    ("not-object", _write("metadata.json", b"[1, 2]"), "expected a JSON object, got list"),
    ("no-metadata", _remove("metadata.json"), "metadata.json: missing"),
]


@pytest.mark.parametrize("damage,fragment", [r[1:] for r in DAMAGE], ids=[r[0] for r in DAMAGE])
def test_info_on_a_damaged_dataset_names_the_file_and_field(dataset, capsys, damage, fragment):
    damage(dataset)
    rc, out, err = _run(["info", str(dataset)], capsys)
    _assert_one_line_error(rc, err, fragment)
    assert out == ""


def test_info_on_a_missing_directory(tmp_path, capsys):
    rc, _, err = _run(["info", str(tmp_path / "nope")], capsys)
    _assert_one_line_error(rc, err, "nope: not a directory")


# ------------------------------------------------------------------------------ safety


def _user_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("mine\n")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "model.bin").write_bytes(os.urandom(64))
    (root / ".hidden").write_text("x")
    return root


def _writers(tmp_path: Path, log: Path):
    """Every way sml-data writes: from a CSV log and from the synthetic generator."""
    return [
        lambda out, *extra: _build_csv(log, out, "--periods", "2", *extra),
        lambda out, *extra: ["build", "--source", "synthetic", "--periods", "2",
                             "--num-users", "30", "--out", str(out), *extra],
    ]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("writer", [0, 1])
def test_a_user_directory_is_never_touched(tmp_path, capsys, writer, overwrite):
    (tmp_path / "in").mkdir()
    log = _csv(tmp_path / "in" / "log.csv", GOOD)
    mine = _user_dir(tmp_path / "mine")
    before = file_tree(tmp_path, dirs=True)
    rc, _, err = _run(_writers(tmp_path, log)[writer](mine, *overwrite), capsys)
    _assert_one_line_error(rc, err, f"--out {mine}: is not empty and is not a period dataset")
    assert "notes.txt" in err
    assert file_tree(tmp_path, dirs=True) == before


@pytest.mark.parametrize("where", ["input-dir", "input-file", "parent-of-input",
                                   "inside-input-dir"])
def test_the_input_is_never_touched(tmp_path, capsys, where):
    data = tmp_path / "data"
    data.mkdir()
    log = _csv(data / "log.csv", GOOD)
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [5, 6]}),
                   data / "log.parquet")
    before = file_tree(tmp_path, dirs=True)
    src, out, fragment = {
        "input-dir": (log, data, "contains the input"),
        "input-file": (log, log, "is the input"),
        "parent-of-input": (log, tmp_path, "contains the input"),
        "inside-input-dir": (data, data / "ds", "is inside the input directory"),
    }[where]
    rc, _, err = _run(_build_csv(src, out, "--periods", "1", "--overwrite"), capsys)
    _assert_one_line_error(rc, err, fragment)
    assert file_tree(tmp_path, dirs=True) == before


def test_out_dot(tmp_path, capsys, monkeypatch):
    log = _csv(tmp_path / "log.csv", GOOD)
    busy = _user_dir(tmp_path / "busy")
    monkeypatch.chdir(busy)
    before = file_tree(busy, dirs=True)
    rc, _, err = _run(_build_csv(log, Path("."), "--periods", "2"), capsys)
    _assert_one_line_error(rc, err, "--out .: is not empty and is not a period dataset")
    assert file_tree(busy, dirs=True) == before
    # an empty working directory is fine, and stays the working directory
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    rc, out, err = _run(_build_csv(log, Path("."), "--periods", "2"), capsys)
    assert rc == 0, err
    assert Path.cwd() == empty and sorted(os.listdir(".")) == [
        "item_map.parquet", "metadata.json", "periods", "user_map.parquet"]
    assert PeriodDataset(".").num_periods == 2


def test_rebuild_needs_overwrite(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", GOOD)
    out = tmp_path / "ds"
    assert main(_build_csv(log, out, "--periods", "2")) == 0
    before = file_tree(out, dirs=True)
    rc, _, err = _run(_build_csv(log, out, "--periods", "4"), capsys)
    _assert_one_line_error(rc, err, "already holds a period dataset; pass --overwrite")
    assert file_tree(out, dirs=True) == before
    rc, _, err = _run(_build_csv(log, out, "--periods", "4", "--overwrite"), capsys)
    assert rc == 0, err
    assert PeriodDataset(out).num_periods == 4
    assert sorted(os.listdir(tmp_path)) == ["ds", "log.csv"]  # nothing left beside it
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # nor inside it


def test_overwrite_never_deletes_extra_files_in_a_dataset(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", GOOD)
    out = tmp_path / "ds"
    assert main(_build_csv(log, out, "--periods", "2")) == 0
    (out / "README.md").write_text("my notes on this dataset")
    before = file_tree(out, dirs=True)
    rc, _, err = _run(_build_csv(log, out, "--periods", "3", "--overwrite"), capsys)
    _assert_one_line_error(rc, err, "holds a period dataset and also README.md")
    assert file_tree(out, dirs=True) == before


def test_a_failed_rebuild_keeps_the_old_dataset(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", GOOD)
    out = tmp_path / "ds"
    assert main(_build_csv(log, out, "--periods", "2")) == 0
    before = file_tree(out, dirs=True)
    bad = _csv(tmp_path / "bad.csv", ["u1,i1,x"])
    rc, _, err = _run(_build_csv(bad, out, "--overwrite"), capsys)
    _assert_one_line_error(rc, err, "'x' is not an integer")
    assert file_tree(out, dirs=True) == before


def test_out_is_a_file(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", GOOD)
    (tmp_path / "f").write_text("x")
    rc, _, err = _run(_build_csv(log, tmp_path / "f"), capsys)
    _assert_one_line_error(rc, err, "exists and is not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    bad = _csv(tmp_path / "bad.csv", ["u1,i1,x"])
    rc, _, err = _run(_build_csv(bad, tmp_path / "ds", "--debug"), capsys)
    assert rc == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("sml-data: error: ")
    monkeypatch.setenv("SML_TORCHREC_DEBUG", "1")
    rc, _, err = _run(_build_csv(bad, tmp_path / "ds"), capsys)
    assert rc == 2 and "Traceback" in err


# ------------------------------------------------------------------------ real processes


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SML_TORCHREC_DEBUG"}
    return subprocess.run([sys.executable, "-m", "sml_torchrec.data.cli", *args],
                          capture_output=True, text=True, env=env, timeout=120, **kw)


def test_subprocess_exit_codes(tmp_path):
    log = _csv(tmp_path / "log.csv", ["NaN,i1,5"])
    p = _cli(*_build_csv(log, tmp_path / "ds"))
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        f"sml-data: error: {log}: column 'user_id': row 1: 'NaN' is a missing value, not an "
        "id; remove or fill in those rows"]
    p = _cli(*_build_csv(log, tmp_path / "ds", "--periods", "0"))
    assert p.returncode == 2 and "--periods: must be >= 1" in p.stderr
    mine = _user_dir(tmp_path / "mine")
    before = file_tree(mine, dirs=True)
    p = _cli(*_build_csv(_csv(tmp_path / "ok.csv", GOOD), mine, "--overwrite"))
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
    assert file_tree(mine, dirs=True) == before
    p = _cli(*_build_csv(tmp_path / "ok.csv", tmp_path / "ds", "--periods", "2"))
    assert p.returncode == 0 and p.stderr == ""


def test_info_into_a_closed_pipe_is_quiet(dataset):
    # the reader is gone before anything is written, as with `sml-data info DIR | head -0`
    p = subprocess.Popen([sys.executable, "-m", "sml_torchrec.data.cli", "info", str(dataset)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_info_piped_to_head(dataset):
    p = subprocess.run(f"{sys.executable} -m sml_torchrec.data.cli info {dataset} | head -1",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert p.stdout.startswith(f"{dataset}: source csv:")
    assert len(p.stdout.splitlines()) == 1 and "Traceback" not in p.stderr


def test_out_inside_a_dataset_is_refused(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", GOOD)
    assert main(_build_csv(log, tmp_path / "ds", "--periods", "2")) == 0
    before = file_tree(tmp_path / "ds", dirs=True)
    rc, _, err = _run(_build_csv(log, tmp_path / "ds" / "sub", "--periods", "2"), capsys)
    _assert_one_line_error(rc, err, f"is inside the period dataset {tmp_path / 'ds'}")
    assert file_tree(tmp_path / "ds", dirs=True) == before


def test_build_errors_name_the_input_file(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", ["u1,i1,7", "u2,i2,7"])
    rc, _, err = _run(_build_csv(log, tmp_path / "ds", "--periods", "3"), capsys)
    _assert_one_line_error(rc, err, "distinct timestamps")
    assert err.startswith(f"sml-data: error: {log}: --periods 3 with --cut time")


def test_symbolic_links_do_not_hide_the_input(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    log = _csv(data / "log.csv", GOOD)
    (tmp_path / "link-to-data").symlink_to(data)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "log.csv").symlink_to(log)
    before = file_tree(data, dirs=True)
    for src, out in ((log, tmp_path / "link-to-data"),
                     (tmp_path / "out" / "log.csv", tmp_path / "out")):
        rc, _, err = _run(_build_csv(src, out, "--periods", "1", "--overwrite"), capsys)
        _assert_one_line_error(rc, err, "contains the input")
    assert file_tree(data, dirs=True) == before and (tmp_path / "out" / "log.csv").is_symlink()


def test_info_ignores_fields_a_later_writer_adds(dataset, capsys):
    _edit_meta(fingerprint="abc")(dataset)
    rc, out, err = _run(["info", str(dataset)], capsys)
    assert rc == 0 and err == "" and "5 users, 7 items, 3 periods" in out


def test_leftovers_of_a_killed_build(tmp_path, capsys):
    log = _csv(tmp_path / "log.csv", GOOD)
    out = tmp_path / "ds"
    (out / ".build-tmp-dead" / "periods").mkdir(parents=True)  # killed while writing
    rc, _, err = _run(_build_csv(log, out, "--periods", "2"), capsys)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["item_map.parquet", "metadata.json", "periods",
                                       "user_map.parquet"]
    # killed during the swap: the backup may hold the previous dataset, so --overwrite it is
    (out / ".build-old-dead").mkdir()
    (out / "metadata.json").rename(out / ".build-old-dead" / "metadata.json")
    rc, _, err = _run(_build_csv(log, out, "--periods", "2"), capsys)
    _assert_one_line_error(rc, err, "the remains of an interrupted period dataset build; pass "
                                    "--overwrite")
    rc, _, err = _run(_build_csv(log, out, "--periods", "2", "--overwrite"), capsys)
    assert rc == 0 and PeriodDataset(out).num_periods == 2
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_library_calls_are_guarded_too(tmp_path):
    from recsys_common.output import OutputError
    from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic

    mine = _user_dir(tmp_path / "mine")
    before = file_tree(mine, dirs=True)
    with pytest.raises(OutputError) as e:
        build_synthetic(mine, SyntheticConfig(num_users=30, periods=2))
    assert str(e.value).startswith(f"{mine}: is not empty and is not a period dataset")
    assert file_tree(mine, dirs=True) == before
