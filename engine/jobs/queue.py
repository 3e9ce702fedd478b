"""The on-disk job queue: one scheduler per workspace, one GPU job per GPU, cancel, crash detection.

A job is a folder `<runs_root>/.jobs/<job_id>/` (hidden from run listings by its leading dot):

    job.json     what to run and where it stands (fields below), written atomically
    output.log   the job process's stdout and stderr

The dashboard never keeps a process handle: it calls `enqueue()` and `ensure_worker()`, and a
detached `python -m engine worker` (its own session, so it outlives a Streamlit restart) starts
queued jobs as `python -m engine ARGV...`, reaps them and records how they ended. The worker holds
an flock on `.jobs/worker.lock` for its whole life, so however many are launched at once only one
schedules; it exits once the queue has been empty for a short while, so nothing runs forever.
A shorter-lived lock, `.jobs/queue.lock`, serialises every read-modify-write of a job.json
(start, cancel, finish), so a cancel and a start can never both win.

job.json: schema_version, job_id, module ("engine"), argv, resource ("gpu"|"cpu"), run_dir,
sweep_id, state (runfolder's queued/running/succeeded/failed/cancelled/crashed), pid, pgid,
process_start_time, returncode, created_at, started_at, ended_at, log, slot,
cuda_visible_devices, cancel_requested_at, cancel_outcome ("graceful"|"forced"|None), error.

No torch and no streamlit here.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from engine.runs import folder as rf
from engine.runs.lifecycle import is_disk_full

JOBS_DIR = ".jobs"
JOB_FILE = "job.json"
JOB_LOG = "output.log"
WORKER_LOCK = "worker.lock"
QUEUE_LOCK = "queue.lock"
WORKER_LOG = "worker.log"
RESOURCES = ("gpu", "cpu")
REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_POLL_S = 0.5
DEFAULT_IDLE_GRACE_S = 10.0
# Only the engine's own entry points may be launched from a job.json found on disk.
_MODULE = re.compile(r"^engine(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class JobError(Exception):
    """A job or a request about one is invalid; the message says what and where."""


# ---------------------------------------------------------------- paths, ids, locks

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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (blocking) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_lock(path: Path) -> int | None:
    return rf.try_flock(path, 0o644)


def worker_running(runs_root: Path) -> bool:
    """True while some worker holds this workspace's worker lock."""
    fd = _try_lock(jobs_dir(runs_root) / WORKER_LOCK)
    if fd is None:
        return True
    os.close(fd)
    return False


# ---------------------------------------------------------------- job.json

def _read_job_file(runs_root: Path, job_id: str) -> dict:
    path = job_dir(runs_root, job_id) / JOB_FILE
    try:
        return rf.read_json(path)
    except FileNotFoundError:
        raise JobError(f"no job {job_id!r} in {jobs_dir(runs_root)}") from None
    except json.JSONDecodeError as exc:
        raise JobError(f"{path}: corrupt JSON ({exc})") from None


def _update_job(runs_root: Path, job_id: str, change: Callable[[dict], dict | None]) -> dict:
    """Read-modify-write job.json under the queue lock; `change` returns fields to merge (or None)."""
    with _locked(jobs_dir(runs_root) / QUEUE_LOCK):
        job = _read_job_file(runs_root, job_id)
        fields = change(job)
        if fields:
            job.update(fields)
            rf.atomic_write_json(job_dir(runs_root, job_id) / JOB_FILE, job)
        return job


def _raw_jobs(runs_root: Path) -> list[dict]:
    """Every readable job.json as recorded, oldest first. A folder still being created is skipped."""
    folder = jobs_dir(runs_root)
    if not folder.is_dir():
        return []
    out = []
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            out.append(rf.read_json(child / JOB_FILE))
        except FileNotFoundError:
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            out.append({"job_id": child.name, "state": "?", "error": f"corrupt job.json: {exc}"})
    return out


# ---------------------------------------------------------------- processes

def _process_state(pid: int | None, start_time: float | None) -> str:
    """"alive", "exited" (a zombie: its parent, the worker, is about to reap it) or "gone"."""
    return rf.process_state(pid, start_time)  # the one local process check (engine/runs/folder.py)


def _outcome_without_returncode(job: dict) -> tuple[str, str | None]:
    """Final state of a job whose process ended while no worker was its parent."""
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
        fields = {"error": error} if error else {}
        rf.write_status(Path(run_dir), state, **fields)


