"""Fault injection for tests that put this folder on ``PYTHONPATH`` (see ``fault_env``).

Python imports ``sitecustomize`` at start-up in every process, so the launcher, its spawned
ranks and torchrun's workers all get it. With ``SML_FAULT_KILL_AFTER_STEP=N`` set, the rank
``SML_FAULT_RANK`` (default 1) SIGKILLs itself right after checkpoint N is saved, once per
checkpoint directory (a marker file remembers it), so a relaunched or restarted job runs
through. The library itself has no fault hook.
"""

import os

if os.environ.get("SML_FAULT_KILL_AFTER_STEP") is not None:
    import signal
    from pathlib import Path

    import torch.distributed as dist

    from sml_torchrec.retrain import checkpoint

    _save = checkpoint.save

    def _save_then_maybe_die(root, step, *args, **kwargs):
        out = _save(root, step, *args, **kwargs)
        rank = dist.get_rank() if dist.is_initialized() else 0
        marker = Path(root) / ".fault-fired"
        if (step == int(os.environ["SML_FAULT_KILL_AFTER_STEP"])
                and rank == int(os.environ.get("SML_FAULT_RANK", "1"))
                and not marker.exists()):
            marker.write_text(str(step))
            print(f"[fault injection] rank {rank} kills itself after checkpoint {step}",
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    checkpoint.save = _save_then_maybe_die
