"""The executor seam: the queue decides what runs and when; an executor decides where and how.

An executor kind is one module that calls `register_executor(name, factory)` when imported;
`factory(runs_root)` returns an object with the four methods of `Executor`. The kind a worker
starts new jobs with comes from the workspace's `.jobs/settings.json` ({"executor": "local"}),
"local" when there is none. A job keeps the kind that started it in its handle, so a job is
always polled and cancelled by the kind that owns it. The contract is in docs/JOBS.md.

No torch and no streamlit here.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Callable, Protocol

from engine.jobs import store
from engine.runs import folder as rf

DEFAULT_EXECUTOR = "local"


class Executor(Protocol):
    """Where and how a job's process runs. Every method takes the job as job.json records it."""

    name: str
    # Optional class attributes: `queues_itself = True` (a scheduler queues the jobs: the worker
    # hands over every queued job at once), `runs_groups = True` (a shared-base group's queued jobs
    # may run in one process; kinds without it run each job of a group alone).

    def start(self, job: dict, env: dict[str, str]) -> dict:
        """Launch `python -m <module> <argv...>` with `env` added to the environment, output to
        `log_path(job)`; return the handle: JSON, with "executor" = name and whatever poll and
        cancel need later (this host's pid, a Slurm job id ...). Raise OSError when it cannot start."""

    def poll(self, job: dict) -> dict | None:
        """None while the job runs, or when this executor cannot tell (never guess "crashed").
        Once it has ended: {"returncode": int | None} (None: ended, code unknown), optionally
        with "state" (a terminal state the executor knows, e.g. a scheduler's timeout) and "error"."""

    def cancel(self, job: dict, grace_s: float) -> str:
        """Stop a running job: ask it to stop, force after `grace_s`; return once it has stopped:
        "graceful", "forced", or "already finished" when it had ended before."""

    def log_path(self, job: dict) -> Path:
        """The file holding the job's stdout and stderr, readable from this machine."""


_FACTORIES: dict[str, Callable[[Path], Executor]] = {}


def register_executor(name: str, factory: Callable[[Path], Executor]) -> None:
    """Make executor kind `name` available; `factory(runs_root)` builds one."""
    _FACTORIES[name] = factory


def available(name: str) -> bool:
    """Whether kind `name` can be used here; a kind not yet imported is looked up as engine.jobs.<name>."""
    if name not in _FACTORIES and name.isidentifier():
        try:
            importlib.import_module(f"engine.jobs.{name}")
        except ImportError:
            return False
    return name in _FACTORIES


def executor_named(name: str, runs_root: Path) -> Executor:
    if not available(name):
        raise store.JobError(f"no executor {name!r} (known: {', '.join(sorted(_FACTORIES)) or 'none'})")
    return _FACTORIES[name](Path(runs_root))


def workspace_executor_name(runs_root: Path) -> str:
    """The kind new jobs of this workspace start with: `.jobs/settings.json` "executor", else local."""
    path = store.jobs_dir(runs_root) / store.SETTINGS_FILE
    try:
        settings = rf.read_json(path)
    except FileNotFoundError:
        return DEFAULT_EXECUTOR
    except (OSError, ValueError) as exc:
        raise store.JobError(f"{path}: unreadable ({exc})") from None
    name = settings.get("executor", DEFAULT_EXECUTOR) if isinstance(settings, dict) else None
    if not isinstance(name, str) or not available(name):
        raise store.JobError(f"{path}: executor {name!r} is not available")
    return name


MAX_JOBS_PER_GPU = 16
# Set in a job's environment when it shares its GPU: the job then keeps to 1/N of the GPU's
# memory (engine.models.qwen2_audio.runtime.apply_gpu_share), so its automatic choices (micro-batch,
# base cache) leave room for the others.
GPU_SHARE_ENV = "QLORA_GPU_SHARE"


def jobs_per_gpu(runs_root: Path) -> int:
    """How many GPU jobs of this workspace share one GPU on this machine: `.jobs/settings.json`
    "jobs_per_gpu", else 1. Several runs of a sweep side by side use a GPU that one run leaves
    mostly idle (each training step is bound by the host, not the GPU)."""
    path = store.jobs_dir(runs_root) / store.SETTINGS_FILE
    try:
        settings = rf.read_json(path)
    except FileNotFoundError:
        return 1
    except (OSError, ValueError) as exc:
        raise store.JobError(f"{path}: unreadable ({exc})") from None
    value = settings.get("jobs_per_gpu", 1) if isinstance(settings, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOBS_PER_GPU:
        raise store.JobError(f"{path}: jobs_per_gpu must be a whole number from 1 to {MAX_JOBS_PER_GPU} (got {value!r})")
    return value


def write_jobs_per_gpu(runs_root: Path, value: int) -> Path:
    """Save "jobs_per_gpu" in the workspace's settings (other keys kept); new jobs use it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOBS_PER_GPU:
        raise store.JobError(f"jobs per GPU must be a whole number from 1 to {MAX_JOBS_PER_GPU} (got {value!r})")
    path = store.jobs_dir(runs_root) / store.SETTINGS_FILE
    try:
        document = rf.read_json(path)
        document = document if isinstance(document, dict) else {}
    except (OSError, ValueError):
        document = {}
    document["jobs_per_gpu"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    rf.atomic_write_json(path, document)
    return path


def job_executor_name(job: dict) -> str:
    """The kind that owns `job`: its handle's, its recorded one, else local (job files written
    before executors existed describe a local process)."""
    handle = job.get("handle")
    if isinstance(handle, dict) and isinstance(handle.get("executor"), str):
        return handle["executor"]
    return job.get("executor") or DEFAULT_EXECUTOR


def executor_for(job: dict, runs_root: Path) -> Executor | None:
    """An executor of the kind that owns `job`, or None when that kind is not available here."""
    name = job_executor_name(job)
    return executor_named(name, runs_root) if available(name) else None


def settings_text(runs_root: Path) -> str:
    """The settings file's content for messages ("{}" when there is none)."""
    path = store.jobs_dir(runs_root) / store.SETTINGS_FILE
    try:
        return json.dumps(rf.read_json(path))
    except (OSError, ValueError):
        return "{}"