def _reconciled(job: dict, worker_alive: bool) -> dict:
    """The job as a reader should see it: "running" with no live process becomes its outcome.

    While a worker runs, a job whose process has ended still reads "running": the worker reaps
    it and records the real exit code within a poll interval, which a reader cannot know.
    """
    if job.get("state") != rf.RUNNING or worker_alive:
        return job
    if _process_state(job.get("pid"), job.get("process_start_time")) == "alive":
        return job
    state, error = _outcome_without_returncode(job)
    return dict(job, state=state, recorded_state=rf.RUNNING, error=job.get("error") or error)


# ---------------------------------------------------------------- public queue API

def enqueue(runs_root: Path, argv: list[str], resource: str = "gpu", run_dir: Path | None = None,
            sweep_id: str | None = None, prepare_run: tuple[Path, dict] | None = None,
            module: str = "engine") -> str:
    """Add a job running `python -m <module> ARGV...`; returns its id. Does not start a worker.

    With `prepare_run=(run_dir, config)` the run folder gets config.json (kind "train" unless the
    config names another) and a "queued" status.json first, so the dashboard lists the run at once.
    """
    runs_root = Path(runs_root)
    if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
        raise JobError(f"argv must be a non-empty list of strings (got {argv!r})")
    if resource not in RESOURCES:
        raise JobError(f"resource must be one of {', '.join(RESOURCES)} (got {resource!r})")
    if not _MODULE.match(module):
        raise JobError(f"module {module!r} is not an engine module")
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
        "state": rf.QUEUED,
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


def read_jobs(runs_root: Path) -> list[dict]:
    """Every job, oldest first, with a dead "running" job reported as it ended (nothing written)."""
    worker_alive = worker_running(runs_root)
    return [_reconciled(job, worker_alive) for job in _raw_jobs(runs_root)]


def read_job(runs_root: Path, job_id: str) -> dict:
    return _reconciled(_read_job_file(runs_root, job_id), worker_running(runs_root))


def active_jobs(runs_root: Path) -> list[dict]:
    return [job for job in read_jobs(runs_root) if job.get("state") in rf.ACTIVE_STATES]


def job_log_tail(runs_root: Path, job_id: str, max_bytes: int = 8000) -> str:
    return rf.tail_text(job_dir(runs_root, job_id) / JOB_LOG, max_bytes)


def cancel(runs_root: Path, job_id: str, grace_s: float = 20.0) -> dict:
    """Cancel a job: dequeue it if queued, else SIGTERM its process, SIGKILL after `grace_s`.

    SIGTERM goes to the job's main process only: the engine finishes the step, saves the adapter
    and records "cancelled", while helpers such as DataLoader workers (which die on SIGTERM and
    would abort that save) keep running until it is done. Whatever is left of the process
    group afterwards gets SIGKILL, as does the whole group when the grace period runs out.

    Returns {job_id, outcome}: "dequeued", "graceful", "forced" or "already finished". Returns
    once the job's final state is recorded (by the worker, or here when no worker is running).
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
        if job.get("state") == rf.RUNNING and not job.get("cancel_requested_at"):
            return {"cancel_requested_at": now}
        return None

    job = _update_job(runs_root, job_id, request)
    if dequeued:
        return {"job_id": job_id, "outcome": "dequeued"}
    if job.get("state") != rf.RUNNING:
        return {"job_id": job_id, "outcome": "already finished"}

    pid, pgid, started = job.get("pid"), job.get("pgid") or job.get("pid"), job.get("process_start_time")
    if _process_state(pid, started) != "alive":
        _wait_recorded(runs_root, job_id, timeout_s=10.0)
        return {"job_id": job_id, "outcome": "already finished"}

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    outcome = "graceful"
    if not _wait_gone(pid, started, grace_s):
        outcome = "forced"
    _signal_group(pgid, signal.SIGKILL)  # leftovers after a graceful exit, everything when forced
    _wait_gone(pid, started, 10.0)
    _update_job(runs_root, job_id, lambda _job: {"cancel_outcome": outcome})
    _wait_recorded(runs_root, job_id, timeout_s=10.0)
    return {"job_id": job_id, "outcome": outcome}


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


def _wait_recorded(runs_root: Path, job_id: str, timeout_s: float) -> None:
    """Wait for the worker to record the final state; record it here when no worker runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _read_job_file(runs_root, job_id).get("state") in rf.TERMINAL_STATES:
            return
        if not worker_running(runs_root):
            _settle_if_unwatched(runs_root, job_id)
            return
        time.sleep(0.05)


