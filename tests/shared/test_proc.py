"""shared/proc.py: children started with popen/run die with their parent, even on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shared.proc import is_alive
from testbed.services import REPO

PARENT = textwrap.dedent("""
    import sys, threading, time
    from shared.proc import popen
    main_child = popen(["sleep", "300"])
    holder = {}
    t = threading.Thread(target=lambda: holder.update(p=popen(["sleep", "300"])))
    t.start(); t.join()
    print(main_child.pid, holder["p"].pid, flush=True)
    time.sleep(300)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_children_die_when_the_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        main_child, thread_child = map(int, parent.stdout.readline().split())
        # a child started from a worker thread is not tethered: that thread has already exited
        assert is_alive(main_child) and is_alive(thread_child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while is_alive(main_child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_alive(main_child), "the main thread's child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        for pid in (locals().get("main_child"), locals().get("thread_child")):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
