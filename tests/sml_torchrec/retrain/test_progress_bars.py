"""Bars only on a terminal, only when asked for; log lines print above a running bar."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

CHILD = """
import logging, sys
from sml_torchrec.retrain import progress_bars as pb
pb.configure(sys.argv[1] == "on")
log = logging.getLogger("demo")
log.addHandler(pb.TqdmLoggingHandler())
log.setLevel(logging.INFO)
for period in pb.bar(range(2), "demo periods"):
    log.info("period %d done", period)
print("enabled", pb.enabled(), file=sys.stderr)
"""


def _stderr_on_a_terminal(arg: str) -> str:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))  # 100 columns
    p = subprocess.Popen([sys.executable, "-c", CHILD, arg], stderr=child,
                         stdout=subprocess.DEVNULL)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    p.wait(timeout=60)
    os.close(main)
    return out.decode(errors="replace")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_bars_on_a_terminal_and_off_when_asked():
    on = _stderr_on_a_terminal("on")
    assert "demo periods" in on and "enabled True" in on
    assert "period 0 done" in on and "period 1 done" in on
    off = _stderr_on_a_terminal("off")
    assert "demo periods" not in off and "enabled False" in off and "period 1 done" in off


def test_no_bars_when_stderr_is_not_a_terminal():
    p = subprocess.run([sys.executable, "-c", CHILD, "on"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert "enabled False" in p.stderr and "demo periods" not in p.stderr
    assert "period 1 done" in p.stderr