def _settle_if_unwatched(runs_root: Path, job_id: str) -> None:
    """Write the final state of a "running" job whose process ended with no worker as its parent."""
    def settle(job: dict) -> dict | None:
        if job.get("state") != rf.RUNNING:
            return None
        if _process_state(job.get("pid"), job.get("process_start_time")) == "alive":
            return None
        state, error = _outcome_without_returncode(job)
        error = job.get("error") or error
        _sync_run_status(job, state, error)
        return {"state": state, "ended_at": rf.now_iso(), "error": error}

    _update_job(runs_root, job_id, settle)


# ---------------------------------------------------------------- worker

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
        self.children: dict[str, subprocess.Popen] = {}

    def run(self) -> int:
        lock_path = jobs_dir(self.runs_root) / WORKER_LOCK
        lock = _try_lock(lock_path)
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
                        if not any(j.get("state") == rf.QUEUED for j in _raw_jobs(self.runs_root)):
                            break
                        lock = _try_lock(lock_path)
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

    def step(self) -> bool:
        """One scheduling pass; True while anything is running or waiting."""
        self._reap_children()
        jobs = _raw_jobs(self.runs_root)
        for job in jobs:
            if job.get("state") == rf.RUNNING and job.get("job_id") not in self.children:
                if _process_state(job.get("pid"), job.get("process_start_time")) != "alive":
                    _settle_if_unwatched(self.runs_root, job["job_id"])
        jobs = _raw_jobs(self.runs_root)
        used: dict[str, set[int]] = {"gpu": set(), "cpu": set()}
        for job in jobs:
            if job.get("state") == rf.RUNNING and job.get("resource") in used and job.get("slot") is not None:
                used[job["resource"]].add(int(job["slot"]))
        for job in jobs:
            if job.get("state") != rf.QUEUED:
                continue
            resource = job.get("resource")
            if resource not in RESOURCES:
                self._fail_unstartable(job, f"unknown resource {resource!r}")
                continue
            free = [s for s in range(self.slots[resource]) if s not in used[resource]]
            if free and self._start(job["job_id"], free[0]):
                used[resource].add(free[0])
        jobs = _raw_jobs(self.runs_root)
        return bool(self.children) or any(j.get("state") in rf.ACTIVE_STATES for j in jobs)

    def _start(self, job_id: str, slot: int) -> bool:
        if job_id in self.children:
            return False  # started, but a full disk kept job.json from saying so: never start it twice
        started = False

        def launch(job: dict) -> dict | None:
            nonlocal started
            if job.get("state") != rf.QUEUED:
                return None  # cancelled meanwhile
            module = job.get("module") or "engine"
            if not _MODULE.match(module):
                return _failed(job, f"module {module!r} refused")
            command = [sys.executable, "-m", module, *job["argv"]]
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            cuda = None
            if job.get("resource") == "gpu" and slot < len(self.devices):
                cuda = env["CUDA_VISIBLE_DEVICES"] = self.devices[slot]
            log_path = job_dir(self.runs_root, job_id) / JOB_LOG
            try:
                with open(log_path, "ab") as log:
                    log.write(f"[{rf.now_iso()}] $ {' '.join(command)}\n".encode())
                    log.flush()
                    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                            start_new_session=True)
            except OSError as exc:
                return _failed(job, f"could not start: {exc}")
            self.children[job_id] = proc
            started = True
            return {"state": rf.RUNNING, "pid": proc.pid, "pgid": proc.pid,
                    "process_start_time": rf.process_start_time(proc.pid), "started_at": rf.now_iso(),
                    "slot": slot, "cuda_visible_devices": cuda, "log": str(log_path)}

        job = _update_job(self.runs_root, job_id, launch)
        if started:
            _say(f"started job {job_id} (pid {job['pid']}, {job['resource']} slot {slot}): {job['argv']}")
        return started

    def _fail_unstartable(self, job: dict, error: str) -> None:
        _update_job(self.runs_root, job["job_id"],
                    lambda j: _failed(j, error) if j.get("state") == rf.QUEUED else None)

    def _reap_children(self) -> None:
        for job_id, proc in list(self.children.items()):
            returncode = proc.poll()
            if returncode is None:
                continue

            def finish(job: dict) -> dict:
                state, error = _outcome_from_returncode(job, returncode)
                _sync_run_status(job, state, error)
                return {"state": state, "returncode": returncode, "ended_at": rf.now_iso(), "error": error}

            try:
                job = _update_job(self.runs_root, job_id, finish)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                # Keep the child: its exit code is recorded on a later pass, once there is room.
                _say(f"job {job_id} ended (exit code {returncode}) but the disk is full; recording it later: {exc}")
                continue
            del self.children[job_id]
            _say(f"job {job_id} {job['state']} (exit code {returncode})")


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
    if worker_running(runs_root):
        return None
    command = [sys.executable, "-m", "engine", "worker", "--runs-dir", str(runs_root)]
    for flag, value in (("--gpu-slots", gpu_slots), ("--cpu-slots", cpu_slots),
                        ("--poll", poll_s), ("--idle-grace", idle_grace_s)):
        if value is not None:
            command += [flag, str(value)]
    with open(jobs_dir(runs_root) / WORKER_LOG, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                start_new_session=True)
    return proc.pid


