"""Shared-base groups: several queued training jobs run one after another by ONE process that loads
the base model once (`python -m engine train-group --runs-dir ROOT JOB_ID ...`).

Each member stays its own job (own run folder, argv, state, cancel), so everything that lists,
tracks or cancels one job keeps working. The worker claims a group's queued jobs onto one slot
and records them all running with the one process's handle and `group_members` (the first is the
job whose folder holds the process's log). The process asks `start_member` before it trains a
member and polls `cancel_requested` between steps; it writes each run folder's state itself.
A member ends when its run folder records a final state, or when the process has ended
(`member_outcome`). The rules are in docs/JOBS.md, "Shared-base groups".

No torch and no streamlit here.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from engine.jobs import store
from engine.runs import folder as rf

# Which jobs can share a process: module -> (the members' command, the group process's command).
# The engine's training jobs, and the tests' stand-in (engine.jobs.sleep_job, whose `group`
# command runs its `sleep` jobs the same way, through start_member and cancel_requested).
GROUP_COMMANDS = {"engine": ("train", "train-group"), "engine.jobs.sleep_job": ("sleep", "group")}


def group_command(runs_root: Path, members: list[dict]) -> tuple[str, list[str]]:
    """(module, argv) of the one process that runs `members` (queued jobs of one group and module,
    oldest first): `python -m engine train-group --runs-dir ROOT JOB_ID ...` for training jobs."""
    module = members[0].get("module") or "engine"
    return module, [GROUP_COMMANDS[module][1], "--runs-dir", str(Path(runs_root)), *(m["job_id"] for m in members)]


def can_group(job: dict) -> bool:
    """Whether `job` may run in its group's process: it has a group, and its command is one a
    group process runs (a training job); any other job runs alone."""
    commands = GROUP_COMMANDS.get(job.get("module") or "engine")
    return bool(job.get("group")) and commands is not None and (job.get("argv") or [None])[0] == commands[0]


def is_member(job: dict) -> bool:
    """True for a job started as part of a shared-base group process."""
    return bool(job.get("group_members"))


def leader_view(job: dict) -> dict:
    """The member as the executor knows its process: under the id of the job that started it."""
    return dict(job, job_id=job["group_members"][0])


def is_waiting(job: dict) -> bool:
    """A claimed member the process has not started yet (its run folder still says queued)."""
    return job.get("state") == rf.RUNNING and is_member(job) and not job.get("member_started_at")


def others_active(runs_root: Path, job: dict) -> list[str]:
    """The other members of `job`'s group process that are still queued or running."""
    active = []
    for job_id in job.get("group_members") or []:
        if job_id == job.get("job_id"):
            continue
        try:
            other = store.read_job_file(runs_root, job_id)
        except store.JobError:
            continue
        if other.get("state") in rf.ACTIVE_STATES:
            active.append(job_id)
    return active


# ---------------------------------------------------------------- the group process's side

def start_member(runs_root: Path, job_id: str) -> dict | None:
    """Before training member `job_id`: under the queue lock, if the job is running (claimed by the
    worker), not yet started and no cancel was asked, record `member_started_at` and return the job;
    otherwise (cancelled, already started, unknown, broken) return None and skip it."""
    started_at = rf.now_iso()
    claimed = False

    def start(job: dict) -> dict | None:
        nonlocal claimed
        if job.get("state") != rf.RUNNING or job.get("cancel_requested_at") or job.get("member_started_at"):
            return None
        claimed = True
        return {"member_started_at": started_at}

    try:
        job = store.update_job(runs_root, job_id, start)
    except store.JobError:
        return None
    return job if claimed else None


def cancel_requested(runs_root: Path, job_id: str) -> bool:
    """True once a cancel was asked for `job_id` (or it has ended: the process must not train it)."""
    try:
        job = store.read_job_file(runs_root, job_id)
    except store.JobError:
        return True  # gone or broken: nobody could follow it
    return bool(job.get("cancel_requested_at")) or job.get("state") in rf.TERMINAL_STATES


# ---------------------------------------------------------------- how a member ends

def _recorded_status(job: dict) -> dict:
    """The member's status.json as written (not reconciled: its pid is the shared process's)."""
    try:
        status = rf.read_json(Path(job["run_dir"]) / rf.STATUS) if job.get("run_dir") else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return status if isinstance(status, dict) else {}


def run_finished(job: dict) -> bool:
    """Whether the member's run folder records a final state."""
    return _recorded_status(job).get("state") in rf.TERMINAL_STATES


def _ended_text(ended: dict) -> str:
    code = ended.get("returncode")
    if code is None:
        return "exit code unknown"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
        return f"killed by signal {name}"
    return f"exit code {code}"


def member_outcome(job: dict, ended: dict | None) -> tuple[str, str | None] | None:
    """(state, error) of a member now, or None while it goes on. `ended` is the group process's
    poll (None while it runs).

    The run folder's final state decides, even while the process goes on with the next member.
    Once the process has ended: a member it never started failed, one it started without a final
    state crashed (cancelled if a cancel was asked).
    """
    status = _recorded_status(job)
    if status.get("state") in rf.TERMINAL_STATES:
        return status["state"], status.get("error")
    if ended is None:
        return None
    if job.get("cancel_requested_at"):
        return rf.CANCELLED, None
    how = f"{_ended_text(ended)}, log: {job.get('log')}"
    if not job.get("member_started_at"):
        return rf.FAILED, f"the shared-base process ended before this run started ({how})"
    return rf.CRASHED, f"the shared-base process ended without a final state for this run ({how})"
