"""What state a job is in and how it ends: reading jobs as a reader should see them, outcomes,
cancel. The executor that owns a job reports whether it still runs; nothing here looks at
processes itself.

No torch and no streamlit here.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from engine.jobs import groups, store
from engine.jobs.executor import Executor, executor_for, job_executor_name
from engine.jobs.store import _recorded_run_state, _sync_run_status
from engine.runs import folder as rf


def _outcome_without_returncode(job: dict) -> tuple[str, str | None]:
    """Final state of a job that ended with no exit code known (no worker was its parent)."""
    if job.get("cancel_requested_at"):
        return rf.CANCELLED, None
    run_state = _recorded_run_state(job.get("run_dir"))
    if run_state in rf.TERMINAL_STATES:
        return run_state, None  # the engine wrote its own final state before exiting
    return rf.CRASHED, "the job's process died without a final state"


def _outcome_from_returncode(job: dict, returncode: int) -> tuple[str, str | None]:
    if returncode == 0:
        return rf.SUCCEEDED, None
    if job.get("cancel_requested_at"):
        return rf.CANCELLED, None
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else -returncode
        return rf.CRASHED, f"killed by signal {name}"
    last_line = next((line for line in reversed(rf.tail_text(Path(job.get("log") or ""), 2000).splitlines())
                      if line.strip()), "") if job.get("log") else ""
    return rf.FAILED, f"exited with code {returncode}: {last_line.strip()[:300] or 'no output'} (log: {job.get('log')})"


def poll(executor: Executor, job: dict) -> dict | None:
    """`executor.poll(job)`; for a member of a shared-base group, the poll of the group's process,
    and {"returncode": None} once the member's run folder records a final state while the process
    goes on with the next member (the run's state then decides: `outcome`)."""
    if not groups.is_member(job):
        return executor.poll(job)
    ended = executor.poll(groups.leader_view(job))
    if groups.run_finished(job):
        return {"returncode": None}  # the process's exit code belongs to the group, not to this run
    return ended


def outcome(job: dict, ended: dict) -> tuple[str, str | None]:
    """(state, error) of a job whose executor's poll (`poll`) returned `ended`."""
    if groups.is_member(job):
        return groups.member_outcome(job, ended) or (rf.CRASHED, "the shared-base process ended")
    if ended.get("state") in rf.TERMINAL_STATES:
        return ended["state"], ended.get("error")
    if ended.get("returncode") is None:
        state, error = _outcome_without_returncode(job)
        return state, job.get("error") or error
    return _outcome_from_returncode(job, ended["returncode"])


def finish_fields(job: dict, ended: dict) -> dict:
    """The job.json fields that record how it ended; the run folder is told first."""
    state, error = outcome(job, ended)
    _sync_run_status(job, state, error)
    fields = {"state": state, "ended_at": rf.now_iso(), "error": error}
    if ended.get("returncode") is not None:
        fields["returncode"] = ended["returncode"]
    return fields


def _reconciled(job: dict, worker_alive: bool, runs_root: Path) -> dict:
    """The job as a reader should see it: "running" that its executor says has ended becomes its
    outcome (nothing written).

    While a worker runs, a job whose process has ended still reads "running": the worker records
    the real exit code within a poll interval, which a reader cannot know. An executor that cannot
    tell (another host, a kind not available here) leaves the recorded state as it is.
    """
    if job.get("state") != rf.RUNNING or worker_alive:
        return job
    executor = executor_for(job, runs_root)
    ended = poll(executor, job) if executor is not None else None
    if ended is None:
        return job
    state, error = outcome(job, ended)
    return dict(job, state=state, recorded_state=rf.RUNNING, error=error)


def read_jobs(runs_root: Path) -> list[dict]:
    """Every job, oldest first, as a reader should see it; unusable job files are listed with
    state store.BROKEN, their folder and the reason. An absent queue folder means no jobs."""
    worker_alive = store.worker_running(runs_root)
    return [_reconciled(job, worker_alive, Path(runs_root)) for job in store.raw_jobs(runs_root)]


def read_job(runs_root: Path, job_id: str) -> dict:
    return _reconciled(store.read_job_file(runs_root, job_id), store.worker_running(runs_root), Path(runs_root))


def active_jobs(runs_root: Path) -> list[dict]:
    return [job for job in read_jobs(runs_root) if job.get("state") in rf.ACTIVE_STATES]


def broken_jobs(runs_root: Path) -> list[dict]:
    """The job folders whose job.json cannot be used: {job_id, folder, error}."""
    return [job for job in store.raw_jobs(runs_root) if job.get("state") == store.BROKEN]


def job_log_tail(runs_root: Path, job_id: str, max_bytes: int = 8000) -> str:
    """The end of the job's log, from wherever its executor puts it."""
    default = store.job_dir(runs_root, job_id) / store.JOB_LOG
    try:
        job = store.read_job_file(runs_root, job_id)
    except store.JobError:
        return rf.tail_text(default, max_bytes)
    executor = executor_for(job, runs_root)
    return rf.tail_text(executor.log_path(job) if executor is not None else default, max_bytes)


def cancel(runs_root: Path, job_id: str, grace_s: float = 20.0) -> dict:
    """Cancel a job: dequeue it if queued, else its executor stops it (local: SIGTERM to its main
    process, SIGKILL to its group after `grace_s`).

    A member of a shared-base group that the process has not started yet is cancelled at once
    ("dequeued"), the process left alone. A started member while other members are still active
    is only marked: the process stops that run at its next step (it polls
    `groups.cancel_requested`) and goes on with the others; the outcome is "graceful" once the run
    has recorded its final state within `grace_s`, else "requested" (the job ends when the process
    gets there). The last active member is stopped like any job (the process gets the SIGTERM).

    Returns {job_id, outcome}: "dequeued", "graceful", "forced", "requested" or "already
    finished". Returns once the job's final state is recorded (by the worker, or here when no
    worker is running).
    """
    runs_root = Path(runs_root)
    now = rf.now_iso()
    dequeued = False

    def request(job: dict) -> dict | None:
        nonlocal dequeued
        if job.get("state") == rf.QUEUED:
            dequeued = True
            _sync_run_status(job, rf.CANCELLED, None)
            return {"state": rf.CANCELLED, "cancel_requested_at": now, "ended_at": now}
        if groups.is_waiting(job):  # under the queue lock: start_member can no longer start it
            dequeued = True
            _sync_run_status(job, rf.CANCELLED, None)
            return {"state": rf.CANCELLED, "cancel_requested_at": now, "ended_at": now, "cancel_outcome": "dequeued"}
        if job.get("state") == rf.RUNNING and not job.get("cancel_requested_at"):
            return {"cancel_requested_at": now}
        return None

    job = store.update_job(runs_root, job_id, request)
    if dequeued:
        return {"job_id": job_id, "outcome": "dequeued"}
    if job.get("state") != rf.RUNNING:
        return {"job_id": job_id, "outcome": "already finished"}
    if groups.is_member(job) and groups.others_active(runs_root, job):
        # The shared process goes on with the other members: never signal it for this one.
        ended = _wait_recorded(runs_root, job_id, timeout_s=grace_s, settle_until_done=True)
        if ended:
            store.update_job(runs_root, job_id, lambda _job: {"cancel_outcome": "graceful"})
        return {"job_id": job_id, "outcome": "graceful" if ended else "requested"}
    executor = executor_for(job, runs_root)
    if executor is None:
        raise store.JobError(f"job {job_id} belongs to executor {job_executor_name(job)!r}, "
                             "which is not available on this machine")
    result = executor.cancel(job, grace_s)
    if result != "already finished":
        store.update_job(runs_root, job_id, lambda _job: {"cancel_outcome": result})
    _wait_recorded(runs_root, job_id, timeout_s=10.0)
    return {"job_id": job_id, "outcome": result}


def _wait_recorded(runs_root: Path, job_id: str, timeout_s: float, settle_until_done: bool = False) -> bool:
    """Wait for the worker to record the final state; record it here when no worker runs (once, or
    with `settle_until_done` on every look until it ends: a group member's run ends while its
    process goes on). True once the state is recorded."""
    deadline = time.monotonic() + timeout_s
    while True:
        if store.read_job_file(runs_root, job_id).get("state") in rf.TERMINAL_STATES:
            return True
        if not store.worker_running(runs_root):
            settle_if_unwatched(runs_root, job_id)
            if not settle_until_done:
                return store.read_job_file(runs_root, job_id).get("state") in rf.TERMINAL_STATES
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def settle_if_unwatched(runs_root: Path, job_id: str) -> None:
    """Write the final state of a "running" job that its executor says has ended, when no worker
    is there to do it."""
    def settle(job: dict) -> dict | None:
        if job.get("state") != rf.RUNNING:
            return None
        executor = executor_for(job, runs_root)
        ended = poll(executor, job) if executor is not None else None
        return finish_fields(job, ended) if ended is not None else None

    store.update_job(runs_root, job_id, settle)
