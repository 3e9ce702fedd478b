"""The scheduler of one workspace: starts queued jobs through an executor, one GPU job per GPU
slot, records how they end; plus the `queue`, `worker` and `cancel` commands.

The dashboard never keeps a process handle: it calls `engine.jobs.submit()`, and a detached
`python -m engine worker` (its own session, so it outlives a Streamlit restart) does the rest.
The worker holds an flock on `.jobs/worker.lock` for its whole life, so however many are
launched at once only one schedules; it exits once the queue has been empty for a short while.
A shorter-lived lock, `.jobs/queue.lock`, serialises every read-modify-write of a job.json
(start, cancel, finish), so a cancel and a start can never both win.

No torch and no streamlit here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from engine.jobs import groups, store, tracking
from engine.jobs.executor import (GPU_SHARE_ENV, Executor, available, executor_named, job_executor_name, jobs_per_gpu,
                                  workspace_executor_name)
from engine.jobs.store import _sync_run_status
from engine.runs import folder as rf
from engine.runs.lifecycle import is_disk_full

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLL_S = 0.5
DEFAULT_IDLE_GRACE_S = 10.0


def gpu_devices() -> list[str]:
    """Device ids this process may use: $CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`, else []."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    count = sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(count)]


class Worker:
    """The scheduler of one workspace. Use `run_worker()`; this holds the loop's state."""

    def __init__(self, runs_root: Path, gpu_slots: int | None = None, cpu_slots: int = 1,
                 poll_s: float = DEFAULT_POLL_S, idle_grace_s: float = DEFAULT_IDLE_GRACE_S,
                 once: bool = False):
        self.runs_root = Path(runs_root)
        self.devices = gpu_devices()
        self.slots = {"gpu": gpu_slots or max(1, len(self.devices)), "cpu": max(1, cpu_slots)}
        self.poll_s, self.idle_grace_s, self.once = poll_s, idle_grace_s, once
        self.unrecorded_starts: dict[str, dict] = {}  # job id -> its running fields, not yet in job.json
        self.executors: dict[str, Executor] = {}  # one per kind, kept: the local one reaps its children
        self.reported: set[str] = set()  # broken or unreachable jobs already logged once

    def run(self) -> int:
        lock_path = store.jobs_dir(self.runs_root) / store.WORKER_LOCK
        lock = store.try_lock(lock_path)
        if lock is None:
            _say(f"another worker already serves {self.runs_root}")
            return 0
        _say(f"worker {os.getpid()} serving {self.runs_root} with slots {self.slots}")
        idle_since: float | None = None
        try:
            while True:
                try:
                    busy = self.step()
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    _say(f"disk full, retrying in {self.poll_s} s: {exc}")  # the queue keeps serving
                    busy = True
                if busy:
                    idle_since = None
                else:
                    idle_since = idle_since or time.monotonic()
                    if self.once or time.monotonic() - idle_since >= self.idle_grace_s:
                        os.close(lock)
                        lock = None
                        # A job enqueued while we held the lock found "a worker runs" and
                        # started none: look once more after letting go, and stay if needed.
                        if not store.has_queued_jobs(self.runs_root):
                            break
                        lock = store.try_lock(lock_path)
                        if lock is None:
                            break
                        idle_since = None
                        continue
                time.sleep(self.poll_s)
        finally:
            if lock is not None:
                os.close(lock)
        _say(f"worker {os.getpid()} idle, exiting")
        return 0

    def _start_executor(self) -> tuple[str, Executor] | None:
        """The workspace's executor kind and instance to start jobs with; None (reported once) when
        the workspace's settings name none that can be used."""
        try:
            kind = workspace_executor_name(self.runs_root)
            return kind, self.executor(kind)
        except store.JobError as exc:
            self._report_once("settings", f"cannot start jobs: {exc}")
            return None

    def executor(self, name: str) -> Executor:
        if name not in self.executors:
            self.executors[name] = executor_named(name, self.runs_root)
        return self.executors[name]

    def step(self) -> bool:
        """One scheduling pass; True while anything it can track is running or waiting."""
        tracked = False
        jobs = store.raw_jobs(self.runs_root)
        for job in jobs:
            if job.get("state") == store.BROKEN:
                self._report_once(job["job_id"], f"skipping broken job: {job['error']}")
            elif job.get("state") == rf.RUNNING:
                tracked |= self._guarded(job["job_id"], self._poll, job)
        jobs = store.raw_jobs(self.runs_root)
        used: dict[str, set[int]] = {resource: set() for resource in store.RESOURCES}
        for job in jobs:
            if job.get("state") == rf.RUNNING and job.get("resource") in used and job.get("slot") is not None:
                used[job["resource"]].add(job["slot"])
        grouping: bool | None = None  # whether this pass runs shared-base groups (asked once, when needed)
        claimed: set[str] = set()  # jobs this pass put into a group's process
        for job in jobs:
            if job.get("state") != rf.QUEUED or job["job_id"] in claimed:
                continue
            tracked = True
            resource = job.get("resource")
            if resource not in store.RESOURCES:
                self._guarded(job["job_id"], self._fail_unstartable, job, f"unknown resource {resource!r}")
                continue
            if job["job_id"] in self.unrecorded_starts:  # already running: record it, whatever the slots
                slot = self.unrecorded_starts[job["job_id"]].get("slot")
                if self._guarded(job["job_id"], self._record_start, job["job_id"]) and slot is not None:
                    used[resource].add(slot)
                continue
            in_group = groups.can_group(job)
            if in_group and grouping is None:
                grouping = self._runs_groups()
            if in_group and grouping and store.sweep_lock_held(self.runs_root):
                continue  # its sweep is still being queued: claim the whole group on a later pass
            capacity = len(used[resource]) + 1 if self._scheduler_queues() else self._capacity(resource)
            free = [s for s in range(capacity) if s not in used[resource]]
            if not free:
                continue
            if in_group and grouping:
                started = self._guarded(job["job_id"], self._start_group, job["job_id"], free[0], claimed)
            else:
                started = self._guarded(job["job_id"], self._start, job["job_id"], free[0])
            if started:
                used[resource].add(free[0])
        return tracked

    def _capacity(self, resource: str) -> int:
        """Jobs of `resource` at once: the slots, times the workspace's jobs per GPU for GPU jobs
        (re-read each pass, so a changed setting applies to the next job started)."""
        if resource != "gpu":
            return self.slots[resource]
        return self.slots["gpu"] * self._jobs_per_gpu()

    def _jobs_per_gpu(self) -> int:
        try:
            return jobs_per_gpu(self.runs_root)
        except store.JobError as exc:
            self._report_once("jobs_per_gpu", f"{exc}; running one job per GPU")
            return 1

    def _scheduler_queues(self) -> bool:
        """Whether the workspace's executor hands jobs to a scheduler that queues them itself
        (Slurm): then every queued job is handed over at once, not one per local slot."""
        try:
            return bool(getattr(self.executor(workspace_executor_name(self.runs_root)), "queues_itself", False))
        except store.JobError:
            return False

    def _runs_groups(self) -> bool:
        """Whether the workspace's executor runs a shared-base group in one process (the local one);
        with any other (Slurm) every job of a group runs alone."""
        try:
            return bool(getattr(self.executor(workspace_executor_name(self.runs_root)), "runs_groups", False))
        except store.JobError:
            return False

    def _poll(self, job: dict) -> bool:
        """Record the end of a running job its executor says has ended; False if it cannot be tracked."""
        name = job_executor_name(job)
        if not available(name):
            self._report_once(job["job_id"], f"job {job['job_id']} belongs to executor {name!r}, not available here")
            return False
        ended = tracking.poll(self.executor(name), job)
        if ended is None:
            return True

        def finish(current: dict) -> dict | None:
            if current.get("state") != rf.RUNNING:
                return None
            return tracking.finish_fields(current, ended)

        job = store.update_job(self.runs_root, job["job_id"], finish)
        _say(f"job {job['job_id']} {job['state']} (exit code {ended.get('returncode')})")
        return True

    def _start(self, job_id: str, slot: int) -> bool:
        started = False
        found = self._start_executor()
        if found is None:
            return False
        kind, executor = found

        def launch(job: dict) -> dict | None:
            nonlocal started
            if job.get("state") != rf.QUEUED:
                return None  # cancelled meanwhile
            module = job.get("module") or "engine"
            if not store.MODULE_PATTERN.match(module):
                return _failed(job, f"module {module!r} refused")
            env, cuda, sharing = self._slot_env(job, slot)
            log_path = executor.log_path(job)
            try:
                handle = executor.start(job, env)
            except OSError as exc:
                return _failed(job, f"could not start: {exc}")
            started = True
            fields = {"state": rf.RUNNING, "executor": kind, "handle": handle, **_process_fields(handle),
                      "started_at": rf.now_iso(), "slot": slot, "cuda_visible_devices": cuda, "gpu_share": sharing, "log": str(log_path)}
            # Remembered until job.json says so: a full disk at this write must not start it twice.
            self.unrecorded_starts[job_id] = fields
            return fields

        job = store.update_job(self.runs_root, job_id, launch)
        self.unrecorded_starts.pop(job_id, None)
        if started:
            _say(f"started job {job_id} ({kind} {job['handle']}, {job['resource']} slot {slot}): {job['argv']}")
        return started

    def _slot_env(self, job: dict, slot: int) -> tuple[dict[str, str], str | None, int | None]:
        """(environment to add, CUDA_VISIBLE_DEVICES, jobs per GPU) of a job started on `slot`."""
        env, cuda, sharing = {}, None, None
        if job.get("resource") == "gpu" and self.devices:
            sharing = self._jobs_per_gpu()
            if slot < len(self.devices) * sharing:  # slots wrap round the GPUs: slot k on GPU k mod n
                cuda = env["CUDA_VISIBLE_DEVICES"] = self.devices[slot % len(self.devices)]
            if sharing > 1:
                env[GPU_SHARE_ENV] = str(sharing)
        return env, cuda, sharing

    def _start_group(self, job_id: str, slot: int, claimed: set[str]) -> bool:
        """Claim, under one hold of the queue lock, every queued job of `job_id`'s group (oldest
        first; same resource and module) onto `slot` and start ONE process for them
        (`groups.group_command`), output to the first job's log; record them all running with its
        handle and `group_members`. Adds the claimed ids to `claimed`; True when it started."""
        found = self._start_executor()
        if found is None:
            return False
        kind, executor = found
        started: list[str] = []

        def launch(current: list[dict]) -> dict[str, dict]:
            lead = next((j for j in current if j["job_id"] == job_id), None)
            if lead is None or lead.get("state") != rf.QUEUED:
                return {}  # cancelled meanwhile
            members = [j for j in current if j.get("state") == rf.QUEUED and j.get("group") == lead.get("group")
                       and j.get("resource") == lead.get("resource") and j.get("module") == lead.get("module")
                       and groups.can_group(j) and j["job_id"] not in self.unrecorded_starts]
            first = members[0]
            env, cuda, sharing = self._slot_env(first, slot)
            module, argv = groups.group_command(self.runs_root, members)
            log_path = executor.log_path(first)
            ids = [m["job_id"] for m in members]
            try:
                handle = executor.start(dict(first, module=module, argv=argv, log=str(log_path)), env)
            except OSError as exc:
                return {m["job_id"]: _failed(m, f"could not start the shared-base process: {exc}") for m in members}
            started.extend(ids)
            fields = {"state": rf.RUNNING, "executor": kind, "handle": handle, **_process_fields(handle),
                      "started_at": rf.now_iso(), "slot": slot, "cuda_visible_devices": cuda, "gpu_share": sharing,
                      "log": str(log_path), "group_members": ids}
            for member in ids:  # remembered until each job.json says so (a full disk mid-way)
                self.unrecorded_starts[member] = fields
            return {member: fields for member in ids}

        changed = store.update_jobs(self.runs_root, launch)
        for job in changed:
            self.unrecorded_starts.pop(job["job_id"], None)
        claimed.update(job["job_id"] for job in changed)
        if started:
            _say(f"started shared-base group {changed[0].get('group')} ({kind} {changed[0]['handle']}, "
                 f"{changed[0]['resource']} slot {slot}): jobs {', '.join(started)}")
        return bool(started)

    def _record_start(self, job_id: str) -> bool:
        """Write the running state of a job started on an earlier pass whose job.json write failed."""
        fields = self.unrecorded_starts[job_id]
        store.update_job(self.runs_root, job_id, lambda j: fields if j.get("state") == rf.QUEUED else None)
        del self.unrecorded_starts[job_id]
        _say(f"recorded the start of job {job_id}")
        return True

    def _fail_unstartable(self, job: dict, error: str) -> None:
        store.update_job(self.runs_root, job["job_id"],
                         lambda j: _failed(j, error) if j.get("state") == rf.QUEUED else None)

    def _guarded(self, job_id: str, action, *args) -> bool:
        """Run `action(*args)`; a job file that broke or vanished meanwhile is reported, not fatal."""
        try:
            return bool(action(*args))
        except store.JobError as exc:
            self._report_once(job_id, f"skipping job {job_id}: {exc}")
            return False

    def _report_once(self, key: str, message: str) -> None:
        if key not in self.reported:
            self.reported.add(key)
            _say(message)


def _process_fields(handle: dict) -> dict:
    """job.json's top-level pid, pgid and process_start_time (what a local handle records; readers
    of older files use them), null when the handle has no such numbers (another kind of executor)."""
    def number(value, kinds):
        return value if isinstance(value, kinds) and not isinstance(value, bool) else None

    return {"pid": number(handle.get("pid"), int), "pgid": number(handle.get("pgid"), int),
            "process_start_time": number(handle.get("process_start_time"), (int, float))}


def _failed(job: dict, error: str) -> dict:
    """Fields that fail a job that never started (its run folder is told too)."""
    _sync_run_status(job, rf.FAILED, error)
    return {"state": rf.FAILED, "ended_at": rf.now_iso(), "error": error}


def run_worker(runs_root: Path, gpu_slots: int | None = None, cpu_slots: int = 1, once: bool = False,
               poll_s: float = DEFAULT_POLL_S, idle_grace_s: float = DEFAULT_IDLE_GRACE_S) -> int:
    """Serve the queue until it is empty (after `idle_grace_s`); returns at once if a worker runs."""
    return Worker(runs_root, gpu_slots, cpu_slots, poll_s, idle_grace_s, once).run()


def ensure_worker(runs_root: Path, gpu_slots: int | None = None, cpu_slots: int | None = None,
                  poll_s: float | None = None, idle_grace_s: float | None = None) -> int | None:
    """Start a detached worker unless one holds the lock; returns its pid, or None if one runs.

    Two racing calls may both start one; the loser finds the lock taken and exits at once.
    """
    runs_root = Path(runs_root).resolve()
    if store.worker_running(runs_root):
        return None
    command = [sys.executable, "-m", "engine", "worker", "--runs-dir", str(runs_root)]
    for flag, value in (("--gpu-slots", gpu_slots), ("--cpu-slots", cpu_slots),
                        ("--poll", poll_s), ("--idle-grace", idle_grace_s)):
        if value is not None:
            command += [flag, str(value)]
    store.jobs_dir(runs_root).mkdir(parents=True, exist_ok=True)  # a workspace that never queued a job has none
    with open(store.jobs_dir(runs_root) / store.WORKER_LOG, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                start_new_session=True)
    return proc.pid


def _say(message: str) -> None:
    print(f"[{rf.now_iso()}] {message}", flush=True)


# ---------------------------------------------------------------- CLI

def queue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "python -m engine queue [--runs-dir DIR] [--resource gpu|cpu] [--json] -- COMMAND ARGS..."
    parser.add_argument("--runs-dir", help="workspace (default: $QLORA_DASH_RUNS or ./runs)")
    parser.add_argument("--resource", choices=store.RESOURCES, default="gpu", help="slot kind the job needs")
    parser.add_argument("--run-dir", help="the run folder the job writes (for the dashboard and cancel)")
    parser.add_argument("--no-worker", action="store_true", help="only enqueue; do not start a worker")
    parser.add_argument("--json", action="store_true", help="print the job as JSON")
    parser.add_argument("job_argv", nargs=argparse.REMAINDER, help="the engine command after `--`")


def queue_main(args: argparse.Namespace) -> int:
    root = rf.runs_root(args.runs_dir)
    argv = list(args.job_argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("queue: give the engine command after `--`, e.g. -- train --config run.yaml", file=sys.stderr)
        return 2
    try:
        job_id = store.enqueue(root, argv, resource=args.resource, run_dir=args.run_dir)
    except store.JobError as exc:
        print(f"queue: {exc}", file=sys.stderr)
        return 2
    if not args.no_worker:
        ensure_worker(root)
    print(json.dumps(tracking.read_job(root, job_id), indent=2) if args.json else job_id)
    return 0


def worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", help="workspace (default: $QLORA_DASH_RUNS or ./runs)")
    parser.add_argument("--gpu-slots", type=int, help="GPU jobs at once (default: number of GPUs, at least 1)")
    parser.add_argument("--cpu-slots", type=int, default=1, help="CPU jobs at once (default 1)")
    parser.add_argument("--once", action="store_true", help="exit as soon as the queue is empty")
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL_S, help=argparse.SUPPRESS)
    parser.add_argument("--idle-grace", type=float, default=DEFAULT_IDLE_GRACE_S,
                        help="seconds to wait for new jobs before exiting")


def worker_main(args: argparse.Namespace) -> int:
    return run_worker(rf.runs_root(args.runs_dir), gpu_slots=args.gpu_slots, cpu_slots=args.cpu_slots,
                      once=args.once, poll_s=args.poll, idle_grace_s=args.idle_grace)


def cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id")
    parser.add_argument("--runs-dir", help="workspace (default: $QLORA_DASH_RUNS or ./runs)")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--json", action="store_true")


def cancel_main(args: argparse.Namespace) -> int:
    try:
        result = tracking.cancel(rf.runs_root(args.runs_dir), args.job_id, grace_s=args.grace)
    except store.JobError as exc:
        print(f"cancel: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else f"{result['job_id']}: {result['outcome']}")
    return 0
