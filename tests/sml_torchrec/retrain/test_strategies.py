import numpy as np

from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.retrain.config import RetrainConfig
from sml_torchrec.retrain.strategies.baselines import SampleBased


def _period(start, n):
    ids = np.arange(start, start + n)
    return Interactions(ids, ids, ids, np.zeros(n, dtype=np.int32))


def test_reservoir_is_bounded_and_uniform_over_history():
    counts = np.zeros(2000)
    for seed in range(200):
        s = SampleBased.__new__(SampleBased)
        s.cfg = RetrainConfig(reservoir_size=100, seed=seed)
        s.rng = np.random.default_rng(seed)
        s.reservoir = Interactions.concat([])
        s.seen = 0
        for p in range(10):
            s._add_to_reservoir(_period(200 * p, 200))
            assert len(s.reservoir) == 100
        assert len(np.unique(s.reservoir.user_id)) == 100
        counts[s.reservoir.user_id] += 1
    # Every one of the 2000 records has the same 100/2000 inclusion probability:
    # old periods are not crowded out by new ones.
    first_half, second_half = counts[:1000].mean(), counts[1000:].mean()
    assert abs(first_half / 200 - 0.05) < 0.01 and abs(second_half / 200 - 0.05) < 0.01


def test_registry_is_the_one_list_and_resolves_every_name():
    import subprocess
    import sys

    from sml_torchrec.retrain.strategies import (
        DEFAULT_STRATEGIES,
        STRATEGY_NAMES,
        strategy_class,
    )
    from sml_torchrec.retrain.strategies.base import Strategy

    assert set(DEFAULT_STRATEGIES) <= set(STRATEGY_NAMES)
    for name in STRATEGY_NAMES:
        cls = strategy_class(name)
        assert issubclass(cls, Strategy) and cls.name == name
    # Reading the names must stay cheap: no TorchRec import just to parse flags.
    code = ("import sys; import sml_torchrec.retrain.config; "
            "print('torchrec' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
