"""Jobs: the on-disk queue, sweep expansion, executors and the worker that runs them.

What the dashboard uses (it never needs the queue's folder names):

    submit(runs_root, argv, ...)        queue one job and make sure a worker serves it
    submit_sweep(runs_root, cells, ...) queue a sweep's pending cells and make sure a worker serves them
    ensure_worker_if_needed(runs_root)  start a worker when jobs wait and none runs (pages call it on load)
    read_jobs, read_job, active_jobs, broken_jobs, job_log_tail, cancel, worker_running
    waiting_in_group(job)               a job claimed by a shared-base group's process, not started yet

Modules, one duty each: `store` (job folders, job.json, locks), `sweep` (lists, cells, resume),
`executor` (the executor seam and its registry), `local` (the local process executor),
`tracking` (state as a reader sees it, outcomes, cancel), `worker` (the scheduler and the CLI),
`groups` (shared-base groups: what their one process asks of the queue, how a member ends),
`sleep_job` (a stand-in job and group process for tests). See docs/JOBS.md.
"""

from __future__ import annotations

from pathlib import Path

from engine.jobs.executor import Executor, register_executor  # noqa: F401 (the seam, for new kinds)
from engine.jobs.groups import is_waiting as waiting_in_group  # noqa: F401
from engine.jobs.tracking import active_jobs, broken_jobs, cancel, job_log_tail, read_job, read_jobs  # noqa: F401
from engine.jobs.store import (BROKEN, JOB_FILE, JobError, LockBusyError, enqueue,  # noqa: F401
                               has_queued_jobs, worker_running)
from engine.jobs.sweep import (ALREADY_QUEUED, ALREADY_SUCCEEDED, enqueue_sweep, expand_sweep,  # noqa: F401
                               parse_list, sweep_pending)
from engine.jobs.worker import ensure_worker, run_worker  # noqa: F401


def submit(runs_root: Path, argv: list[str], resource: str = "gpu", run_dir: Path | None = None,
           sweep_id: str | None = None, prepare_run: tuple[Path, dict] | None = None,
           module: str = "engine") -> str:
    """Queue `python -m <module> ARGV...` (arguments as for `store.enqueue`) and make sure a worker
    serves the workspace; returns the job id."""
    job_id = enqueue(runs_root, argv, resource=resource, run_dir=run_dir, sweep_id=sweep_id,
                     prepare_run=prepare_run, module=module)
    ensure_worker(runs_root)
    return job_id


def submit_sweep(runs_root: Path, cells: list[dict], sweep_id: str | None = None, resource: str = "gpu",
                 share_base: bool = False) -> dict:
    """Queue the pending cells of a sweep (`sweep.enqueue_sweep`; `share_base`: as one shared-base
    group) and make sure a worker serves them."""
    result = enqueue_sweep(runs_root, cells, sweep_id=sweep_id, resource=resource, share_base=share_base)
    if result["enqueued"]:
        ensure_worker(runs_root)
    return result


def ensure_worker_if_needed(runs_root: Path) -> int | None:
    """Start a worker when jobs are queued and none runs (it died, or the machine restarted);
    returns its pid, or None. Cheap while a worker runs: one flock probe."""
    if worker_running(runs_root) or not has_queued_jobs(runs_root):
        return None
    return ensure_worker(runs_root)