def _say(message: str) -> None:
    print(f"[{rf.now_iso()}] {message}", flush=True)


# ---------------------------------------------------------------- sweeps

_NAME_TAGS = {"lora_r": "r", "lora_alpha": "a", "seed": "s", "learning_rate": "lr", "epochs": "ep",
              "lora_dropout": "do", "quantization": "q", "max_steps": "steps"}
_TARGET_TAGS = {"attention": "attn", "attention+mlp": "attn+mlp"}


def parse_list(text: str, item_type: type = int) -> list:
    """"42, 123, 456" -> [42, 123, 456]; item_type int, float or str. Junk raises ValueError."""
    if item_type not in (int, float, str):
        raise ValueError(f"item_type must be int, float or str (got {item_type!r})")
    items = [part.strip() for part in str(text).split(",")]
    if not any(items):
        raise ValueError("the list is empty: give values separated by commas, e.g. 42, 123, 456")
    values: list = []
    for position, item in enumerate(items, start=1):
        if not item:
            raise ValueError(f"item {position} of {text!r} is empty (two commas in a row?)")
        try:
            if item_type is int:
                number = float(item)
                if not number.is_integer():
                    raise ValueError
                value: Any = int(number)
            elif item_type is float:
                value = float(item)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
            else:
                value = item
        except ValueError:
            kind = {int: "a whole number", float: "a finite number"}.get(item_type, "a value")
            raise ValueError(f"item {position} of {text!r}: {item!r} is not {kind}") from None
        if value in values:
            raise ValueError(f"item {position} of {text!r}: {item!r} is listed twice")
        values.append(value)
    return values


def expand_sweep(base: dict, lists: dict[str, list]) -> list[dict]:
    """Cartesian product of `lists` over `base`: [{"run_name", "config"}], one per cell, in order.

    Names are deterministic, e.g. "attn-r16-a32-s42" (label or target preset, then rank, alpha,
    seed and any other swept field). When more than the seed varies, each cell's "label" names
    its configuration (e.g. "Attention-Only r8"), so seeds of one cell aggregate together. A base
    label that is just a preset's name (as TrainConfig.to_dict() fills it in) counts as unset, and
    the derived keys target_modules and effective_batch are dropped (train recomputes them).
    """
    from engine.config import PRESET_LABELS

    for key, values in lists.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep field {key!r} needs a non-empty list of values (got {values!r})")
    swept = list(lists)
    cells = []
    seen: dict[str, dict] = {}
    for combination in itertools.product(*(lists[k] for k in swept)):
        cell = dict(zip(swept, combination))
        config = {k: v for k, v in {**base, **cell}.items() if k not in ("target_modules", "effective_batch")}
        targets = config.get("targets", "attention")
        target_key = targets if isinstance(targets, str) else ",".join(targets)
        base_label = str(base.get("label") or "")
        if base_label in PRESET_LABELS.values():
            base_label = ""
            config.pop("label", None)
        parts = [base_label or _TARGET_TAGS.get(target_key, target_key)]
        if base_label and "targets" in swept:
            parts.append(_TARGET_TAGS.get(target_key, target_key))
        for key in ("lora_r", "lora_alpha", "seed"):
            if key in config:
                parts.append(f"{_NAME_TAGS[key]}{_format_value(config[key])}")
        for key in swept:
            if key not in ("lora_r", "lora_alpha", "seed", "targets"):
                parts.append(f"{_NAME_TAGS.get(key, key)}{_format_value(config[key])}")
        name = _safe_name("-".join(parts))
        if name in seen:
            raise ValueError(f"sweep cells {seen[name]} and {cell} would share the run name {name!r}")
        seen[name] = cell
        non_seed = [k for k in swept if k != "seed"]
        if non_seed:
            label = base_label or PRESET_LABELS.get(target_key, target_key)
            extra = [f"{_NAME_TAGS.get(k, k)}{_format_value(config[k])}" for k in non_seed
                     if not (k == "targets" and not base_label)]
            config["label"] = " ".join([label, *extra])
        cells.append({"run_name": name, "config": config})
    return cells


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def _safe_name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", raw)
    name = re.sub(r"-{2,}", "-", name).lstrip("._+-")[:128].rstrip("-") or "run"
    return rf.check_run_name(name)


