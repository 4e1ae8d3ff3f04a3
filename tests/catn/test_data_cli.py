"""`catn-data` faced with bad input, damaged datasets and directories it must not touch."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catn.data.cli import main
from catn.data.dataset import load_corpus
from tests.catn.test_data import _amazon_files
from tests.files import file_tree

SMALL = ["--min-item-reviews", "5", "--min-user-reviews", "3", "--vocab-size", "40",
         "--doc-len", "16", "--etas", "1,0.5"]


def _review(user="A1", item="X", rating=4.0, **extra):
    return {"reviewerID": user, "asin": item, "overall": rating, "reviewText": "nice pump",
            "unixReviewTime": 5, **extra}


def _lines(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    c = capsys.readouterr()
    return rc, c.out, c.err


def _assert_one_line_error(rc, err, fragment):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("catn-data: error: ") and fragment in lines[0], err


@pytest.fixture(scope="module")
def amazon(tmp_path_factory):
    return _amazon_files(tmp_path_factory.mktemp("amazon"))


# -------------------------------------------------------------------------- bad review files

GOOD_ROWS = [_review(), _review(user="A2")]

BAD_FILES = [
    *[(f"rating-{r:g}", _lines(_review(), _review(rating=r)),
       f"bad.json: line 2: rating (field 'overall') {r:g} is outside the rating range 1..5")
      for r in (7, -3, 0, 50)],
    ("rating-text", _lines(_review(rating="great")), "line 1: field 'overall' is not a number"),
    ("rating-bool", _lines(_review(rating=True)), "line 1: field 'overall' is not a number"),
    ("rating-nan", _lines('{"reviewerID": "A", "asin": "X", "overall": NaN}'),
     "line 1: field 'overall' is not finite"),
    ("malformed", _lines(_review(), '{"reviewerID": "A1", oops'), "line 2: not a JSON object"),
    ("missing-field", _lines({"reviewerID": "A", "overall": 3}),
     "line 1: missing field(s) asin (fields present: reviewerID, overall)"),
    ("control-char-field", _lines({"reviewerID": "A", "as\x1din": "X", "overall": 3}),
     "(fields present: reviewerID, as\\x1din, overall)"),
    ("not-object", _lines("[1, 2]"), "line 1: expected an object, got list"),
    ("null-user", _lines(_review(user=None)), "line 1: field 'reviewerID' is null"),
    *[(f"user-{tok}", _lines(_review(), _review(user=tok)),
       f"line 2: field 'reviewerID' is {tok!r}, a missing value")
      for tok in ("NaN", "null", "None", "")],
    ("item-dict", _lines(_review(item={"a": 1})), "field 'asin' is {'a': 1}"),
    ("negative-time", _lines(_review(unixReviewTime=-4)), "field 'unixReviewTime' is -4"),
    ("text-time", _lines(_review(unixReviewTime="soon")), "'unixReviewTime' is 'soon'"),
    ("not-utf8", _lines(_review()) + b'{"reviewerID": "A\xff", "asin": "X", "overall": 1}\n',
     "bad.json: line 2: byte 0xff"),
    ("empty", b"", "empty file"),
    ("utf16", _lines(_review()).decode().encode("utf-16"), "is UTF-16 text"),
]


@pytest.mark.parametrize("data,fragment", [r[1:] for r in BAD_FILES],
                         ids=[r[0] for r in BAD_FILES])
def test_bad_review_file_is_one_line_exit_2(tmp_path, capsys, amazon, data, fragment):
    bad = tmp_path / "bad.json"
    bad.write_bytes(data)
    rc, _, err = _run(["build", "--source", bad, "--target", amazon[1], "--out",
                       tmp_path / "ds", *SMALL], capsys)
    _assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "ds").exists()


def test_rating_range_flag_changes_the_scale(tmp_path, capsys, amazon):
    # a 0..10 scale: the same files fit, and a 7 in them is then fine
    s = tmp_path / "s.json"
    text = gzip.decompress(amazon[0].read_bytes()).decode().replace("'overall': 5.0",
                                                                    "'overall': 7.0")
    assert "'overall': 7.0" in text
    s.write_text(text)
    rc, _, err = _run(["build", "--source", s, "--target", amazon[1], "--out", tmp_path / "a",
                       *SMALL], capsys)
    _assert_one_line_error(rc, err, "7 is outside the rating range 1..5")
    rc, out, err = _run(["build", "--source", s, "--target", amazon[1], "--out", tmp_path / "b",
                         "--rating-range", "0,10", *SMALL], capsys)
    assert rc == 0, err
    assert load_corpus(tmp_path / "b").meta["rating_range"] == [0.0, 10.0]


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.json", _lines(_review()))


@pytest.mark.parametrize("case,fragment", [
    ("missing", "--source {src}: no such file or directory"),
    ("directory", "--source {src}: is a directory"),
    ("zip", "is a zip archive"),
    ("same-file", "is both the source and the target domain"),
    ("filters", "leave 0 overlapping users"),
])
def test_bad_inputs(tmp_path, capsys, amazon, case, fragment):
    src = tmp_path / "src.json"
    target = amazon[1]
    extra = SMALL
    if case == "directory":
        src.mkdir()
    elif case == "zip":
        _zip(src)
    elif case == "same-file":
        src, target = amazon[1], amazon[1]
    elif case == "filters":
        src, extra = amazon[0], []
    rc, _, err = _run(["build", "--source", src, "--target", target, "--out", tmp_path / "ds",
                       *extra], capsys)
    _assert_one_line_error(rc, err, fragment.format(src=src))


BAD_FLAGS = [
    (["--rating-range", "5,1"], "argument --rating-range: LO must be below HI"),
    (["--rating-range", "1"], "expected LO,HI"),
    (["--rating-range", "1,inf"], "is not a finite number"),
    (["--max-df", "0"], "argument --max-df: must be in (0, 1]"),
    (["--max-df", "1.5"], "must be in (0, 1]"),
    (["--etas", "0"], "argument --etas: must be in (0, 1]"),
    (["--etas", ","], "give at least one share"),
    (["--etas", "1,1"], "a share is repeated"),
    (["--vocab-size", "0"], "argument --vocab-size: must be >= 1"),
    (["--doc-len", "-1"], "argument --doc-len: must be >= 1"),
    (["--min-user-reviews", "-2"], "must be >= 0"),
    (["--seed", "-1"], "must be >= 0"),
]


@pytest.mark.parametrize("extra,fragment", BAD_FLAGS, ids=[" ".join(r[0]) for r in BAD_FLAGS])
def test_bad_flags_are_refused_by_the_parser(tmp_path, capsys, amazon, extra, fragment):
    with pytest.raises(SystemExit) as e:
        main(["build", "--source", str(amazon[0]), "--target", str(amazon[1]), "--out",
              str(tmp_path / "ds"), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and "Traceback" not in err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1,5)" in text and "(default: 1,0.5,0.2,0.1,0.05)" in text
    assert "(default: 0.5)" in text
    assert "--overwrite" in text and "--debug" in text


# ---------------------------------------------------------------------- damaged datasets


@pytest.fixture(scope="module")
def built(tmp_path_factory, amazon):
    out = tmp_path_factory.mktemp("built") / "ds"
    assert main(["build", "--source", str(amazon[0]), "--target", str(amazon[1]), "--out",
                 str(out), *SMALL]) == 0
    return out


@pytest.fixture
def dataset(tmp_path, built, capsys):
    capsys.readouterr()
    shutil.copytree(built, tmp_path / "ds")
    return tmp_path / "ds"


def _edit_meta(**changes):
    def edit(ds):
        meta = json.loads((ds / "meta.json").read_text())
        meta.update(changes)
        (ds / "meta.json").write_text(json.dumps(meta))
    return edit


def _bad_rating(ds):
    t = pq.read_table(ds / "reviews_target.parquet")
    r = t.column("rating").to_numpy().copy()
    r[3] = 9
    pq.write_table(t.set_column(t.column_names.index("rating"), "rating", pa.array(r)),
                   ds / "reviews_target.parquet")


def _names_not_utf8(ds):
    t = pq.read_table(ds / "users.parquet")
    bad = pa.array([b"\xff\xfe"] * t.num_rows, pa.binary()).view(pa.string())
    pq.write_table(t.set_column(t.column_names.index("name"), "name", bad), ds / "users.parquet")


DAMAGE = [
    ("names-not-utf8", _names_not_utf8, "users.parquet: unreadable parquet file"),
    ("missing-users", lambda ds: (ds / "users.parquet").unlink(), "users.parquet: missing"),
    ("missing-vocab", lambda ds: (ds / "vocab.txt").unlink(), "vocab.txt: missing"),
    ("corrupt-reviews", lambda ds: (ds / "reviews_source.parquet").write_bytes(b"PAR1xx"),
     "reviews_source.parquet: unreadable parquet file"),
    ("bad-meta", lambda ds: (ds / "meta.json").write_text("{"), "meta.json: line 1: invalid"),
    ("meta-not-object", lambda ds: (ds / "meta.json").write_text("3"),
     "meta.json: expected a JSON object"),
    ("meta-num-users", _edit_meta(num_users=7), "meta.json: num_users is 7 but there are"),
    ("vocab-truncated", lambda ds: (ds / "vocab.txt").write_text("a\nb\n"),
     "vocab_size is 40 but there are 2 vocab.txt lines"),
    ("rating", _bad_rating, "reviews_target.parquet: row 4: rating 9 outside the rating range"),
    ("missing-docs", lambda ds: next(ds.glob("docs_eta_*.npz")).unlink(),
     "lists prebuilt documents"),
    ("no-meta", lambda ds: (ds / "meta.json").unlink(), "not a CATN dataset directory"),
]


@pytest.mark.parametrize("damage,fragment", [r[1:] for r in DAMAGE], ids=[r[0] for r in DAMAGE])
def test_info_on_a_damaged_dataset_names_the_file(dataset, capsys, damage, fragment):
    damage(dataset)
    rc, out, err = _run(["info", dataset], capsys)
    _assert_one_line_error(rc, err, fragment)
    assert out == ""


def test_info_on_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, _, err = _run(["info", tmp_path / "f"], capsys)
    _assert_one_line_error(rc, err, "not a directory")


# -------------------------------------------------------------------------------- safety


def _user_dir(root: Path) -> Path:
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    (root / "nested" / "deeper" / "w.bin").write_bytes(os.urandom(32))
    return root


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_user_directory_is_never_touched(tmp_path, capsys, amazon, overwrite):
    mine = _user_dir(tmp_path / "mine")
    before = file_tree(tmp_path, dirs=True)
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out", mine,
                       *SMALL, *overwrite], capsys)
    _assert_one_line_error(rc, err, "is not empty and is not a CATN dataset")
    assert file_tree(tmp_path, dirs=True) == before


@pytest.mark.parametrize("where", ["input-dir", "input-file", "word-vectors-dir"])
def test_the_inputs_are_never_touched(tmp_path, capsys, amazon, where):
    data = tmp_path / "data"
    data.mkdir()
    s, t = shutil.copy(amazon[0], data), shutil.copy(amazon[1], data)
    wv = tmp_path / "vectors"
    wv.mkdir()
    (wv / "w.txt").write_text("pump 0.1 0.2\n")
    extra = []
    out = {"input-dir": data, "input-file": Path(t), "word-vectors-dir": wv}[where]
    if where == "word-vectors-dir":
        extra = ["--word-vectors", wv / "w.txt"]
    before = file_tree(tmp_path, dirs=True)
    rc, _, err = _run(["build", "--source", s, "--target", t, "--out", out, "--overwrite",
                       *SMALL, *extra], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "input" in err
    assert file_tree(tmp_path, dirs=True) == before


def test_out_dot_and_rebuild(tmp_path, capsys, amazon, monkeypatch):
    busy = _user_dir(tmp_path / "busy")
    monkeypatch.chdir(busy)
    before = file_tree(busy, dirs=True)
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out", ".",
                       *SMALL], capsys)
    _assert_one_line_error(rc, err, "--out .: is not empty")
    assert file_tree(busy, dirs=True) == before
    # an existing sml-data dataset is another kind: refused even with --overwrite
    from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic

    other = tmp_path / "periods"
    build_synthetic(other, SyntheticConfig(num_users=30, periods=2))
    before = file_tree(other, dirs=True)
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out", other,
                       "--overwrite", *SMALL], capsys)
    _assert_one_line_error(rc, err, "is not a CATN dataset")
    assert file_tree(other, dirs=True) == before
    # rebuild: needs --overwrite, then replaces
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["build", "--source", str(amazon[0]), "--target", str(amazon[1]), "--out", ".",
                 *SMALL]) == 0
    assert Path.cwd() == empty and (empty / "meta.json").is_file()
    capsys.readouterr()
    before = file_tree(empty, dirs=True)
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out", ".",
                       *SMALL, "--doc-len", "8"], capsys)
    _assert_one_line_error(rc, err, "already holds a CATN dataset; pass --overwrite")
    assert file_tree(empty, dirs=True) == before
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out", ".",
                       *SMALL, "--doc-len", "8", "--overwrite"], capsys)
    assert rc == 0, err
    assert file_tree(empty, dirs=True) != before
    assert load_corpus(empty).meta["prebuilt"][0]["doc_len"] == 8
    assert not [n for n in os.listdir(empty) if n.startswith(".")]


def test_a_doc_len_beyond_memory_is_refused(tmp_path, capsys, amazon):
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out",
                       tmp_path / "ds", *SMALL, "--doc-len", "100000000"], capsys)
    _assert_one_line_error(rc, err, "--doc-len 100000000 would need about")
    assert not (tmp_path / "ds").exists()


def test_debug_shows_the_traceback(tmp_path, capsys, amazon):
    rc, _, err = _run(["build", "--source", tmp_path / "nope", "--target", amazon[1], "--out",
                       tmp_path / "ds", "--debug"], capsys)
    assert rc == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("catn-data: error: --source")


def _cli(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SML_TORCHREC_DEBUG"}
    return subprocess.run([sys.executable, "-m", "catn.data.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_subprocess_exit_codes(tmp_path, amazon, dataset):
    bad = tmp_path / "bad.json"
    bad.write_bytes(_lines(_review(), _review(rating=50)))
    p = _cli("build", "--source", bad, "--target", amazon[1], "--out", tmp_path / "x")
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        f"catn-data: error: {bad}: line 2: rating (field 'overall') 50 is outside the rating "
        "range 1..5; fix the line or pass --rating-range"]
    p = _cli("build", "--source", bad, "--target", amazon[1], "--out", tmp_path / "x",
             "--max-df", "2")
    assert p.returncode == 2 and "--max-df" in p.stderr
    (dataset / "users.parquet").unlink()
    p = _cli("info", dataset)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
    assert "users.parquet: missing" in p.stderr


def test_info_into_a_closed_pipe_is_quiet(built):
    p = subprocess.Popen([sys.executable, "-m", "catn.data.cli", "info", str(built)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) == 0 and "Traceback" not in err


def test_word_vectors_by_content_and_by_line(tmp_path, capsys, amazon):
    vectors = "".join(f"{w} 0.1 0.2 0.3\n" for w in ("nice", "books", "movies"))
    (tmp_path / "wv.txt").write_bytes(gzip.compress(vectors.encode()))  # gzip, named .txt
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out",
                       tmp_path / "ds", "--word-vectors", tmp_path / "wv.txt", *SMALL], capsys)
    assert rc == 0, err
    assert load_corpus(tmp_path / "ds").word_vectors.shape == (41, 3)
    (tmp_path / "bad.txt").write_bytes(vectors.encode() + b"caf\xe9 0.1 0.2 0.3\n")
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out",
                       tmp_path / "ds2", "--word-vectors", tmp_path / "bad.txt", *SMALL], capsys)
    _assert_one_line_error(rc, err, "bad.txt: line 4: byte 0xe9 at column 4 is not UTF-8")
    rc, _, err = _run(["build", "--source", amazon[0], "--target", amazon[1], "--out",
                       tmp_path / "ds2", "--word-vectors", tmp_path / "none.txt", *SMALL], capsys)
    _assert_one_line_error(rc, err, "--word-vectors")
    assert "none.txt: no such file" in err and not (tmp_path / "ds2").exists()


def test_prebuilt_documents_are_checked(dataset):
    from catn.data.dataset import load_eta
    from catn.data.errors import DataError

    corpus = load_corpus(dataset)
    data = load_eta(corpus, dataset, 1.0, 16)
    assert data.user_docs_s.shape == (corpus.num_users, 16)
    npz = next(dataset.glob("docs_eta_1_len16.npz"))
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(DataError, match=r"docs_eta_1_len16\.npz: unreadable prebuilt documents"):
        load_eta(corpus, dataset, 1.0, 16)
