"""The run-folder contract: the only API between the engine and the dashboard.

Every run (a training run, a base-model evaluation, imported predictions, a baseline detector)
is one folder under the workspace ("runs root"). This module owns the file names, the atomic
writers and the tolerant readers. It imports nothing heavy (no torch, no streamlit), so both
sides use it. The layout is documented in README.md ("Run folder contract") and each kind's file
set is pinned by its tests (test_train.py, test_scoring.py, test_importing.py, test_baselines.py, test_opro.py).

    <run>/config.json          resolved config; {"schema_version", "kind", ...}
    <run>/status.json          state machine, pid + process start time, host + pid namespace,
                               heartbeat, timestamps, error
    <run>/environment.json     package versions, device (training and evaluation runs)
    <run>/metrics.jsonl        one flushed line per optimizer step, plus one "kind": "validation"
                               line per epoch when there is validation data (training runs)
    <run>/summary.json         parameters, adapter size, runtime, data report (training runs)
    <run>/engine.log           everything the engine printed
    <run>/adapter/             standard PEFT adapter (adapter_config.json, adapter_model.safetensors)
    <run>/evaluations/<name>/predictions.jsonl   one record per clip
    <run>/evaluations/<name>/evaluation.json     what produced them + summary
    <run>/evaluations/<name>/progress.json       clips scored so far, only while the scoring runs
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1

CONFIG = "config.json"
STATUS = "status.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
VALIDATION_RECORD = "validation"  # metrics.jsonl: the "kind" of an epoch's validation line (step lines have no kind)
SUMMARY = "summary.json"
LOG = "engine.log"
ADAPTER_DIR = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EVALUATIONS_DIR = "evaluations"
PREDICTIONS = "predictions.jsonl"
EVALUATION = "evaluation.json"
EVALUATION_PROGRESS = "progress.json"  # in evaluations/<name>/ while it is scored; removed when evaluation.json is written
OPRO_HISTORY = "history.jsonl"  # opro runs: one line per scored prompt, appended as found
OPRO_RESULT = "opro.json"  # opro runs: the outcome, written last

# Run kinds.
KIND_TRAIN = "train"
KIND_EVAL = "eval"  # base model or external checkpoint, evaluated without training
KIND_IMPORTED = "imported"
KIND_BASELINE = "baseline"
KIND_OPRO = "opro"  # prompt optimisation of a frozen model (engine/tasks/opro/)
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

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # used with fullmatch: no "\n" after "$"


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
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in {".", ".."}:
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

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where /proc says (os.umask can only set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # set-and-restore: other threads creating files meanwhile would see 0o077
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str, private: bool = False) -> None:
    """Write via a temp file in the same folder and os.replace: readers never see half a file.

    The file gets the mode a plain open() would give (0666 less the umask, usually 0644), not
    mkstemp's 0600: run folders and reports are read by colleagues and cluster jobs. private:
    keep 0600 (a file holding a key).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if not private:
            os.fchmod(fd, 0o666 & ~current_umask())
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