def sweep_pending(runs_root: Path, names: Iterable[str]) -> list[str]:
    """The names whose run folder has not succeeded (missing, failed, ...): what a resume redoes."""
    pending = []
    for name in names:
        run_dir = rf.resolve_in_root(Path(runs_root), name)
        try:
            state = rf.read_status(run_dir).get("state")
        except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
            state = None
        if state != rf.SUCCEEDED:
            pending.append(name)
    return pending


def enqueue_sweep(runs_root: Path, cells: list[dict], sweep_id: str | None = None,
                  resource: str = "gpu") -> dict:
    """One `train` job per pending cell; returns {"sweep_id", "enqueued": {name: job_id}, "skipped": {...}}.

    The job runs `train --config <run>/config.json --run-dir <run>`: the prepared config.json
    (JSON is YAML) carries the cell's fields to the trainer.

    Succeeded cells and cells with an active job are skipped. A cell whose folder holds an earlier
    failed attempt keeps that attempt, renamed "<name>.attemptN", and is run again. Each cell is
    its own job, so a failing cell does not stop the others. Call `ensure_worker()` afterwards.
    """
    runs_root = Path(runs_root)
    sweep_id = sweep_id or f"sweep-{new_job_id()}"
    active_runs = {job.get("run_dir") for job in active_jobs(runs_root)}
    pending = set(sweep_pending(runs_root, [c["run_name"] for c in cells]))
    enqueued: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for cell in cells:
        name = cell["run_name"]
        run_dir = rf.resolve_in_root(runs_root, name)
        if name not in pending:
            skipped[name] = "already succeeded"
            continue
        if str(run_dir) in active_runs:
            skipped[name] = "already queued or running"
            continue
        if run_dir.exists():
            _move_aside(run_dir)
        argv = ["train", "--config", str(run_dir / rf.CONFIG), "--run-dir", str(run_dir)]
        enqueued[name] = enqueue(runs_root, argv, resource=resource, sweep_id=sweep_id,
                                 prepare_run=(run_dir, cell["config"]))
    return {"sweep_id": sweep_id, "enqueued": enqueued, "skipped": skipped}


def _move_aside(run_dir: Path) -> Path:
    for n in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.attempt{n}")
        if not target.exists():
            run_dir.rename(target)
            return target
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- CLI

def queue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "python -m engine queue [--runs-dir DIR] [--resource gpu|cpu] [--json] -- COMMAND ARGS..."
    parser.add_argument("--runs-dir", help="workspace (default: $QLORA_DASH_RUNS or ./runs)")
    parser.add_argument("--resource", choices=RESOURCES, default="gpu", help="slot kind the job needs")
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
        job_id = enqueue(root, argv, resource=args.resource, run_dir=args.run_dir)
    except JobError as exc:
        print(f"queue: {exc}", file=sys.stderr)
        return 2
    if not args.no_worker:
        ensure_worker(root)
    print(json.dumps(read_job(root, job_id), indent=2) if args.json else job_id)
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
        result = cancel(rf.runs_root(args.runs_dir), args.job_id, grace_s=args.grace)
    except JobError as exc:
        print(f"cancel: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else f"{result['job_id']}: {result['outcome']}")
    return 0


# ---------------------------------------------------------------- test helper job

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
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.queue", description="internal test jobs")
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
