"""A stand-in engine job for the queue's tests: `python -m engine.jobs.sleep_job sleep --seconds S`.

It marks its run running, sleeps and ends the way the engine does (SIGTERM -> "cancelled" in
`finally:`), so the queue can be tested with real processes but without training.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.runs import folder as rf


class _Cancelled(Exception):
    pass


def _raise_cancelled(signum, frame) -> None:
    raise _Cancelled()


def _sleep_job(seconds: float, run_dir: Path | None, ignore_sigterm: bool = False,
               spawn_child: bool = False) -> int:
    """A stand-in engine job for tests: marks its run running, sleeps, ends like the engine does.

    With `spawn_child` it starts a helper process in its group (as DataLoader workers are) and
    records the helper's pid in status.json as "child_pid".
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_sigterm else _raise_cancelled)
    child = None
    if spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
    if run_dir is not None:
        rf.write_status(Path(run_dir), rf.RUNNING, **rf.mark_process(Path(run_dir)),
                        child_pid=child.pid if child else None)
    state, code = rf.FAILED, 1
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        state, code = rf.SUCCEEDED, 0
    except _Cancelled:
        state, code = rf.CANCELLED, 128 + signal.SIGTERM
    finally:
        if run_dir is not None:
            rf.write_status(Path(run_dir), state)
    return code


def _helper_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.sleep_job", description="internal test jobs")
    sub = parser.add_subparsers(dest="command", required=True)
    sleep = sub.add_parser("sleep")
    sleep.add_argument("--seconds", type=float, required=True)
    sleep.add_argument("--run-dir")
    sleep.add_argument("--ignore-sigterm", action="store_true")
    sleep.add_argument("--spawn-child", action="store_true")
    args = parser.parse_args(argv)
    return _sleep_job(args.seconds, Path(args.run_dir) if args.run_dir else None, args.ignore_sigterm,
                      args.spawn_child)


if __name__ == "__main__":
    sys.exit(_helper_main(sys.argv[1:]))
