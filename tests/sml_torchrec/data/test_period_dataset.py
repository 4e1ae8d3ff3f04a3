import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_common.errors import DataError
from sml_torchrec.data.period_dataset import (
    SCHEMA,
    PeriodDataset,
    period_file_name,
    write_period_dataset,
)


@pytest.fixture
def ds_dir(tmp_path):
    out = tmp_path / "ds"
    write_period_dataset(
        out,
        user_id=np.array([0, 1, 0, 2, 1, 2]),
        item_id=np.array([0, 0, 1, 2, 1, 3]),
        timestamp=np.array([10, 11, 20, 21, 30, 31]),
        period=np.array([0, 0, 1, 1, 2, 2]),
        cut="given",
    )
    return out


def test_reads_each_period_and_counts(ds_dir):
    ds = PeriodDataset(ds_dir)
    assert [ds.count(t) for t in range(3)] == [2, 2, 2]
    assert ds[2].item_id.tolist() == [1, 3]
    s = ds.summary()
    assert [r["new_items"] for r in s] == [1, 2, 1]
    assert [r["new_users"] for r in s] == [2, 1, 0]


def test_period_out_of_range(ds_dir):
    with pytest.raises(DataError, match=r"period 3 out of range: the dataset has 3 periods"):
        PeriodDataset(ds_dir)[3]
    with pytest.raises(DataError, match="period -1 out of range"):
        PeriodDataset(ds_dir)[-1]


def test_truncated_parquet_is_named(ds_dir):
    f = ds_dir / period_file_name(1)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"period=00001\.parquet: unreadable parquet"):
        PeriodDataset(ds_dir)[1]


def test_missing_column_is_named(ds_dir):
    f = ds_dir / period_file_name(0)
    pq.write_table(pq.read_table(f).drop_columns(["item_id"]), f)
    with pytest.raises(DataError, match=r"period=00000\.parquet: missing column 'item_id'"):
        PeriodDataset(ds_dir)[0]


def test_mistyped_column_is_named(ds_dir):
    f = ds_dir / period_file_name(0)
    t = pq.read_table(f)
    t = t.set_column(2, "timestamp", pa.array([1.5, 2.5]))
    pq.write_table(t, f)
    with pytest.raises(DataError, match=r"column 'timestamp' has type double, expected int64"):
        PeriodDataset(ds_dir)[0]


@pytest.mark.parametrize("bad,match", [(-1, "a negative id -1"), (7, "id 7, out of range")])
def test_out_of_range_ids_are_named(ds_dir, bad, match):
    f = ds_dir / period_file_name(2)
    t = pq.read_table(f)
    t = t.set_column(0, "user_id", pa.array([0, bad], pa.int64()))
    pq.write_table(t, f)
    with pytest.raises(DataError, match=r"period=00002\.parquet: column 'user_id' has " + match):
        PeriodDataset(ds_dir)[2]


def test_empty_period_file_is_named(ds_dir):
    f = ds_dir / period_file_name(1)
    pq.write_table(SCHEMA.empty_table(), f)
    meta = json.loads((ds_dir / "metadata.json").read_text())
    meta["period_counts"][1] = 0
    (ds_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="period 1 is empty"):
        PeriodDataset(ds_dir)[1]


def test_row_count_mismatch_is_named(ds_dir):
    f = ds_dir / period_file_name(1)
    pq.write_table(pq.read_table(f).slice(0, 1), f)
    with pytest.raises(DataError, match="has 1 rows, metadata.json says 2"):
        PeriodDataset(ds_dir)[1]


def test_not_a_dataset(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="metadata.json: missing"):
        PeriodDataset(tmp_path / "x")
