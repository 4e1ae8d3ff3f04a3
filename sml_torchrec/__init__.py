"""Period-by-period recommender retraining on TorchRec, with SML (SIGIR 2020) and baselines."""

__version__ = "0.1.0"
