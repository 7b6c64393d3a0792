"""``--parent-pid``: a process follows another out, whether or not it is its parent."""

from __future__ import annotations

import subprocess
import sys

import psutil

FOLLOW = (
    "import sys, time; from inferswarm.cli.lifetime import exit_with; "
    "exit_with(int(sys.argv[1])); print('following', flush=True); time.sleep(60)"
)


def test_a_process_follows_one_that_is_not_its_parent_out() -> None:
    # Not the parent, so no PR_SET_PDEATHSIG: the watcher thread has to notice.
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    follower = subprocess.Popen(
        [sys.executable, "-c", FOLLOW, str(leader.pid)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "following\n"
        leader.kill()
        leader.wait()
        gone, alive = psutil.wait_procs([psutil.Process(follower.pid)], timeout=10)
        assert not alive, "the follower outlived the process it follows"
        assert gone[0].returncode == -15  # SIGTERM: it stops the way it always does
    finally:
        for proc in (leader, follower):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if follower.stdout is not None:
            follower.stdout.close()


def test_a_process_told_to_follow_one_already_gone_stops_at_once() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    follower = subprocess.run(
        [sys.executable, "-c", FOLLOW, str(gone.pid)], capture_output=True, text=True, timeout=30
    )
    assert follower.returncode == -15
    assert "following" not in follower.stdout
