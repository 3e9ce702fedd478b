"""A stand-in engine job for the queue's tests: `python -m engine.jobs.sleep_job sleep --seconds S`.

It marks its run running, sleeps and ends the way the engine does (SIGTERM -> "cancelled" in
`finally:`), so the queue can be tested with real processes but without training.

`python -m engine.jobs.sleep_job group --runs-dir ROOT JOB_ID ...` stands in for `engine
train-group`, the shared-base group process: it runs the named queued `sleep` jobs one after
another the way that process must (engine.jobs.groups: `start_member` before each, a member it
may not start gets "cancelled" in its run folder, `cancel_requested` polled while it sleeps).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.jobs import groups, store
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


def _group_job(runs_root: Path, job_ids: list[str], sleep_parser: argparse.ArgumentParser) -> int:
    """A stand-in shared-base group process: each member's own `sleep` argv, one after another in
    this process. A cancel asked for the running member stops it within a poll (state
    "cancelled") and the next member starts; SIGTERM stops the running member and the process."""
    signal.signal(signal.SIGTERM, _raise_cancelled)
    for job_id in job_ids:
        job = groups.start_member(runs_root, job_id)
        if job is None:
            _skip_member(runs_root, job_id)
            continue
        args = sleep_parser.parse_args(job["argv"][1:])
        run_dir = Path(args.run_dir) if args.run_dir else None
        if run_dir is not None:
            rf.write_status(run_dir, rf.RUNNING, **rf.mark_process(run_dir))
        state = rf.FAILED
        try:
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                if groups.cancel_requested(runs_root, job_id):
                    raise _Cancelled()
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            state = rf.SUCCEEDED
        except _Cancelled:
            state = rf.CANCELLED
            if not groups.cancel_requested(runs_root, job_id):  # SIGTERM: the whole process stops
                return 128 + signal.SIGTERM
        finally:
            if run_dir is not None:
                rf.write_status(run_dir, state)
    return 0


def _skip_member(runs_root: Path, job_id: str) -> None:
    """A member this process may not start (cancelled before its turn): its run folder says so."""
    try:
        run_dir = store.read_job_file(runs_root, job_id).get("run_dir")
    except store.JobError:
        return
    if run_dir and Path(run_dir).is_dir():
        try:
            state = rf.read_json(Path(run_dir) / rf.STATUS).get("state")
        except (OSError, ValueError, AttributeError):
            state = None
        if state not in rf.TERMINAL_STATES:
            rf.write_status(Path(run_dir), rf.CANCELLED)


def _helper_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.sleep_job", description="internal test jobs")
    sub = parser.add_subparsers(dest="command", required=True)
    sleep = sub.add_parser("sleep")
    sleep.add_argument("--seconds", type=float, required=True)
    sleep.add_argument("--run-dir")
    sleep.add_argument("--ignore-sigterm", action="store_true")
    sleep.add_argument("--spawn-child", action="store_true")
    group = sub.add_parser("group")
    group.add_argument("--runs-dir", required=True)
    group.add_argument("job_ids", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "group":
        return _group_job(Path(args.runs_dir), args.job_ids, sleep)
    return _sleep_job(args.seconds, Path(args.run_dir) if args.run_dir else None, args.ignore_sigterm,
                      args.spawn_child)


if __name__ == "__main__":
    sys.exit(_helper_main(sys.argv[1:]))
