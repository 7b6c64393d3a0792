"""Tying a process's life to the process that started it.

The miners a router's ``local`` autoscaler starts, and the router and miners
``inferswarm up`` starts, must not outlive their parent when it dies without
stopping them (``kill -9``, the OOM killer): nothing would ever stop them, and
they would keep dialling a router that is gone. Started with
``--parent-pid``, such a process gets a signal when its parent goes. On Linux
the kernel sends it (``PR_SET_PDEATHSIG``), so it arrives even while the
process is busy loading a model; elsewhere, or when the process to follow is
not the direct parent, a daemon thread polls it.

The signal is SIGTERM, so the process stops the way it always does; with its
router gone a miner has nothing to drain (losing the connection cancels its
tasks), so it exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time

import psutil

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""
POLL_S = 0.5


def exit_with(parent_pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Have this process sent ``sig`` when process ``parent_pid`` is gone (now, if it is)."""
    if parent_pid == os.getppid() and _set_parent_death_signal(sig):
        # The parent may have died before the call: we would have been re-parented.
        if os.getppid() != parent_pid:
            _signal_self(parent_pid, sig)
        return
    try:
        parent = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        _signal_self(parent_pid, sig)
        return
    threading.Thread(target=_watch, args=(parent, sig), name="parent-watch", daemon=True).start()


def _set_parent_death_signal(sig: signal.Signals) -> bool:
    """Linux only: the kernel sends ``sig`` when the thread that forked us exits
    (the parent's event-loop thread here, which lives as long as the parent)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch(parent: psutil.Process, sig: signal.Signals) -> None:
    while _alive(parent):
        time.sleep(POLL_S)
    _signal_self(parent.pid, sig)


def _alive(process: psutil.Process) -> bool:
    # is_running() also compares the start time, so a reused pid does not count.
    with contextlib.suppress(psutil.Error):
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    return False


def _signal_self(parent_pid: int, sig: signal.Signals) -> None:
    log.warning("process %d that started this one is gone; stopping", parent_pid)
    os.kill(os.getpid(), sig)
