"""The run-folder contract: the only API between the engine and the dashboard.

Every run (a training run, a base-model evaluation, imported predictions, a baseline detector)
is one folder under the workspace ("runs root"). This module owns the file names, the atomic
writers and the tolerant readers. It imports nothing heavy (no torch, no streamlit), so both
sides use it. The layout is documented in README.md ("Run folder contract") and pinned by
tests/test_run_contract.py.

    <run>/config.json          resolved config; {"schema_version", "kind", ...}
    <run>/status.json          state machine, pid + process start time, timestamps, error
    <run>/environment.json     package versions, device (training and evaluation runs)
    <run>/metrics.jsonl        one flushed line per optimizer step (training runs)
    <run>/summary.json         parameters, adapter size, runtime, data report (training runs)
    <run>/engine.log           everything the engine printed
    <run>/adapter/             standard PEFT adapter (adapter_config.json, adapter_model.safetensors)
    <run>/evaluations/<name>/predictions.jsonl   one record per clip
    <run>/evaluations/<name>/evaluation.json     what produced them + summary
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1

CONFIG = "config.json"
STATUS = "status.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOG = "engine.log"
ADAPTER_DIR = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EVALUATIONS_DIR = "evaluations"
PREDICTIONS = "predictions.jsonl"
EVALUATION = "evaluation.json"
OPRO_HISTORY = "history.jsonl"  # opro runs: one line per scored prompt, appended as found
OPRO_RESULT = "opro.json"  # opro runs: the outcome, written last

# Run kinds.
KIND_TRAIN = "train"
KIND_EVAL = "eval"  # base model or external checkpoint, evaluated without training
KIND_IMPORTED = "imported"
KIND_BASELINE = "baseline"
KIND_OPRO = "opro"  # prompt optimisation of a frozen model (engine/tasks/opro.py)
KINDS = (KIND_TRAIN, KIND_EVAL, KIND_IMPORTED, KIND_BASELINE, KIND_OPRO)

# Status states.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, CRASHED = (
    "queued", "running", "succeeded", "failed", "cancelled", "crashed")
TIMEOUT = "timeout"  # stopped at a scheduler's time limit, adapter saved (engine/jobs/slurm.py)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, CRASHED, TIMEOUT)
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, CRASHED, TIMEOUT})
ACTIVE_STATES = frozenset({QUEUED, RUNNING})

DEFAULT_RUNS_ROOT = Path(__file__).resolve().parents[2] / "runs"
RUNS_ROOT_ENV = "QLORA_DASH_RUNS"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class RunFolderError(Exception):
    """A run folder or a name for one is invalid; the message says what and where."""


def runs_root(explicit: str | os.PathLike | None = None) -> Path:
    """The workspace: an explicit path, else $QLORA_DASH_RUNS, else ./runs beside the code."""
    chosen = explicit or os.environ.get(RUNS_ROOT_ENV) or DEFAULT_RUNS_ROOT
    return Path(chosen).expanduser().resolve()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------- names and paths

def check_run_name(name: str) -> str:
    """A run name is one path component of safe characters: it can never leave the workspace."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise RunFolderError(
            f"invalid run name {name!r}: use 1-128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit (no '/', no '..')")
    return name


def resolve_in_root(root: Path, run_id: str) -> Path:
    """The folder of run `run_id` inside `root`; refuses anything that would escape it."""
    check_run_name(run_id)
    root = Path(root).resolve()
    path = (root / run_id).resolve()
    if path.parent != root:
        raise RunFolderError(f"run id {run_id!r} resolves outside the workspace {root}")
    return path


def is_inside(path: Path, root: Path) -> bool:
    """True when `path` (resolved, links followed) is strictly inside `root`."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path != root and root in path.parents


def unique_run_dir(root: Path, name: str) -> Path:
    """A new, not yet existing run folder named `name`, or `name-2`, `name-3`, ..."""
    check_run_name(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = root / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = root / f"{name}-{n}"


# ---------------------------------------------------------------- atomic writers, tolerant readers

def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one line and flush it, so a reader (or a crash) sees every finished step."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=_json_default) + "\n")
        fh.flush()


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line; a partial last line (a writer mid-append) is ignored."""
    out: list[dict] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # unterminated last line: being written
                break
            raise RunFolderError(f"{path}: line {i + 1} is not valid JSON")
    return out


