"""Child processes that die with the process that started them.

Servers, Redis instances and CLI runs started by the testbed, the benches and the tests get
``preexec_fn=die_with_parent``: on Linux the kernel sends the child SIGTERM when its parent dies,
also when the parent is killed with SIGKILL and has no chance to clean up
(``prctl(PR_SET_PDEATHSIG)``). Elsewhere it does nothing, and the parents' ``finally`` blocks are
the only cleanup. The kernel ties the signal to the thread that forked, not to the process, so
:func:`popen` and :func:`run` tether only children started from the main thread; one started from
a short-lived worker thread (a test restarting Redis, say) would otherwise die with that thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

PR_SET_PDEATHSIG = 1

# Resolved in the parent, so the forked child only makes one system call before exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int | None = None) -> None:
    """``preexec_fn`` for subprocess: SIGTERM this child when the process that forked it dies."""
    if _prctl is None:
        return
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died between fork and prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _tether():
    if threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    return lambda: die_with_parent(parent)


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` for a child that must not outlive this process."""
    return subprocess.Popen(cmd, preexec_fn=_tether(), **kwargs)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` for a child that must not outlive this process."""
    return subprocess.run(cmd, preexec_fn=_tether(), **kwargs)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...); None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its reaper (Linux /proc)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc; empty where there is none)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    out = []
    for d in proc.iterdir():
        if d.name.isdigit():
            fields = _stat_fields(int(d.name))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(d.name))
    return out