def atomic_write_json(path: Path, obj: Any, private: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", private)


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
    """Every complete line; a partial last line (a writer mid-append) is ignored.

    A line that is not a JSON object, or a file that is not UTF-8 text, raises RunFolderError
    naming the file and the line.
    """
    out: list[dict] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{path}: not UTF-8 text (byte {exc.start}): not a JSON-lines file") from None
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # unterminated last line: being written
                break
            raise RunFolderError(f"{path}: line {i + 1} is not valid JSON") from None
        if not isinstance(record, dict):
            raise RunFolderError(f"{path}: line {i + 1} is a JSON {_json_type(record)}, not an object")
        out.append(record)
    return out


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold one object; RunFolderError names the file and what is wrong.

    FileNotFoundError passes through, so callers can tell a missing file from a broken one.
    """
    try:
        obj = read_json(path)
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{path}: not UTF-8 text (byte {exc.start}): not a JSON file") from None
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise RunFolderError(f"{path}: holds a JSON {_json_type(obj)}, not an object")
    return obj


def _json_type(obj: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(obj), type(obj).__name__)


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

HEARTBEAT_INTERVAL_S = 30.0  # how often a running run refreshes `heartbeat_at`
STALE_AFTER_INTERVALS = 3  # a process we cannot see is dead once its heartbeat is this many intervals old

# The process checks: "alive", "exited" (a zombie its parent has not reaped yet) or "gone".
ALIVE, EXITED, GONE = "alive", "exited", "gone"

# One status write at a time in this process: the heartbeat thread and the run's own writes
# both read-modify-write status.json.
_status_lock = threading.RLock()


def process_start_time(pid: int) -> float | None:
    """Start time of a live process, or None. Used with the pid to tell a reused pid apart."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def process_state(pid: int | None, start_time: float | None) -> str:
    """ALIVE, EXITED (a zombie: its parent is about to reap it) or GONE, for a local pid.

    A pid whose process started at another time than `start_time` is GONE (the pid was reused).
    """
    if not pid:
        return GONE
    import psutil

    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
        zombie = proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return GONE
    if start_time is not None and abs(started - float(start_time)) >= 1.0:
        return GONE
    return EXITED if zombie else ALIVE


def process_alive(pid: int | None, start_time: float | None) -> bool:
    """True while the local process `pid` that started at `start_time` runs (zombies are dead)."""
    return process_state(pid, start_time) == ALIVE


def hostname() -> str:
    return socket.gethostname()


def pid_namespace() -> str | None:
    """This process's pid namespace (e.g. "pid:[4026531836]"); None where /proc does not say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def is_local(status: dict) -> bool:
    """True when the status was written from this host and pid namespace, so its pid is ours to check.

    A status without host or namespace (written before they were recorded) counts as local.
    """
    host, namespace = status.get("host"), status.get("pid_namespace")
    if host and host != hostname():
        return False
    return not namespace or namespace == pid_namespace()


def liveness(status: dict, now: float | None = None, written_at: float | None = None) -> tuple[bool, str | None]:
    """The one liveness check of a run's recorded process: (alive, why it counts as dead).

    Same host and pid namespace: the pid and its start time decide. Elsewhere (a container,
    another host sharing the workspace) the pid means nothing here, so the heartbeat decides:
    alive while it is fresher than STALE_AFTER_INTERVALS heartbeat intervals. The heartbeat's
    age is the younger of `heartbeat_at` (the writer's clock) and `written_at`, status.json's
    modification time (the file system's clock), so one machine's clock running behind does not
    make a live run look dead.
    """
    if is_local(status):
        if process_alive(status.get("pid"), status.get("process_start_time")):
            return True, None
        return False, "the process died without a final state"
    interval = float(status.get("heartbeat_interval_s") or HEARTBEAT_INTERVAL_S)
    limit = STALE_AFTER_INTERVALS * interval
    where = f"host {status.get('host') or '?'}, pid namespace {status.get('pid_namespace') or '?'}"
    now = time.time() if now is None else now
    ages = [now - written_at] if written_at is not None else []
    try:
        ages.append(now - float(status.get("heartbeat_at")))
    except (TypeError, ValueError):
        if not ages:
            return False, f"the process ({where}) runs elsewhere and recorded no heartbeat"
    age = min(ages)
    if age < limit:
        return True, None
    return False, (f"no heartbeat for {age:.0f} s (more than {limit:.0f} s) from its process "
                   f"(pid {status.get('pid')} on {where}): presumed dead")


ELSEWHERE_DELETE_AFTER_S = 3600.0  # a run elsewhere read as crashed is deleted only after this long silent


def may_still_run_elsewhere(run_dir: Path, status: dict, now: float | None = None) -> str | None:
    """Why a run that reads "crashed" must not be deleted yet, or None when it surely ended.

    A run whose process lives elsewhere (another host or container) is judged by its heartbeat,
    and clocks or a paused process can make a live one look silent for a while: deletion waits
    until both the heartbeat and status.json's modification time are ELSEWHERE_DELETE_AFTER_S old.
    """
    if status.get("state") != CRASHED or status.get("recorded_state") not in ACTIVE_STATES or is_local(status):
        return None
    now = time.time() if now is None else now
    ages = []
    try:
        ages.append(now - float(status.get("heartbeat_at")))
    except (TypeError, ValueError):
        pass
    try:
        ages.append(now - (Path(run_dir) / STATUS).stat().st_mtime)
    except OSError:
        pass
    silent = min(ages) if ages else 0.0
    if silent >= ELSEWHERE_DELETE_AFTER_S:
        return None
    return (f"its process ran on {status.get('host') or '?'} ({status.get('pid_namespace') or '?'}) and was last heard "
            f"{max(silent, 0):.0f} s ago; a run elsewhere is deleted only after {ELSEWHERE_DELETE_AFTER_S:.0f} s of silence")


def write_status(run_dir: Path, state: str, **fields: Any) -> dict:
    """Merge `fields` into status.json and set `state`; returns the new status."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    return _rewrite_status(run_dir, lambda status: state, fields)


def update_status(run_dir: Path, **fields: Any) -> dict:
    """Merge `fields` into status.json, keeping its state (a heartbeat, progress)."""
    return _rewrite_status(run_dir, lambda status: status.get("state") or RUNNING, fields)


def _rewrite_status(run_dir: Path, new_state, fields: dict) -> dict:
    path = Path(run_dir) / STATUS
    with _status_lock:
        try:
            status = read_json(path)
        except (FileNotFoundError, json.JSONDecodeError):
            status = {"schema_version": SCHEMA_VERSION, "created_at": now_iso()}
        state = new_state(status)
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
    """Record this process as the one working on the run: pid, group, start time, where it lives
    (host and pid namespace) and a first heartbeat."""
    pid = os.getpid()
    return {"pid": pid, "pgid": os.getpgid(pid), "process_start_time": process_start_time(pid),
            "host": hostname(), "pid_namespace": pid_namespace(), "heartbeat_at": time.time(),
            "heartbeat_interval_s": HEARTBEAT_INTERVAL_S}


def read_status(run_dir: Path) -> dict:
    """status.json, with a run whose process is gone reported as crashed (not rewritten here).

    A "running" run whose process is not alive (see `liveness`) crashed; a "queued" run with no
    pid is waiting for the queue and stays queued.
    """
    path = Path(run_dir) / STATUS
    status = read_json(path)
    state = status.get("state")
    if state in ACTIVE_STATES and status.get("pid"):
        try:
            written_at = path.stat().st_mtime
        except OSError:
            written_at = None
        alive, why = liveness(status, written_at=written_at)
        if not alive:
            status = dict(status, state=CRASHED, recorded_state=state, error=status.get("error") or why)
    return status


def run_is_active(run_dir: Path) -> bool:
    """True while the run is queued or running (read_status: a dead process reads as crashed)."""
    try:
        return read_status(run_dir).get("state") in ACTIVE_STATES
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError, RunFolderError):
        return False


def read_progress(run_dir: Path) -> dict | None:
    """The `progress` of a run's status.json when it has steps to count, else None (also when the
    status is missing or being replaced)."""
    try:
        progress = read_json(Path(run_dir) / STATUS).get("progress")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    if not isinstance(progress, dict) or not progress.get("total_steps"):
        return None
    return progress


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


def _run_file_object(path: Path) -> dict:
    """A run folder's JSON file, which must hold an object (JSON errors pass through)."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise RunFolderError(f"{path.name} holds a JSON {_json_type(obj)}, not an object")
    return obj


def read_run(run_dir: Path) -> RunInfo:
    """Read one run folder; never raises for a broken folder (the reason goes in `error`)."""
    run_dir = Path(run_dir)
    info = RunInfo(run_id=run_dir.name, path=run_dir)
    reading = CONFIG  # the file the error message names
    try:
        info.config = _run_file_object(run_dir / CONFIG)
        info.kind = str(info.config.get("kind", "?"))
        reading = STATUS
        _run_file_object(run_dir / STATUS)  # read_status would fail on a non-object without naming the file
        info.status = read_status(run_dir)
        info.state = str(info.status.get("state", "?"))
        if (run_dir / SUMMARY).exists():
            reading = SUMMARY
            info.summary = _run_file_object(run_dir / SUMMARY)
        reading = EVALUATIONS_DIR
        info.evaluations = list_evaluations(run_dir)
    except FileNotFoundError as exc:
        info.error = f"missing {Path(exc.filename).name}"
    except json.JSONDecodeError as exc:
        info.error = f"corrupt JSON in {reading}: {exc}"
    except UnicodeDecodeError:
        info.error = f"{reading} is not UTF-8 text"
    except RunFolderError as exc:
        info.error = str(exc)
    except (OSError, AttributeError, TypeError, ValueError) as exc:
        info.error = f"{reading}: {exc}"
    return info


def iter_run_dirs(root: Path) -> Iterator[Path]:
    """Run folders of `root`, sorted; hidden folders and links that lead outside `root` are left out.

    A link to a folder elsewhere is not a run of this workspace: listing it would let every
    reader (and the disk walk) follow it out.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if child.name.startswith((".", "_")):
            continue
        if child.is_symlink() and not is_inside(child, root):
            continue
        if child.is_dir():
            yield child


def check_workspace(root: Path) -> Path:
    """`root` when it can be a workspace; RunFolderError saying why not.

    A workspace is a folder that does not exist yet, one without sub-folders, or one holding a
    run folder (config.json, status.json or engine.log inside) or the job queue (.jobs). Anything
    else, the filesystem root first of all, would be walked as if each sub-folder were a broken run.
    """
    root = Path(root).expanduser()
    resolved = root.resolve()
    if resolved == Path(resolved.anchor):
        raise RunFolderError(f"{root} is the filesystem root, not a workspace: pick the folder that holds "
                             "the run folders (default: ./runs or $QLORA_DASH_RUNS)")
    if not resolved.exists():
        return root
    if not resolved.is_dir():
        raise RunFolderError(f"{root} is a file, not a workspace folder")
    seen = 0
    try:
        with os.scandir(resolved) as entries:
            for entry in entries:
                if entry.name == ".jobs":
                    return root
                if entry.name.startswith((".", "_")) or not entry.is_dir(follow_symlinks=False):
                    continue  # loose files are never listed as runs, so they do no harm
                seen += 1
                if any(os.path.exists(os.path.join(entry.path, name)) for name in (CONFIG, STATUS, LOG)):
                    return root
    except OSError as exc:
        raise RunFolderError(f"{root}: cannot list the folder ({exc.strerror})") from None
    if seen:
        raise RunFolderError(f"{root} does not look like a workspace: none of its {seen} folders is a run "
                             f"folder (with {CONFIG} or {STATUS}) and it has no .jobs queue; pick the folder "
                             "that holds the run folders")
    return root


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
    """The optimizer-step lines of metrics.jsonl (the lines without a "kind")."""
    return [m for m in read_jsonl(Path(run_dir) / METRICS) if "kind" not in m]


def read_validation_metrics(run_dir: Path) -> list[dict]:
    """The validation lines of metrics.jsonl: {kind, step, epoch, val_loss, val_accuracy,
    val_balanced_accuracy, val_clips, elapsed_s}, one per epoch of a run trained with val_data."""
    return [m for m in read_jsonl(Path(run_dir) / METRICS) if m.get("kind") == VALIDATION_RECORD]


def read_evaluation_progress(run_dir: Path, name: str) -> dict | None:
    """{clips_scored, total_clips, eta_s, clips_per_s} of evaluation `name` while it is being scored,
    else None (no scoring under way, or the file is being replaced)."""
    try:
        progress = read_json(evaluation_dir(run_dir, name) / EVALUATION_PROGRESS)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RunFolderError):
        return None
    if not isinstance(progress, dict) or not isinstance(progress.get("total_clips"), int):
        return None
    return progress


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
