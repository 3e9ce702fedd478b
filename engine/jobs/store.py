"""The job store: job folders, job.json (read, validated, updated under a lock) and the queue's locks.

A job is a folder `<runs_root>/.jobs/<job_id>/` (hidden from run listings by its leading dot)
holding `job.json` and the job's log. Every job.json read here is validated: a file that is not
a job (not an object, no argv, a slot that is not a number, junk bytes) is reported as a broken
job naming its folder and the reason, and never stops the good jobs from being read or run.

No torch and no streamlit here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.runs import folder as rf

log = logging.getLogger("engine.jobs.store")

JOBS_DIR = ".jobs"
JOB_FILE = "job.json"
JOB_LOG = "output.log"
WORKER_LOCK = "worker.lock"
QUEUE_LOCK = "queue.lock"
SWEEP_LOCK = "sweep.lock"
WORKER_LOG = "worker.log"
SETTINGS_FILE = "settings.json"
RESOURCES = ("gpu", "cpu")
# A lock file still without its owner record after this long lost its holder while being made.
EMPTY_LOCK_STALE_S = 5.0
# exclusive_lock_file's default: a lock older than this lost its holder.
SWEEP_LOCK_STALE_S = 600.0
# The state of a job whose job.json cannot be used; never written, only reported.
BROKEN = "broken"

# Only the engine's own entry points may be launched from a job.json found on disk.
MODULE_PATTERN = re.compile(r"^engine(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class JobError(Exception):
    """A job or a request about one is invalid; the message says what and where."""


class BrokenJobFile(JobError):
    """A job.json that cannot be used; `reason` says why without the path."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


class LockBusyError(JobError):
    """Another process holds a queue lock for longer than we are willing to wait."""


# ---------------------------------------------------------------- paths, ids

def jobs_dir(runs_root: Path) -> Path:
    return Path(runs_root) / JOBS_DIR


def job_dir(runs_root: Path, job_id: str) -> Path:
    """The folder of `job_id`; an id that would leave the queue folder is refused."""
    try:
        return rf.resolve_in_root(jobs_dir(runs_root), job_id)
    except rf.RunFolderError:
        raise JobError(f"invalid job id {job_id!r}") from None


