"""The sharding types a run may ask for, by the name of TorchRec's ``ShardingType`` value.

Kept free of imports so that checking a flag does not import TorchRec.
"""

SHARDING_NAMES: tuple[str, ...] = ("row_wise", "table_wise", "column_wise")
