"""The local executor: a job is a process on this machine, in its own session, output to its log.

`python -m <module> ARGV...` through Popen with `start_new_session=True` (a Streamlit or worker
restart never takes it down), no shell, stdin closed, stdout and stderr to the job's log file
(never a pipe nobody drains), cwd the repository root, PYTHONUNBUFFERED=1. The handle records
host, pid, process group and process start time, so a reused pid is never taken for the job.

No torch and no streamlit here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.jobs import store
from engine.jobs.executor import register_executor
from engine.runs import folder as rf

REPO_ROOT = Path(__file__).resolve().parents[2]


def _process_state(pid: int | None, start_time: float | None) -> str:
    """"alive", "exited" (a zombie: its parent, the worker, is about to reap it) or "gone"."""
    return rf.process_state(pid, start_time)  # the one local process check


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, start_time: float | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _process_state(pid, start_time) == "alive":
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class LocalExecutor:
    """Processes on this host. The instance that started a job reaps it (exact exit code); any
    other instance (a reader, the next worker) judges by pid + start time."""

    name = "local"
    # A shared-base group's queued jobs run in one process on one slot (engine.jobs.groups).
    runs_groups = True

    def __init__(self, runs_root: Path):
        self.runs_root = Path(runs_root)
        self.children: dict[str, subprocess.Popen] = {}

    def log_path(self, job: dict) -> Path:
        return Path(job["log"]) if job.get("log") else store.job_dir(self.runs_root, job["job_id"]) / store.JOB_LOG

    def start(self, job: dict, env: dict[str, str]) -> dict:
        command = [sys.executable, "-m", job.get("module") or "engine", *job["argv"]]
        with open(self.log_path(job), "ab") as log:
            log.write(f"[{rf.now_iso()}] $ {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                                    start_new_session=True)
        self.children[job["job_id"]] = proc
        return {"executor": self.name, "host": rf.hostname(), "pid_namespace": rf.pid_namespace(), "pid": proc.pid,
                "pgid": proc.pid, "process_start_time": rf.process_start_time(proc.pid)}

    def poll(self, job: dict) -> dict | None:
        proc = self.children.get(job["job_id"])
        if proc is not None:
            # Kept after it ends (Popen caches the exit code): if recording the end fails (a full
            # disk), the next poll reports the same exit code again.
            returncode = proc.poll()
            return None if returncode is None else {"returncode": returncode}
        handle = self._handle(job)
        if not rf.is_local(handle):
            return None  # another machine's or container's process: its pid means nothing here
        if _process_state(handle.get("pid"), handle.get("process_start_time")) == "alive":
            return None
        return {"returncode": None}

    def cancel(self, job: dict, grace_s: float) -> str:
        """SIGTERM to the job's main process only: the engine finishes the step, saves the adapter
        and records "cancelled", while helpers such as DataLoader workers (which die on SIGTERM and
        would abort that save) keep running until it is done. Whatever is left of the process group
        afterwards gets SIGKILL, as does the whole group when the grace period runs out."""
        handle = self._handle(job)
        pid, started = handle.get("pid"), handle.get("process_start_time")
        pgid = handle.get("pgid") or pid
        if not rf.is_local(handle):
            raise store.JobError(f"job {job['job_id']} runs on {handle.get('host')} ({handle.get('pid_namespace')}); "
                                 "cancel it there")
        if _process_state(pid, started) != "alive":
            return "already finished"
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        outcome = "graceful"
        if not _wait_gone(pid, started, grace_s):
            outcome = "forced"
        _signal_group(pgid, signal.SIGKILL)  # leftovers after a graceful exit, everything when forced
        _wait_gone(pid, started, 10.0)
        return outcome

    @staticmethod
    def _handle(job: dict) -> dict:
        """The job's handle; a job.json written before handles existed keeps them at the top level."""
        handle = job.get("handle")
        if isinstance(handle, dict):
            return handle
        return {"pid": job.get("pid"), "pgid": job.get("pgid"), "process_start_time": job.get("process_start_time")}


register_executor(LocalExecutor.name, LocalExecutor)
