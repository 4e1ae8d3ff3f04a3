import gzip
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_common.errors import DataError
from sml_torchrec.data.sources import SOURCES, read_source


def _rows(batches) -> list[tuple]:
    out = []
    for b in batches:
        d = b.to_pydict()
        out += list(zip(d["user"], d["item"], d["timestamp"]))
    return out


def _batches(name, path, **options) -> list[pa.RecordBatch]:
    batches = list(read_source(name, path, **options))
    assert batches, "no batches"
    for b in batches:
        assert b.schema.names == ["user", "item", "timestamp"]
        assert b.schema == batches[0].schema
        assert b.schema.field("timestamp").type == pa.int64()
    return batches


def _jsonl(path, records, blank_after=()):
    text = ""
    for k, r in enumerate(records):
        text += (r if isinstance(r, str) else json.dumps(r)) + "\n"
        if k in blank_after:
            text += "\n"
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_registry_has_the_four_sources_and_rejects_unknown_names(tmp_path):
    assert set(SOURCES) == {"csv", "movielens", "yelp", "adressa"}
    with pytest.raises(ValueError, match="unknown source 'nope'.*csv, movielens, yelp, adressa"):
        read_source("nope", tmp_path)


@pytest.mark.parametrize("name", ["csv", "movielens", "yelp", "adressa"])
def test_unknown_option_lists_accepted_options(tmp_path, name):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(
        TypeError, match=r"unknown option\(s\) colour; accepted options: chunk_rows"
    ):
        read_source(name, f, colour="red")


def test_missing_path_is_an_error_at_call_time(tmp_path):
    with pytest.raises(DataError, match="nothere.csv: no such file"):
        read_source("csv", tmp_path / "nothere.csv")


# ------------------------------------------------------------------------------------ generic csv


def test_csv_exact_rows_extra_columns_ignored_and_chunking(tmp_path):
    f = tmp_path / "log.csv"
    lines = ["x,user_id,timestamp,item_id"] + [f"{k},u{k % 3},{1000 + k},i{k}" for k in range(7)]
    f.write_text("\n".join(lines) + "\n")
    whole = _batches("csv", f)
    assert len(whole) == 1
    assert whole[0].schema.field("user").type == pa.string()
    expected = [(f"u{k % 3}", f"i{k}", 1000 + k) for k in range(7)]
    assert _rows(whole) == expected
    chunks = _batches("csv", f, chunk_rows=3)
    assert [b.num_rows for b in chunks] == [3, 3, 1]
    assert _rows(chunks) == expected


def test_tsv_without_header_by_position_with_int_ids_and_gzip(tmp_path):
    f = tmp_path / "log.tsv.gz"
    with gzip.open(f, "wt") as g:
        g.write("5\t50\tjunk\t1700000000\n6\t60\tjunk\t1700000001\n")
    reader = read_source(
        "csv",
        f,
        delimiter="\\t",
        header=False,
        user_col=0,
        item_col=1,
        time_col=3,
        id_type="int64",
    )
    batches = list(reader)
    assert batches[0].schema.field("user").type == pa.int64()
    assert _rows(batches) == [(5, 50, 1_700_000_000), (6, 60, 1_700_000_001)]
    assert reader.stats["rows"] == 2


def test_csv_header_false_needs_positions(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="header=False"):
        read_source("csv", f, header=False)


@pytest.mark.parametrize(
    ("value", "culprit"),
    [
        ("12.5", "'12.5' is not an integer"),
        ("abc", "'abc' is not an integer"),
        ("0x10", "'0x10' is not an integer"),
        ("", "missing value"),
    ],
)
def test_csv_non_integer_timestamp_names_file_column_row_value(tmp_path, value, culprit):
    f = tmp_path / "bad.csv"
    f.write_text(f"user_id,item_id,ts\na,b,1\na,c,2\na,d,{value}\na,e,4\n")
    with pytest.raises(DataError) as e:
        list(read_source("csv", f, time_col="ts", chunk_rows=2))
    msg = str(e.value)
    assert msg.startswith(str(f)) and "column 'ts'" in msg and "row 3" in msg and culprit in msg


