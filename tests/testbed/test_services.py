"""testbed/services.py: servers started by a process die with it."""

from __future__ import annotations

import pytest

from tests.support import REPO


@pytest.mark.live
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_servers_die_with_the_process_that_started_them(tiny_checkpoint, sig):
    """No process left behind: the demo/bench parent killed (even with SIGKILL) takes its servers along."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("import sys, time\nfrom testbed.services import serve\n"
            f"with serve({str(tiny_checkpoint)!r}, {{}}) as s:\n"
            "    print(s.proc.pid, flush=True)\n    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    server_pid = int(parent.stdout.readline())
    os.kill(server_pid, 0)  # alive
    parent.send_signal(getattr(signal, sig))
    parent.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail(f"server {server_pid} still running after its parent got {sig}")
