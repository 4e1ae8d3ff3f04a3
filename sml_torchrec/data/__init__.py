"""Period datasets: raw sources -> periods on disk -> negatives -> KeyedJaggedTensor batches."""

from recsys_common.errors import DataError
from sml_torchrec.data.period_dataset import Interactions, PeriodDataset, PeriodMetadata

__all__ = ["DataError", "Interactions", "PeriodDataset", "PeriodMetadata"]