def test_csv_missing_column_lists_existing_columns(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("uid,item_id,timestamp\n1,2,3\n")
    with pytest.raises(
        DataError, match=r"a.csv: missing user column 'user_id'.*uid, item_id, timestamp"
    ):
        read_source("csv", f)  # at the call, before any batch is asked for


def test_csv_missing_user_id_names_row(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("user_id,item_id,timestamp\nu,i,1\n,i,2\n")
    with pytest.raises(DataError, match=r"a.csv: column 'user_id': row 2: missing id"):
        list(read_source("csv", f))


# ------------------------------------------------------------------------------------ parquet


def test_parquet_file_and_directory(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    pq.write_table(
        pa.table({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [10, 20]}),
        d / "part-0.parquet",
    )
    pq.write_table(
        pa.table(
            {"user_id": pa.array([3], pa.int32()), "item_id": ["c"], "timestamp": pa.array([30.0])}
        ),
        d / "part-1.parquet",
    )
    (d / "_SUCCESS").write_text("")
    single = _batches("csv", d / "part-0.parquet")
    assert _rows(single) == [(1, "a", 10), (2, "b", 20)]
    batches = _batches("csv", d, chunk_rows=1)
    assert len(batches) == 3
    assert batches[0].schema.field("user").type == pa.int64()
    assert batches[0].schema.field("item").type == pa.string()
    assert _rows(batches) == [(1, "a", 10), (2, "b", 20), (3, "c", 30)]


def test_parquet_fractional_float_timestamp_and_missing_column(tmp_path):
    f = tmp_path / "t.pq"
    pq.write_table(pa.table({"u": ["x", "y"], "i": ["a", "b"], "t": [1.0, 2.5]}), f)
    with pytest.raises(DataError, match=r"t.pq: column 't': row 2: 2.5 is not an integer"):
        list(read_source("csv", f, user_col="u", item_col="i", time_col="t"))
    with pytest.raises(DataError, match=r"t.pq: missing item column 'item_id'.*u, i, t"):
        list(read_source("csv", f, user_col="u", time_col="t"))


def test_parquet_files_with_different_id_types_are_an_error(tmp_path):
    pq.write_table(pa.table({"user_id": [1], "item_id": [1], "timestamp": [1]}), tmp_path / "a.pq")
    pq.write_table(
        pa.table({"user_id": ["x"], "item_id": [1], "timestamp": [1]}), tmp_path / "b.pq"
    )
    with pytest.raises(DataError, match=r"b.pq: column 'user_id' holds string ids.*id_type"):
        list(read_source("csv", tmp_path))
    rows = _rows(read_source("csv", tmp_path, id_type="string"))
    assert rows == [("1", "1", 1), ("x", "1", 1)]


# ------------------------------------------------------------------------------------ movielens


def test_movielens_u_data_with_min_rating(tmp_path):
    f = tmp_path / "u.data"
    f.write_text("196\t242\t3\t881250949\n186\t302\t5\t891717742\n22\t377\t4\t878887116\n")
    assert _rows(_batches("movielens", f)) == [
        (196, 242, 881250949),
        (186, 302, 891717742),
        (22, 377, 878887116),
    ]
    reader = read_source("movielens", f, min_rating=4)
    assert _rows(reader) == [(186, 302, 891717742), (22, 377, 878887116)]
    assert reader.stats == {"rows": 2, "filtered": 1}


def test_movielens_ratings_csv_gz_chunked_and_dat_in_directory(tmp_path):
    f = tmp_path / "ratings.csv.gz"
    with gzip.open(f, "wt") as g:
        g.write(
            "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n1,306,3.5,1147868817\n"
            "2,307,0.5,1147868828\n"
        )
    batches = _batches("movielens", f, chunk_rows=2, min_rating=3.5)
    assert batches[0].schema.field("item").type == pa.int64()
    assert _rows(batches) == [(1, 296, 1147880044), (1, 306, 1147868817)]
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    assert _rows(_batches("movielens", d)) == [(1, 1193, 978300760), (1, 661, 978302109)]


def test_movielens_bad_values(tmp_path):
    f = tmp_path / "ratings.csv"
    f.write_text("userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n1,x,3.5,1147868817\n")
    with pytest.raises(DataError, match=r"ratings.csv: column 'movieId': row 2: 'x' is not an"):
        list(read_source("movielens", f))
    f.write_text("1\t2\t3\t4.5\n")
    with pytest.raises(DataError, match=r"ratings.csv: field 4 \(timestamp\): row 1: '4.5'"):
        list(read_source("movielens", f))
    f.write_text("1 2 3 4\n")
    with pytest.raises(DataError, match=r"ratings.csv: line 1: not a MovieLens ratings line"):
        read_source("movielens", f)


# ------------------------------------------------------------------------------------ yelp


def _review(user, business, stars, date):
    return {
        "review_id": "r",
        "user_id": user,
        "business_id": business,
        "stars": stars,
        "useful": 0,
        "text": "great {tacos}\nreally",
        "date": date,
    }


def test_yelp_exact_rows_date_conversion_blank_lines_and_min_stars(tmp_path):
    f = _jsonl(
        tmp_path / "review.json",
        [
            _review("u1", "b1", 4.0, "2016-03-09 00:44:15"),
            _review("u2", "b1", 2.0, "1970-01-01 00:00:01"),
            _review("u1", "b2", 5, "2018-07-07"),
        ],
        blank_after=(0,),
    )
    assert _rows(_batches("yelp", f)) == [
        ("u1", "b1", 1457484255),
        ("u2", "b1", 1),
        ("u1", "b2", 1530921600),
    ]
    reader = read_source("yelp", f, min_stars=4)
    assert _rows(reader) == [("u1", "b1", 1457484255), ("u1", "b2", 1530921600)]
    assert reader.stats["filtered"] == 1


def test_yelp_gzip_and_chunking(tmp_path):
    records = [_review(f"u{k}", f"b{k % 4}", 3, f"2020-01-01 00:00:{k:02d}") for k in range(10)]
    f = _jsonl(tmp_path / "review.json.gz", records)
    batches = _batches("yelp", f, chunk_rows=4)
    assert [b.num_rows for b in batches] == [4, 4, 2]
    assert _rows(batches) == [(f"u{k}", f"b{k % 4}", 1577836800 + k) for k in range(10)]


@pytest.mark.parametrize(
    ("bad_line", "culprit"),
    [
        ('{"user_id": "u", "business_id": "b", "date": ', "line 4: malformed JSON"),
        (
            json.dumps({"user_id": "u", "stars": 1, "date": "2020-01-01"}),
            "line 4: missing field 'business_id'",
        ),
        ("[1, 2]", "line 4: expected a JSON object"),
        (json.dumps(_review(7, "b", 1, "2020-01-01")), "line 4: user_id is 7, expected a string"),
        (json.dumps(_review(None, "b", 1, "2020-01-01")), "line 4: user_id is null"),
        (json.dumps(_review("u", "b", 1, "09/03/2016")), "line 4: date '09/03/2016'"),
    ],
)
def test_yelp_errors_name_file_and_line(tmp_path, bad_line, culprit):
    good = [_review("u", "b", 1, "2020-01-01 00:00:00")] * 2
    # line 4 (1-based) counts the blank line after the first record
    f = _jsonl(tmp_path / "review.json", [*good, bad_line, good[0]], blank_after=(0,))
    with pytest.raises(DataError) as e:
        list(read_source("yelp", f, chunk_rows=2))
    assert str(e.value).startswith(f"{f}: {culprit}")


def test_yelp_stars_required_only_when_filtering(tmp_path):
    rec = {"user_id": "u", "business_id": "b", "date": "2020-01-01 00:00:00"}
    f = _jsonl(tmp_path / "review.json", [rec])
    assert _rows(read_source("yelp", f)) == [("u", "b", 1577836800)]
    with pytest.raises(DataError, match="line 1: missing field 'stars'"):
        list(read_source("yelp", f, min_stars=3))
    f = _jsonl(tmp_path / "review.json", [dict(rec, stars="4")])
    with pytest.raises(DataError, match="line 1: stars is '4', expected a number"):
        list(read_source("yelp", f, min_stars=3))


# ------------------------------------------------------------------------------------ adressa


def _event(user, article, t):
    e = {"eventId": 1, "userId": user, "time": t, "url": "http://adressa.no/x", "activeTime": 3}
    if article is not None:
        e["id"] = article
    return e


def test_adressa_directory_of_files_gz_skips_non_article_events(tmp_path, caplog):
    d = tmp_path / "one_week"
    d.mkdir()
    _jsonl(d / "20170102.gz", [_event("cx:b", "a2", 200), _event("cx:b", None, 201)])
    _jsonl(
        d / "20170101",
        [_event("cx:a", "a1", 100), _event("cx:a", None, 101), _event("cx:c", "a3", 102)],
        blank_after=(0,),
    )
    (d / ".DS_Store").write_bytes(b"\0\1")
    with caplog.at_level(logging.INFO, logger="sml_torchrec.data.sources"):
        reader = read_source("adressa", d, chunk_rows=1)
        batches = list(reader)
    assert [b.num_rows for b in batches] == [1, 1, 1]
    assert _rows(batches) == [("cx:a", "a1", 100), ("cx:c", "a3", 102), ("cx:b", "a2", 200)]
    assert reader.stats == {"rows": 3, "skipped": 2, "files": 2}
    assert "skipped 2 events without an article id" in caplog.text
    single = read_source("adressa", d / "20170101")
    assert _rows(single) == [("cx:a", "a1", 100), ("cx:c", "a3", 102)]


@pytest.mark.parametrize(
    ("bad_line", "culprit"),
    [
        ('{"userId": "cx:a", "id": "a1", time: 5}', "line 3: malformed JSON"),
        (json.dumps({"userId": "cx:a", "id": "a1"}), "line 3: missing field 'time'"),
        (json.dumps(_event("cx:a", "a1", 1.5)), "line 3: time is 1.5, expected an integer"),
        (json.dumps(_event("cx:a", "a1", "100")), "line 3: time is '100', expected an integer"),
    ],
)
def test_adressa_errors_name_the_file_in_a_directory_and_line(tmp_path, bad_line, culprit):
    (tmp_path / "20170101").write_text(json.dumps(_event("cx:a", "a1", 1)) + "\n")
    f = _jsonl(tmp_path / "20170102", [_event("cx:a", "a1", 1), _event("cx:a", None, 2), bad_line])
    with pytest.raises(DataError) as e:
        list(read_source("adressa", tmp_path))
    assert str(e.value).startswith(f"{f}: {culprit}")


def test_adressa_event_without_article_needs_no_user(tmp_path):
    f = _jsonl(tmp_path / "log", [{"eventId": 1, "time": 5}, _event("cx:a", "a1", 6)])
    assert _rows(read_source("adressa", f)) == [("cx:a", "a1", 6)]
