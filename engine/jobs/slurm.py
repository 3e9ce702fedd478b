"""The Slurm executor: a job becomes an `sbatch` submission, the jobs of one sweep a job array.

Plain `sbatch`/`squeue`/`scontrol`/`scancel` through subprocess (argument lists, never a shell)
rather than submitit: submitit learns a job's state from `sacct`, which needs slurmdbd and a
database on the cluster (without them its state stays UNKNOWN and a cancelled job never counts
as done), and it pickles a Python callable, while our jobs are already command lines
(`python -m engine ...`). `squeue`/`scontrol` answer from the controller without accounting;
`sacct` is only a fallback for jobs the controller has forgotten.

Who writes what (the workspace is shared by the login node and the compute nodes over NFS):
- the worker on the login node writes job.json (under the queue flock, which only ever has
  processes of that one host competing for it) and, at submission, `slurm-handle.json` in each
  job's folder;
- on the compute node, `python -m engine.jobs.slurm run JOB_FOLDER` (the batch script's one
  command) writes `slurm-start.json` and `slurm-end.json` in the job folder, the job's output.log,
  and the run folder (through the engine).
Every file has one writer and is replaced atomically (temporary file in the same folder, fsync,
rename: atomic on NFS, as the server renames), so no lock is needed across hosts.

Settings live in `.jobs/settings.json`: {"executor": "slurm", "slurm": {...SlurmSettings}}.

No torch and no streamlit here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.jobs import store
from engine.jobs.executor import DEFAULT_EXECUTOR, register_executor
from engine.runs import folder as rf

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "slurm"
HANDLE_FILE = "slurm-handle.json"  # written at submission: which Slurm job (array element) runs this job
START_FILE = "slurm-start.json"  # written by the batch job when it starts: job id, node
END_FILE = "slurm-end.json"  # written by the batch job when it ends: exit code, the stop signal it got
BATCH_DIR = ".slurm"  # under .jobs/: batch scripts and Slurm's own output (setup-line errors land there)
TIMEOUT_NOTICE_SIGNAL = signal.SIGUSR1
COMMAND_TIMEOUT_S = 30.0
POLL_REFRESH_S = 0.4  # below the worker's poll interval: every pass sees fresh states

# Slurm job states (squeue %T / scontrol JobState / sacct State) that mean "not ended yet".
ACTIVE_SLURM_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"})

_TIME_LIMIT = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^(\d+-)?\d+:\d{1,2}:\d{1,2}$|^UNLIMITED$|^INFINITE$")
_MEMORY = re.compile(r"^\d+[KMGT]?$")
_NAME = re.compile(r"^[A-Za-z0-9._-]*$")


class SlurmError(store.JobError):
    """A Slurm command failed or a Slurm setting is invalid; the message says which and why."""


@dataclass
class SlurmSettings:
    """How jobs of a workspace are submitted to Slurm; kept in `.jobs/settings.json` under "slurm"."""

    partition: str = ""
    """`--partition`; empty: the cluster's default partition."""
    account: str = ""
    """`--account`; empty: your default account."""
    qos: str = ""
    """`--qos`; empty: the default QoS."""
    gpus_per_job: int = 1
    """GPUs of one node per job (`--gres=gpu:N`); a job's own `--num-gpus N` asks for N instead."""
    gpu_type: str = ""
    """GPU type in the gres request (`gpu:TYPE:N`), e.g. "a100"; empty: any type."""
    cpus_per_job: int = 4
    """`--cpus-per-task`."""
    mem: str = "32G"
    """`--mem` per job (e.g. 32G, 64000M)."""
    time_limit: str = "04:00:00"
    """`--time` ([D-]HH:MM:SS or minutes)."""
    timeout_notice_s: int = 300
    """Seconds before the time limit at which the job is told to stop: it saves its adapter and ends "timeout"."""
    array_parallelism: int = 4
    """Jobs of one sweep running at once (`--array=0-N%K`)."""
    extra_sbatch: list[str] = field(default_factory=list)
    """Further `#SBATCH` options, one per line, e.g. "--constraint=a100"."""
    setup: str = ""
    """Shell line run before the job, e.g. "module load cuda; source venv/bin/activate"."""
    python: str = ""
    """Python on the compute nodes; empty: this interpreter's path (the same venv on the shared disk)."""

    def __post_init__(self) -> None:
        for name in ("partition", "account", "qos", "gpu_type"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME.match(value):
                raise SlurmError(f"slurm setting {name}: {value!r} is not a Slurm name (letters, digits, . _ -)")
        for name, low in (("gpus_per_job", 0), ("cpus_per_job", 1), ("array_parallelism", 1),
                          ("timeout_notice_s", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SlurmError(f"slurm setting {name}: {value!r} is not a whole number >= {low}")
        if not isinstance(self.mem, str) or not _MEMORY.match(self.mem):
            raise SlurmError(f"slurm setting mem: {self.mem!r} is not a size like 32G or 64000M")
        if not isinstance(self.time_limit, str) or not _TIME_LIMIT.match(self.time_limit):
            raise SlurmError(f"slurm setting time_limit: {self.time_limit!r} is not [D-]HH:MM:SS or minutes")
        limit_s = time_limit_seconds(self.time_limit)
        if limit_s is not None and self.timeout_notice_s >= limit_s:
            raise SlurmError(f"slurm setting timeout_notice_s: {self.timeout_notice_s} s of notice is not "
                             f"shorter than the time limit {self.time_limit} ({limit_s} s)")
        if isinstance(self.extra_sbatch, str):
            self.extra_sbatch = [line for line in self.extra_sbatch.splitlines()]
        lines = []
        for line in self.extra_sbatch:
            if not isinstance(line, str):
                raise SlurmError(f"slurm setting extra_sbatch: {line!r} is not text")
            line = line.strip()
            if line.startswith("#SBATCH"):
                line = line[len("#SBATCH"):].strip()
            if not line:
                continue
            if not line.startswith("-") or "\n" in line:
                raise SlurmError(f"slurm setting extra_sbatch: {line!r} is not an sbatch option (starts with -)")
            lines.append(line)
        self.extra_sbatch = lines
        for name in ("setup", "python"):
            value = getattr(self, name)
            if not isinstance(value, str) or "\n" in value:
                raise SlurmError(f"slurm setting {name}: must be one line of text")

    @classmethod
    def from_dict(cls, values: dict) -> "SlurmSettings":
        if not isinstance(values, dict):
            raise SlurmError(f"slurm settings must be an object (got {type(values).__name__})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SlurmError(f"unknown slurm setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def gres(self, gpus: int) -> str | None:
        if gpus <= 0:
            return None
        return f"gpu:{self.gpu_type}:{gpus}" if self.gpu_type else f"gpu:{gpus}"

    def sbatch_options(self, gpus: int) -> list[str]:
        """The `#SBATCH` options of one job asking for `gpus` GPUs (no array, output or name)."""
        options = []
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--qos", self.qos)):
            if value:
                options.append(f"{flag}={value}")
        options += [f"--cpus-per-task={self.cpus_per_job}", f"--mem={self.mem}", f"--time={self.time_limit}",
                    "--nodes=1", "--ntasks=1"]
        if self.gres(gpus):
            options.append(f"--gres={self.gres(gpus)}")
        if self.timeout_notice_s:
            options.append(f"--signal=B:{TIMEOUT_NOTICE_SIGNAL.name[3:]}@{self.timeout_notice_s}")
        return options + list(self.extra_sbatch)


def time_limit_seconds(limit: str) -> int | None:
    """Seconds in a Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]); None when unlimited."""
    if limit in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    elif len(parts) == 1:  # minutes
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:  # MM:SS
        hours, minutes, seconds = 0, *parts
    else:
        hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


# ---------------------------------------------------------------- the workspace's settings file

def settings_path(runs_root: Path) -> Path:
    return store.jobs_dir(runs_root) / store.SETTINGS_FILE


def read_workspace_settings(runs_root: Path) -> tuple[str, SlurmSettings]:
    """(executor kind for new jobs, Slurm settings) of a workspace; defaults when there is no file."""
    path = settings_path(runs_root)
    try:
        document = rf.read_json(path)
    except FileNotFoundError:
        return DEFAULT_EXECUTOR, SlurmSettings()
    except (OSError, ValueError) as exc:
        raise SlurmError(f"{path}: unreadable ({exc})") from None
    if not isinstance(document, dict):
        raise SlurmError(f"{path}: not a JSON object")
    try:
        return str(document.get("executor") or DEFAULT_EXECUTOR), SlurmSettings.from_dict(document.get(NAME) or {})
    except SlurmError as exc:
        raise SlurmError(f"{path}: {exc}") from None


def write_workspace_settings(runs_root: Path, executor: str, settings: SlurmSettings) -> Path:
    """Validate and save the workspace's executor kind and Slurm settings (other keys kept)."""
    if executor not in (DEFAULT_EXECUTOR, NAME):
        raise SlurmError(f"executor must be {DEFAULT_EXECUTOR!r} or {NAME!r} (got {executor!r})")
    settings = SlurmSettings.from_dict(settings.to_dict())  # validates
    path = settings_path(runs_root)
    try:
        document = rf.read_json(path)
        document = document if isinstance(document, dict) else {}
    except (OSError, ValueError):
        document = {}
    document.update(executor=executor, **{NAME: settings.to_dict()})
    rf.atomic_write_json(path, document)
    return path


# ---------------------------------------------------------------- talking to Slurm

def _slurm(command: list[str], timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a Slurm client command; OSError when it is not installed, the result otherwise."""
    if shutil.which(command[0]) is None:
        raise OSError(f"{command[0]} not found: install the Slurm client tools (and set SLURM_CONF if needed)")
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise OSError(f"{' '.join(command)} did not answer within {timeout_s:.0f} s") from None


def cluster_reachable() -> tuple[bool, str]:
    """(whether the Slurm controller answers, what `sinfo` said)."""
    try:
        result = _slurm(["sinfo", "-h", "-o", "%P %a %D %T %G"], timeout_s=10)
    except OSError as exc:
        return False, str(exc)
    text = (result.stdout or result.stderr).strip()
    return result.returncode == 0, text


def _array_range_contains(listed: str, slurm_job_id: str) -> bool:
    """Whether squeue's summary line of pending array elements, e.g. "12_[3-7,9%2]", holds "12_5"."""
    base, _, index = slurm_job_id.partition("_")
    match = re.fullmatch(rf"{re.escape(base)}_\[([0-9,\-]+)(%\d+)?\]", listed)
    if not match or not index.isdigit():
        return False
    for part in match.group(1).split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and int(low) <= int(index) <= int(high or low):
            return True
    return False


def query_many(slurm_job_ids: list[str]) -> dict[str, dict | None]:
    """`query` for several jobs with one squeue call (the worker polls every job every half
    second; one call per job would load the controller). Ids squeue does not list are asked
    one by one."""
    if not slurm_job_ids:
        return {}
    try:
        result = _slurm(["squeue", "-h", "--states=all", "-u", str(os.getuid()), "-o", "%i|%T|%r|%N"])
    except OSError:
        return dict.fromkeys(slurm_job_ids)
    if result.returncode != 0:
        return dict.fromkeys(slurm_job_ids)
    rows = [line.split("|") for line in result.stdout.splitlines() if line.count("|") == 3]
    answers: dict[str, dict | None] = {}
    for slurm_id in slurm_job_ids:
        row = next((r for r in rows if r[0] == slurm_id), None) or next(
            (r for r in rows if _array_range_contains(r[0], slurm_id)), None)
        if row is None or row[1].split()[0] not in ACTIVE_SLURM_STATES:
            answers[slurm_id] = query(slurm_id)  # ended (needs its exit code) or not listed
        else:
            answers[slurm_id] = {"state": row[1].split()[0], "node": row[3], "exit_code": None,
                                 "reason": "" if row[2] in ("None", "(null)") else row[2]}
    return answers


def query(slurm_job_id: str) -> dict | None:
    """What the controller knows of one job (or array element): {state, reason, node, exit_code},
    {} when it does not know the id (ended long ago), None when it cannot be asked."""
    try:
        result = _slurm(["squeue", "-h", "--states=all", "-j", slurm_job_id, "-o", "%i|%T|%r|%N"])
    except OSError:
        return None
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return _from_accounting(slurm_job_id)
        return None
    rows = [line.split("|") for line in result.stdout.splitlines() if line.count("|") == 3]
    # A pending array element is listed inside its array's summary line, e.g. "12_[3-7%2]".
    row = next((r for r in rows if r[0] == slurm_job_id), rows[0] if rows else None)
    if row is None:
        return _from_accounting(slurm_job_id)
    info = {"state": row[1].split()[0], "reason": "" if row[2] in ("None", "(null)") else row[2],
            "node": row[3], "exit_code": None}
    if info["state"] not in ACTIVE_SLURM_STATES:
        info["exit_code"] = _exit_code(slurm_job_id)
    return info


def _exit_code(slurm_job_id: str) -> int | None:
    try:
        result = _slurm(["scontrol", "show", "job", "-o", slurm_job_id])
    except OSError:
        return None
    match = re.search(r"\bExitCode=(\d+):(\d+)", result.stdout)
    if not match:
        return None
    code, sig = int(match.group(1)), int(match.group(2))
    return -sig if sig else code


def _from_accounting(slurm_job_id: str) -> dict:
    """sacct's record of a job the controller has forgotten; {} without accounting."""
    try:
        result = _slurm(["sacct", "-n", "-P", "-X", "-j", slurm_job_id, "-o", "State,ExitCode,NodeList,Reason"])
    except OSError:
        return {}
    line = next((l for l in result.stdout.splitlines() if l.strip()), "") if result.returncode == 0 else ""
    parts = line.split("|")
    if len(parts) < 3:
        return {}
    code, _, sig = parts[1].partition(":")
    exit_code = -int(sig) if sig.isdigit() and int(sig) else (int(code) if code.isdigit() else None)
    return {"state": parts[0].split()[0], "reason": parts[3] if len(parts) > 3 else "", "node": parts[2],
            "exit_code": exit_code}


def queue_position(slurm_job_id: str) -> int | None:
    """1 + the number of pending jobs ahead of this one in priority order (all partitions), or None."""
    try:
        result = _slurm(["squeue", "-h", "--states=PENDING", "--sort=-p,i", "-o", "%i"])
    except OSError:
        return None
    ids = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    base = slurm_job_id.split("_")[0]
    for index, listed in enumerate(ids):
        if listed == slurm_job_id or listed.startswith(f"{base}_["):
            return index + 1
    return None


# ---------------------------------------------------------------- the executor

def _handle_of(job: dict) -> dict:
    handle = job.get("handle")
    if not isinstance(handle, dict) or not isinstance(handle.get("slurm_job_id"), str):
        raise SlurmError(f"job {job.get('job_id')} has no Slurm job id in its handle")
    return handle


def _read_optional(path: Path) -> dict:
    try:
        value = rf.read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class SlurmExecutor:
    """Jobs as Slurm batch jobs. Every process (the worker, a page) sees the same state: it asks
    the controller and reads the files the batch job wrote; nothing is kept in memory."""

    name = NAME
    # Slurm queues jobs itself: the worker hands over every queued job at once instead of
    # holding them back for free local slots.
    queues_itself = True

    def __init__(self, runs_root: Path):
        self.runs_root = Path(runs_root)
        self._answers: dict[str, dict | None] = {}  # one squeue listing's answers, reused briefly
        self._answered_at = 0.0

    def log_path(self, job: dict) -> Path:
        return Path(job["log"]) if job.get("log") else store.job_dir(self.runs_root, job["job_id"]) / store.JOB_LOG

    def settings(self) -> SlurmSettings:
        return read_workspace_settings(self.runs_root)[1]

    def start(self, job: dict, env: dict[str, str]) -> dict:
        """Submit `job` (the local GPU slot in `env` is ignored: Slurm picks the GPUs). A job of a
        sweep is submitted together with the sweep's other queued jobs as one array; the later
        ones then find their element already submitted."""
        folder = store.job_dir(self.runs_root, job["job_id"])
        submitted = _read_optional(folder / HANDLE_FILE)
        if submitted.get("slurm_job_id"):
            return submitted
        try:
            settings = self.settings()
        except SlurmError as exc:
            raise OSError(str(exc)) from None
        group = [job]
        if job.get("sweep_id"):
            group = [other for other in store.raw_jobs(self.runs_root)
                     if other.get("sweep_id") == job["sweep_id"] and other.get("state") == rf.QUEUED
                     and not (store.job_dir(self.runs_root, other["job_id"]) / HANDLE_FILE).exists()]
            if not any(other["job_id"] == job["job_id"] for other in group):
                group.append(job)
        handles = self.submit(group, settings)
        return handles[job["job_id"]]

    def submit(self, group: list[dict], settings: SlurmSettings) -> dict[str, dict]:
        """sbatch one job, or an array of several; returns each job's handle (also saved in its folder)."""
        batch_dir = store.jobs_dir(self.runs_root) / BATCH_DIR
        batch_dir.mkdir(parents=True, exist_ok=True)
        first = group[0]["job_id"]
        gpus = max(_requested_gpus(job, settings) for job in group)
        options = settings.sbatch_options(gpus)
        options += [f"--job-name=qlora-{_job_name(group[0])}", f"--chdir={REPO_ROOT}"]
        if len(group) > 1:
            options += [f"--array=0-{len(group) - 1}%{settings.array_parallelism}",
                        f"--output={batch_dir / (first + '_%a.out')}"]
        else:
            options.append(f"--output={batch_dir / (first + '.out')}")
        script = batch_dir / f"{first}.sh"
        rf.atomic_write_text(script, batch_script(options, settings, [store.job_dir(self.runs_root, j["job_id"])
                                                                       for j in group]))
        result = _slurm(["sbatch", "--parsable", str(script)])
        if result.returncode != 0:
            raise OSError(f"sbatch refused the job: {(result.stderr or result.stdout).strip()}")
        slurm_id = result.stdout.strip().split(";")[0]
        if not slurm_id.isdigit():
            raise OSError(f"sbatch gave no job id: {result.stdout.strip()!r}")
        handles = {}
        for index, member in enumerate(group):
            element = f"{slurm_id}_{index}" if len(group) > 1 else slurm_id
            output = batch_dir / (f"{first}_{index}.out" if len(group) > 1 else f"{first}.out")
            handle = {"executor": NAME, "slurm_job_id": element, "submitted_id": slurm_id,
                      "array_index": index if len(group) > 1 else None, "script": str(script),
                      "gres": settings.gres(gpus), "batch_output": str(output),
                      "submit_host": socket.gethostname(),
                      "sbatch": options}
            rf.atomic_write_json(store.job_dir(self.runs_root, member["job_id"]) / HANDLE_FILE, handle)
            handles[member["job_id"]] = handle
        return handles

    def poll(self, job: dict) -> dict | None:
        handle = _handle_of(job)
        folder = store.job_dir(self.runs_root, job["job_id"])
        info = self._state_of(handle["slurm_job_id"])
        if info is None or info.get("state") in ACTIVE_SLURM_STATES:
            return None
        end = _read_optional(folder / END_FILE)
        if not info:  # forgotten by the controller and no accounting: the files decide
            if not end:
                return {"returncode": None}
            info = {"state": "COMPLETED" if end.get("returncode") == 0 else "FAILED",
                    "exit_code": end.get("returncode")}
        ended = ended_from_slurm(info, end, job)
        if not end and "state" not in ended and info.get("state") != "COMPLETED":
            # The launcher never finished: the setup line or the batch script itself failed.
            ended.update(state=rf.FAILED, error=(
                f"the batch job ended (Slurm state {info.get('state')}, exit code {info.get('exit_code')}) "
                f"before the job finished; see {handle.get('batch_output') or 'its Slurm output'}: "
                f"{rf.tail_text(Path(handle.get('batch_output') or ''), 300).strip()[-300:] if handle.get('batch_output') else ''}"))
        return ended

    def _state_of(self, slurm_id: str) -> dict | None:
        """The job's Slurm state from a listing of every running Slurm job of this workspace,
        refreshed at most every POLL_REFRESH_S (once per worker pass, not once per job)."""
        if slurm_id not in self._answers or time.monotonic() - self._answered_at > POLL_REFRESH_S:
            ids = {slurm_id}
            for other in store.raw_jobs(self.runs_root):
                handle = other.get("handle") if isinstance(other.get("handle"), dict) else {}
                if other.get("state") == rf.RUNNING and handle.get("executor") == NAME \
                        and isinstance(handle.get("slurm_job_id"), str):
                    ids.add(handle["slurm_job_id"])
            self._answers, self._answered_at = query_many(sorted(ids)), time.monotonic()
        return self._answers.get(slurm_id)

    def cancel(self, job: dict, grace_s: float) -> str:
        """SIGTERM to the batch job's first process (our launcher, which passes it to the engine:
        the adapter is saved, the run ends "cancelled"); `scancel` outright after `grace_s`."""
        slurm_id = _handle_of(job)["slurm_job_id"]
        info = query(slurm_id)
        if info is None:
            raise SlurmError(f"job {job['job_id']}: the Slurm controller does not answer; cancel it later "
                             f"or run `scancel {slurm_id}` on the cluster")
        if info.get("state") not in ACTIVE_SLURM_STATES:
            return "already finished"
        if info["state"] == "PENDING":
            command = ["scancel", slurm_id]
        else:
            command = ["scancel", "--batch", "--signal=TERM", slurm_id]
        result = _slurm(command)
        if result.returncode != 0:
            raise SlurmError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")
        if self._wait_ended(slurm_id, grace_s):
            return "graceful"
        _slurm(["scancel", slurm_id])
        self._wait_ended(slurm_id, 60.0)
        return "forced"

    @staticmethod
    def _wait_ended(slurm_id: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            info = query(slurm_id)
            if info is not None and info.get("state") not in ACTIVE_SLURM_STATES:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def ended_from_slurm(info: dict, end: dict, job: dict) -> dict:
    """The executor's answer for an ended job from Slurm's final state and the batch job's own record."""
    state, code = info.get("state"), info.get("exit_code")
    if isinstance(end.get("returncode"), int):
        code = end["returncode"]
    stop_signal = end.get("stop_signal")
    if stop_signal == TIMEOUT_NOTICE_SIGNAL.name or state in ("TIMEOUT", "DEADLINE"):
        reason = ("stopped before its Slurm time limit; adapter saved" if stop_signal == TIMEOUT_NOTICE_SIGNAL.name
                  else f"reached its Slurm time limit (Slurm state {state}) before it could stop itself")
        return {"returncode": code, "state": rf.TIMEOUT, "error": reason}
    if state == "CANCELLED" or stop_signal == "SIGTERM":
        outside = "" if job.get("cancel_requested_at") else " from outside the dashboard (scancel)"
        return {"returncode": code, "state": rf.CANCELLED, "error": f"cancelled in Slurm{outside}" if outside else None}
    if state == "OUT_OF_MEMORY":
        return {"returncode": code, "state": rf.FAILED,
                "error": "ran out of memory (Slurm OUT_OF_MEMORY): raise the memory setting"}
    if state in ("NODE_FAIL", "BOOT_FAIL", "PREEMPTED"):
        return {"returncode": code, "state": rf.CRASHED, "error": f"Slurm state {state} on node {info.get('node') or '?'}"}
    if state == "COMPLETED":
        return {"returncode": 0 if code is None else code}
    return {"returncode": code if code is not None else None}


def _requested_gpus(job: dict, settings: SlurmSettings) -> int:
    """GPUs for `job`: its own `--num-gpus N`, else the setting; CPU jobs ask for none."""
    if job.get("resource") == "cpu":
        return 0
    argv = job.get("argv") or []
    for index, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--num-gpus=") else (
            argv[index + 1] if arg == "--num-gpus" and index + 1 < len(argv) else None)
        if value is not None and value.isdigit():
            return int(value)
    return settings.gpus_per_job


def _job_name(job: dict) -> str:
    name = Path(job["run_dir"]).name if job.get("run_dir") else (job.get("argv") or ["job"])[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]


def batch_script(options: list[str], settings: SlurmSettings, job_folders: list[Path]) -> str:
    """The batch script: #SBATCH lines, the setup line, then the launcher for this element's job folder."""
    python = settings.python or sys.executable
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in options), "",
             "# Written by engine/jobs/slurm.py; edit the workspace's Slurm settings instead.",
             f"cd {shlex.quote(str(REPO_ROOT))}"]
    if settings.setup:
        lines += ["# setup line from the workspace settings", settings.setup]
    folders = " ".join(shlex.quote(str(folder)) for folder in job_folders)
    lines += [f"JOB_FOLDERS=({folders})", 'JOB_FOLDER="${JOB_FOLDERS[${SLURM_ARRAY_TASK_ID:-0}]}"',
              "export PYTHONUNBUFFERED=1",
              f'exec {shlex.quote(python)} -m engine.jobs.slurm run "$JOB_FOLDER"', ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- what the Cluster page shows

def slurm_jobs(runs_root: Path) -> list[dict]:
    """One row per job handed to Slurm, newest first: the queue's state, Slurm's state, pending
    reason and queue position, node, Slurm job id and log. Read-only; costs one squeue per job."""
    rows = []
    for job in reversed(store.raw_jobs(runs_root)):
        handle = job.get("handle") if isinstance(job.get("handle"), dict) else {}
        if handle.get("executor") != NAME or not isinstance(handle.get("slurm_job_id"), str):
            continue
        slurm_id = handle["slurm_job_id"]
        started = _read_optional(store.job_dir(runs_root, job["job_id"]) / START_FILE)
        info = query(slurm_id) if job.get("state") in rf.ACTIVE_STATES else {}
        pending = (info or {}).get("state") == "PENDING"
        rows.append({
            "job": job["job_id"], "run": Path(job["run_dir"]).name if job.get("run_dir") else None,
            "state": job.get("state"), "slurm job": slurm_id,
            "slurm state": (info or {}).get("state") or ("(controller not answering)" if info is None else None),
            "reason": (info or {}).get("reason") or None,
            "queue position": queue_position(slurm_id) if pending else None,
            "node": (info or {}).get("node") or started.get("node"),
            "gpus": started.get("cuda_visible_devices"), "log": job.get("log"), "error": job.get("error")})
    return rows


# ---------------------------------------------------------------- inside the allocation

def run_in_allocation(folder: Path) -> int:
    """The batch job's one command: run the queued job of `folder` as a child, pass SIGTERM (a
    cancel) and the time-limit notice on to it, record start and end beside job.json.

    Never writes job.json (the worker on the login node owns it) and takes no lock.
    """
    folder = Path(folder)
    job = rf.read_json(folder / store.JOB_FILE)
    log_path = Path(job.get("log") or folder / store.JOB_LOG)
    if job.get("state") not in rf.ACTIVE_STATES:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"[{rf.now_iso()}] job is {job.get('state')}; not starting it\n")
        return 0
    slurm_id = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
                if os.environ.get("SLURM_ARRAY_TASK_ID") else os.environ.get("SLURM_JOB_ID", ""))
    started = {"slurm_job_id": slurm_id, "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
               "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "started_at": rf.now_iso(),
               "pid": os.getpid()}
    rf.atomic_write_json(folder / START_FILE, started)
    run_dir = Path(job["run_dir"]) if job.get("run_dir") else None
    slurm_record = {"job_id": slurm_id, "node": started["node"], "log": str(log_path),
                    "cuda_visible_devices": started["cuda_visible_devices"],
                    "settings": _read_optional(folder / HANDLE_FILE).get("sbatch")}
    if run_dir is not None and (run_dir / rf.STATUS).exists():
        rf.write_status(run_dir, rf.read_json(run_dir / rf.STATUS).get("state", rf.QUEUED), slurm=slurm_record)
    stop = {"signal": None}
    command = [sys.executable, "-m", job.get("module") or "engine", *job["argv"]]
    with open(log_path, "ab") as log:
        log.write(f"[{rf.now_iso()}] slurm job {slurm_id} on {started['node']}: $ {' '.join(command)}\n".encode())
        log.flush()
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def pass_on(signum, _frame) -> None:
        stop["signal"] = signal.Signals(signum).name
        try:
            child.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, TIMEOUT_NOTICE_SIGNAL):
        signal.signal(sig, pass_on)
    returncode = child.wait()
    if run_dir is not None and (run_dir / rf.STATUS).exists():
        if stop["signal"] == TIMEOUT_NOTICE_SIGNAL.name:
            rf.write_status(run_dir, rf.TIMEOUT, error="stopped before its Slurm time limit; adapter saved")
        _record_in_config(run_dir, slurm_record)
    rf.atomic_write_json(folder / END_FILE, {"returncode": returncode, "stop_signal": stop["signal"],
                                            "ended_at": rf.now_iso()})
    return 0 if returncode == 0 else (returncode if returncode > 0 else 128 - returncode)


def _record_in_config(run_dir: Path, slurm_record: dict) -> None:
    """Add where and how the run ran to its config.json (the engine rewrites config.json at start)."""
    path = run_dir / rf.CONFIG
    config = _read_optional(path)
    if config:
        rf.atomic_write_json(path, {**config, "slurm": slurm_record})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.slurm",
                                     description="inside a Slurm allocation: run one queued job")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the job of a job folder (the batch script's command)")
    run.add_argument("job_folder")
    args = parser.parse_args(argv)
    return run_in_allocation(Path(args.job_folder))


register_executor(NAME, SlurmExecutor)

if __name__ == "__main__":
    sys.exit(main())
