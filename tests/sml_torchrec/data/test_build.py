import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_common.errors import DataError
from recsys_common.output import OutputError
from sml_torchrec.data.build import (
    BuildConfig,
    build_period_dataset,
    cut_periods,
    kcore_filter,
    renumber_by_first_appearance,
)
from sml_torchrec.data.period_dataset import PeriodDataset, period_file_name


def _table(users, items, ts):
    return pa.table({"user": users, "item": items, "timestamp": pa.array(ts, pa.int64())})


def test_time_cut_equal_spans_exact_counts():
    ts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 99])
    # span 100 cut in 4: [0,25) [25,50) [50,75) [75,100)
    assert np.bincount(cut_periods(ts, 4, "time"), minlength=4).tolist() == [9, 0, 0, 1]
    ts = np.arange(12) * 10  # 0..110, span 111, 3 periods of 37 s: [0,37) [37,74) [74,111)
    assert np.bincount(cut_periods(ts, 3, "time")).tolist() == [4, 4, 4]


def test_count_cut_equal_chunks_exact_counts():
    ts = np.array([0, 0, 0, 0, 0, 1, 2, 1000, 1001, 1002])
    assert np.bincount(cut_periods(ts, 3, "count")).tolist() == [4, 3, 3]
    assert np.bincount(cut_periods(np.arange(10), 5, "count")).tolist() == [2] * 5


def test_kcore_is_iterated_until_stable():
    # user 2 has 1 interaction; removing it leaves item 2 with 1 -> removed -> user 1 drops to 1.
    user = np.array([0, 0, 1, 1, 2, 3, 3, 0, 3])
    item = np.array([0, 1, 1, 2, 2, 0, 1, 3, 3])
    keep = kcore_filter(user, item, 2)
    kept = set(zip(user[keep].tolist(), item[keep].tolist()))
    assert kept == {(0, 0), (0, 1), (3, 0), (3, 1), (0, 3), (3, 3)}


def test_renumber_by_first_appearance():
    new, old = renumber_by_first_appearance(np.array([5, 2, 5, 0, 2]), 6)
    assert new.tolist() == [0, 1, 0, 2, 1]
    assert old.tolist() == [5, 2, 0]


def test_build_roundtrip_with_string_ids(tmp_path):
    users = ["u9", "u3", "u9", "u7", "u3", "u3"]
    items = ["b", "a", "c", "a", "b", "c"]
    ts = [100, 105, 200, 210, 300, 310]
    meta = build_period_dataset(
        _table(users, items, ts), tmp_path / "ds", BuildConfig(periods=3, cut="count")
    )
    assert meta.period_counts == [2, 2, 2]
    ds = PeriodDataset(tmp_path / "ds")
    assert ds.num_users == 3 and ds.num_items == 3 and ds.num_periods == 3
    assert ds.meta.items_upto == [2, 3, 3] and ds.meta.users_upto == [2, 3, 3]
    user_raw = ds.raw_ids("user").to_pylist()
    item_raw = ds.raw_ids("item").to_pylist()
    all_rows = ds.periods(0, 3)
    # The maps take every stored interaction back to the raw one.
    got = [(user_raw[u], item_raw[i], t) for u, i, t in zip(
        all_rows.user_id, all_rows.item_id, all_rows.timestamp)]
    assert got == list(zip(users, items, ts))
    assert ds[1].period.tolist() == [1, 1]


def test_negative_raw_id_is_named(tmp_path):
    with pytest.raises(DataError, match=r"'user'.*negative id -4"):
        build_period_dataset(
            _table([1, -4], [1, 2], [0, 1]), tmp_path / "ds", BuildConfig(periods=1),
            source="log.csv",
        )


def test_non_integer_timestamp_is_named(tmp_path):
    table = pa.table({"user": [1, 2], "item": [1, 2], "timestamp": [1.5, 2.0]})
    with pytest.raises(DataError, match=r"log\.csv.*'timestamp'.*double"):
        build_period_dataset(table, tmp_path / "ds", BuildConfig(periods=1), source="log.csv")


def test_empty_time_period_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"period\(s\) 1 of 3 would be empty"):
        build_period_dataset(
            _table([1, 2, 3], [1, 2, 3], [0, 1, 99]), tmp_path / "ds", BuildConfig(periods=3)
        )


def test_failed_rebuild_keeps_existing_dataset(tmp_path):
    out = tmp_path / "ds"
    build_period_dataset(_table([1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3]), out, BuildConfig(2))
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(DataError):
        build_period_dataset(_table([1, 2, 3], [1, 2, 3], [0, 1, 99]), out, BuildConfig(3),
                             overwrite=True)
    assert sorted(p.name for p in out.rglob("*")) == before
    assert PeriodDataset(out).periods(0, 2).user_id.tolist() == [0, 1, 2, 3]
    # No temporary directories are left beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_successful_rebuild_replaces_dataset(tmp_path):
    out = tmp_path / "ds"
    build_period_dataset(_table([1, 2], [1, 2], [0, 1]), out, BuildConfig(1))
    with pytest.raises(OutputError, match="pass --overwrite"):
        build_period_dataset(_table([1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3]), out,
                             BuildConfig(2))
    assert PeriodDataset(out).meta.period_counts == [2]
    build_period_dataset(_table([1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3]), out, BuildConfig(2),
                         overwrite=True)
    assert PeriodDataset(out).meta.period_counts == [2, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_kcore_that_removes_everything_says_so(tmp_path):
    with pytest.raises(DataError, match="--kcore 5 removed all 3 interactions"):
        build_period_dataset(
            _table([1, 2, 3], [1, 2, 3], [0, 1, 2]), tmp_path / "ds", BuildConfig(1, kcore=5)
        )


def test_period_file_is_one_file_per_period(tmp_path):
    build_period_dataset(_table([1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3]), tmp_path / "d",
                         BuildConfig(2, cut="count"))
    t = pq.read_table(tmp_path / "d" / period_file_name(1))
    assert t.column("period").to_pylist() == [1, 1]
    assert t.schema.field("period").type == pa.int32()