# ---------------------------------------------------------------- locks

def try_flock(path: Path, mode: int = 0o600) -> int | None:
    """An fd holding an exclusive flock on `path`, or None while another process holds it.

    The lock lives as long as the fd (and so the process): a crashed holder frees it.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ---------------------------------------------------------------- status

def process_start_time(pid: int) -> float | None:
    """Start time of a live process, or None. Used with the pid to tell a reused pid apart."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def process_alive(pid: int | None, start_time: float | None) -> bool:
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return start_time is None or abs(started - float(start_time)) < 1.0


def write_status(run_dir: Path, state: str, **fields: Any) -> dict:
    """Merge `fields` into status.json and set `state`; returns the new status."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    path = Path(run_dir) / STATUS
    try:
        status = read_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        status = {"schema_version": SCHEMA_VERSION, "created_at": now_iso()}
    status.update(fields)
    status["state"] = state
    status["updated_at"] = now_iso()
    if state == RUNNING and not status.get("started_at"):
        status["started_at"] = status["updated_at"]
    if state in TERMINAL_STATES and not status.get("ended_at"):
        status["ended_at"] = status["updated_at"]
    atomic_write_json(path, status)
    return status


def mark_process(run_dir: Path) -> dict:
    """Record this process as the one working on the run (pid, group, start time)."""
    pid = os.getpid()
    return {"pid": pid, "pgid": os.getpgid(pid), "process_start_time": process_start_time(pid)}


def read_status(run_dir: Path) -> dict:
    """status.json, with a run whose process is gone reported as crashed (not rewritten here).

    A "running" run without a live process of the recorded pid *and* start time crashed; a
    "queued" run with no pid is waiting for the queue and stays queued.
    """
    status = read_json(Path(run_dir) / STATUS)
    state = status.get("state")
    if state in ACTIVE_STATES and status.get("pid"):
        if not process_alive(status.get("pid"), status.get("process_start_time")):
            status = dict(status, state=CRASHED, recorded_state=state,
                          error=status.get("error") or "the process died without a final state")
    return status


# ---------------------------------------------------------------- reading runs

@dataclass
class RunInfo:
    """What the dashboard needs to list a run; `error` set when the folder is unreadable."""

    run_id: str
    path: Path
    kind: str = "?"
    state: str = "?"
    config: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    evaluations: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def readable(self) -> bool:
        return self.error is None

    @property
    def config_label(self) -> str:
        return str(self.config.get("label") or self.config.get("config_label") or self.run_id)

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return int(seed) if seed is not None else None


def read_run(run_dir: Path) -> RunInfo:
    """Read one run folder; never raises for a broken folder (the reason goes in `error`)."""
    run_dir = Path(run_dir)
    info = RunInfo(run_id=run_dir.name, path=run_dir)
    try:
        info.config = read_json(run_dir / CONFIG)
        info.kind = info.config.get("kind", "?")
        info.status = read_status(run_dir)
        info.state = info.status.get("state", "?")
        if (run_dir / SUMMARY).exists():
            info.summary = read_json(run_dir / SUMMARY)
        info.evaluations = list_evaluations(run_dir)
    except FileNotFoundError as exc:
        info.error = f"missing {Path(exc.filename).name}"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        info.error = f"corrupt JSON: {exc}"
    except (OSError, RunFolderError, AttributeError, TypeError) as exc:
        info.error = str(exc)
    return info


def iter_run_dirs(root: Path) -> Iterator[Path]:
    root = Path(root)
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith((".", "_")):
            yield child


def list_runs(root: Path) -> list[RunInfo]:
    return [read_run(d) for d in iter_run_dirs(root)]


def list_evaluations(run_dir: Path) -> list[str]:
    evals = Path(run_dir) / EVALUATIONS_DIR
    if not evals.is_dir():
        return []
    return sorted(d.name for d in evals.iterdir() if (d / EVALUATION).exists())


def evaluation_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / EVALUATIONS_DIR / check_run_name(name)


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / METRICS)


def tail_text(path: Path, max_bytes: int = 8000) -> str:
    """The end of a (log) file, without reading all of it."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
