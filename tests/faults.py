"""Environment for a run whose rank dies after a given checkpoint (``fault_injection/``)."""

import os
from pathlib import Path

FAULT_DIR = Path(__file__).resolve().parent / "fault_injection"


def fault_env(kill_after_step: int, rank: int = 1) -> dict[str, str]:
    """Extra environment that makes ``rank`` SIGKILL itself after checkpoint ``kill_after_step``."""
    path = os.pathsep.join(p for p in (str(FAULT_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SML_FAULT_KILL_AFTER_STEP": str(kill_after_step),
            "SML_FAULT_RANK": str(rank)}