def new_job_id() -> str:
    """UTC timestamp to the microsecond plus a random suffix: sorts by creation, never collides."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{int((now % 1) * 1e6):06d}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------- locks

@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (blocking) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def try_lock(path: Path) -> int | None:
    return rf.try_flock(path, 0o644)


def worker_running(runs_root: Path) -> bool:
    """True while some worker holds this workspace's worker lock (one flock probe).

    Creates nothing: a workspace without a queue folder (or one that is read-only) has no worker.
    """
    try:
        fd = os.open(jobs_dir(runs_root) / WORKER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def exclusive_lock_file(path: Path, timeout_s: float = 30.0, stale_s: float = SWEEP_LOCK_STALE_S) -> Iterator[None]:
    """Hold `path`, created with O_EXCL and holding {host, pid, created}, for the block.

    O_EXCL creation is atomic on local disks and on NFS v3+, unlike flock, so this lock also
    serves a workspace shared by several hosts. A lock left by a holder that died (same host,
    its pid gone) or older than `stale_s` is taken over. Waits up to `timeout_s`, then raises
    LockBusyError naming the holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "created": time.time(),
             "token": secrets.token_hex(8)}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if _lock_is_stale(path, holder, stale_s):
                _remove_if_unchanged(path, holder)
                continue
            if time.monotonic() >= deadline:
                who = (f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process")
                raise LockBusyError(f"{path} is held by {who}; try again in a moment") from None
            time.sleep(0.05)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(owner, handle)
        break
    try:
        yield
    finally:
        if _lock_holder(path) == owner:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _lock_holder(path: Path) -> dict | None:
    """The lock file's owner record; None while it is being written or when it is unreadable."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _lock_is_stale(path: Path, holder: dict | None, stale_s: float) -> bool:
    if holder is None:  # being written (microseconds), or its holder died before writing it
        try:
            return time.time() - path.stat().st_mtime > EMPTY_LOCK_STALE_S
        except FileNotFoundError:
            return False
    created = holder.get("created")
    if isinstance(created, (int, float)) and time.time() - created > stale_s:
        return True
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def _remove_if_unchanged(path: Path, holder: dict) -> None:
    """Remove a stale lock unless someone replaced it since we read it (a small window remains)."""
    if _lock_holder(path) == holder:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ---------------------------------------------------------------- job.json

_OPTIONAL_TEXT = ("run_dir", "sweep_id", "log", "created_at", "started_at", "ended_at", "cancel_requested_at",
                  "cancel_outcome", "error", "cuda_visible_devices", "module", "executor", "group", "member_started_at")
_OPTIONAL_INT = ("pid", "pgid", "returncode")


def job_problem(job: Any, folder_name: str) -> str | None:
    """Why `job` (a parsed job.json found in folder `folder_name`) cannot be used, or None."""
    if not isinstance(job, dict):
        return f"not a JSON object but {type(job).__name__}"
    if job.get("job_id") != folder_name:
        return f"job_id {job.get('job_id')!r} does not match its folder"
    argv = job.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return "argv is missing" if "argv" not in job else f"argv {argv!r} is not a non-empty list of strings"
    if job.get("state") not in rf.STATES:
        return f"unknown state {job.get('state')!r}"
    if not isinstance(job.get("resource"), str):
        return f"resource {job.get('resource')!r} is not a name"
    slot = job.get("slot")
    if slot is not None and (not _is_int(slot) or slot < 0):
        return f"slot {slot!r} is not a non-negative whole number"
    for key in _OPTIONAL_INT:
        if job.get(key) is not None and not _is_int(job[key]):
            return f"{key} {job[key]!r} is not a whole number"
    start = job.get("process_start_time")
    if start is not None and (isinstance(start, bool) or not isinstance(start, (int, float))):
        return f"process_start_time {start!r} is not a number"
    for key in _OPTIONAL_TEXT:
        if job.get(key) is not None and not isinstance(job[key], str):
            return f"{key} {job[key]!r} is not text"
    handle = job.get("handle")
    if handle is not None and not (isinstance(handle, dict) and isinstance(handle.get("executor"), str)):
        return "handle is not an object naming its executor"
    if job.get("group") == "":
        return "group is empty (leave it out, or name the group)"
    members = job.get("group_members")
    if members is not None and not (isinstance(members, list) and members and
                                    all(isinstance(m, str) and m for m in members)):
        return f"group_members {members!r} is not a non-empty list of job ids"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def broken_job(folder: Path, reason: str) -> dict:
    """How an unusable job.json is listed: its folder, the reason, and the state BROKEN."""
    return {"job_id": folder.name, "state": BROKEN, "broken": True, "folder": str(folder),
            "error": f"{folder / JOB_FILE}: {reason}"}


def _load_job(folder: Path) -> dict:
    """The validated job.json of `folder`; FileNotFoundError passes through, an unusable one raises
    BrokenJobFile."""
    path = folder / JOB_FILE
    try:
        job = rf.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BrokenJobFile(path, f"corrupt JSON ({exc})") from None
    except IsADirectoryError:
        raise BrokenJobFile(path, "is a folder, not a file") from None
    problem = job_problem(job, folder.name)
    if problem:
        raise BrokenJobFile(path, problem)
    return job


def read_job_file(runs_root: Path, job_id: str) -> dict:
    """The job.json of `job_id` as recorded (JobError when missing or unusable)."""
    folder = job_dir(runs_root, job_id)
    try:
        return _load_job(folder)
    except FileNotFoundError:
        raise JobError(f"no job {job_id!r} in {jobs_dir(runs_root)}") from None


def update_job(runs_root: Path, job_id: str, change: Callable[[dict], dict | None]) -> dict:
    """Read-modify-write job.json under the queue lock; `change` returns fields to merge (or None)."""
    with locked(jobs_dir(runs_root) / QUEUE_LOCK):
        job = read_job_file(runs_root, job_id)
        fields = change(job)
        if fields:
            job.update(fields)
            rf.atomic_write_json(job_dir(runs_root, job_id) / JOB_FILE, job)
        return job


def raw_jobs(runs_root: Path) -> list[dict]:
    """Every job as recorded, oldest first; an unusable job.json is a `broken_job` entry.

    A folder still being created (no job.json yet) is skipped.
    """
    folder = jobs_dir(runs_root)
    if not folder.is_dir():
        return []
    out = []
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            out.append(_load_job(child))
        except FileNotFoundError:
            continue
        except BrokenJobFile as exc:
            out.append(broken_job(child, exc.reason))
        except OSError as exc:
            out.append(broken_job(child, f"unreadable ({exc.strerror or exc})"))
    return out


def update_jobs(runs_root: Path, change: Callable[[list[dict]], dict[str, dict] | None]) -> list[dict]:
    """Read-modify-write several job.json files under one hold of the queue lock: `change` gets every
    usable job (oldest first) and returns {job_id: fields to merge}; returns the changed jobs.

    Each file is replaced atomically, one after another: a write that fails (a full disk) leaves the
    jobs before it changed and the rest as they were.
    """
    with locked(jobs_dir(runs_root) / QUEUE_LOCK):
        current = [job for job in raw_jobs(runs_root) if job.get("state") != BROKEN]
        changes = change(current) or {}
        changed = []
        for job in current:
            if fields := changes.get(job["job_id"]):
                job.update(fields)
                rf.atomic_write_json(job_dir(runs_root, job["job_id"]) / JOB_FILE, job)
                changed.append(job)
        return changed


def sweep_lock_held(runs_root: Path) -> bool:
    """True while a sweep is being queued (its `.jobs/sweep.lock` is held by a live holder): its
    jobs may not all be in the queue yet."""
    path = jobs_dir(runs_root) / SWEEP_LOCK
    if not path.exists():
        return False
    return not _lock_is_stale(path, _lock_holder(path), SWEEP_LOCK_STALE_S)


def has_queued_jobs(runs_root: Path) -> bool:
    return any(job.get("state") == rf.QUEUED for job in raw_jobs(runs_root))


# ---------------------------------------------------------------- the run folder a job writes

def _recorded_run_state(run_dir: str | None) -> str | None:
    if not run_dir:
        return None
    try:
        return rf.read_json(Path(run_dir) / rf.STATUS).get("state")
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError, AttributeError):
        return None


def _sync_run_status(job: dict, state: str, error: str | None) -> None:
    """Give the job's run folder the job's final state when the run itself never recorded one.

    Called before job.json records that state, so a reader who sees a finished job also sees
    a finished run.
    """
    run_dir = job.get("run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        return
    recorded = _recorded_run_state(run_dir)
    if recorded is None or recorded in rf.ACTIVE_STATES:
        if (owner := _other_owner(job, Path(run_dir))) is not None:
            log.info("job %s ended %s; run folder %s left as it is: %s", job.get("job_id"), state, run_dir, owner)
            return
        fields = {"error": error} if error else {}
        rf.write_status(Path(run_dir), state, **fields)


def _other_owner(job: dict, run_dir: Path) -> str | None:
    """Who else is writing `run_dir` while `job` ends, or None. A job that failed because its run
    name was taken (by another job queued meanwhile, or a run started outside the queue) must not
    give that run its failure."""
    try:
        status = rf.read_status(run_dir)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        status = {}
    if status.get("state") == rf.RUNNING and rf.is_local(status) and \
            rf.process_alive(status.get("pid"), status.get("process_start_time")):
        return f"its process {status.get('pid')} is still running"
    for other in raw_jobs(run_dir.parent):
        if other.get("job_id") != job.get("job_id") and other.get("state") in rf.ACTIVE_STATES and \
                other.get("run_dir") and Path(other["run_dir"]) == run_dir:
            return f"job {other['job_id']} ({other['state']}) writes it"
    return None


# ---------------------------------------------------------------- enqueue

def enqueue(runs_root: Path, argv: list[str], resource: str = "gpu", run_dir: Path | None = None,
            sweep_id: str | None = None, prepare_run: tuple[Path, dict] | None = None,
            module: str = "engine", group: str | None = None) -> str:
    """Add a job running `python -m <module> ARGV...`; returns its id. Does not start a worker
    (`engine.jobs.submit` does both).

    A `group` (a sweep's id) lets the local worker run the group's queued jobs in one process
    (docs/JOBS.md, "Shared-base groups"); the job still runs alone anywhere else.

    With `prepare_run=(run_dir, config)` the run folder gets config.json (kind "train" unless the
    config names another) and a "queued" status.json first, so the dashboard lists the run at once.
    """
    runs_root = Path(runs_root)
    if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
        raise JobError(f"argv must be a non-empty list of strings (got {argv!r})")
    if resource not in RESOURCES:
        raise JobError(f"resource must be one of {', '.join(RESOURCES)} (got {resource!r})")
    if not MODULE_PATTERN.match(module):
        raise JobError(f"module {module!r} is not an engine module")
    if group is not None and (not isinstance(group, str) or not group):
        raise JobError(f"group must be a non-empty name (got {group!r})")
    if prepare_run is not None:
        prep_dir, config = prepare_run
        if run_dir is not None and Path(run_dir).resolve() != Path(prep_dir).resolve():
            raise JobError(f"run_dir {run_dir} and prepare_run's folder {prep_dir} differ")
        run_dir = Path(prep_dir)
        _prepare_run_folder(runs_root, run_dir, config)
    job_id, folder = _make_job_folder(runs_root)
    job = {
        "schema_version": rf.SCHEMA_VERSION,
        "job_id": job_id,
        "module": module,
        "argv": list(argv),
        "resource": resource,
        "run_dir": str(Path(run_dir).resolve()) if run_dir is not None else None,
        "sweep_id": sweep_id,
        "group": group,
        "state": rf.QUEUED,
        "executor": None,
        "handle": None,
        "pid": None,
        "pgid": None,
        "process_start_time": None,
        "returncode": None,
        "created_at": rf.now_iso(),
        "started_at": None,
        "ended_at": None,
        "log": str(folder / JOB_LOG),
        "slot": None,
        "cuda_visible_devices": None,
        "cancel_requested_at": None,
        "cancel_outcome": None,
        "error": None,
    }
    rf.atomic_write_json(folder / JOB_FILE, job)
    return job_id


def _make_job_folder(runs_root: Path) -> tuple[str, Path]:
    jobs_dir(runs_root).mkdir(parents=True, exist_ok=True)
    while True:
        job_id = new_job_id()
        folder = jobs_dir(runs_root) / job_id
        try:
            folder.mkdir()
            return job_id, folder
        except FileExistsError:
            continue


def _prepare_run_folder(runs_root: Path, run_dir: Path, config: dict) -> None:
    if not rf.is_inside(run_dir, runs_root):
        raise JobError(f"run folder {run_dir} is not inside the workspace {runs_root}")
    recorded = _recorded_run_state(str(run_dir))
    if recorded not in (None, rf.QUEUED):
        raise JobError(f"run folder {run_dir} already holds a {recorded} run; use a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    rf.atomic_write_json(run_dir / rf.CONFIG, {"kind": rf.KIND_TRAIN, **config,
                                                "schema_version": rf.SCHEMA_VERSION})
    rf.write_status(run_dir, rf.QUEUED)
