import os

# Keep per-test CPU use small and deterministic on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
