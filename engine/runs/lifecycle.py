"""One lifecycle for every job kind: `with run_lifecycle(run_dir, kind) as run: ...`.

It creates the run folder (or adopts one the job queue made), writes config.json, marks the run
"running" with where its process lives, sends the engine's log to <run>/engine.log, installs the
SIGTERM/SIGINT flag, writes environment.json, keeps a heartbeat, and records the terminal state
when the body ends: succeeded, cancelled (StopRequested raised, or the stop signal received) or
failed with the error. A full disk in any form (OSError 28, safetensors' "os error 28") is
reported as "disk full: ...".

The terminal write must succeed even on a full disk: a small hidden reserve file is made in the
run folder at the start and given back to make room for the last status write; it is removed at
the end, so a finished folder holds exactly the files of the run-folder contract.

Imports nothing heavy (no torch), so every task module and the tests can use it.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.runs import folder as rf

logger = logging.getLogger("engine.runs.lifecycle")

RESERVE = ".status-reserve"  # hidden: not part of the run-folder contract, removed at the end
RESERVE_BYTES = 256 * 1024  # far more than a status.json and its temp file need
PROGRESS_MIN_INTERVAL_S = 1.0


class StopRequested(Exception):
    """Raised by a task body to stop early; the run ends "cancelled"."""


class DiskFullError(OSError):
    """A write failed for lack of space."""


class StopSignal:
    """Set by SIGTERM/SIGINT; task loops check it at their step boundaries."""

    def __init__(self, then: str = "finishing this step, saving the adapter, then stopping",
                 interrupt: bool = False) -> None:
        self.signal: int | None = None
        self.then = then  # what the loop does after the signal, for the log line
        self.interrupt = interrupt  # raise StopRequested at once: for tasks without step boundaries
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (tests calling a task from a thread)
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signal = signum
        logger.warning("received %s: %s", signal.Signals(signum).name, "stopping now" if self.interrupt else self.then)
        if self.interrupt:
            raise StopRequested(f"stopped by {signal.Signals(signum).name}")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __bool__(self) -> bool:
        return self.signal is not None


# ----------------------------------------------------------------------------- errors

def is_disk_full(exc: BaseException | None) -> bool:
    """True for ENOSPC in any form: an OSError, or an error (safetensors' SafetensorError) whose
    message carries "os error 28"; causes and contexts are followed."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        text = str(exc).lower()
        if "os error 28" in text or "no space left on device" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe_error(exc: BaseException) -> str:
    """The error line a run records: "disk full: ..." for ENOSPC, the message alone for errors
    of the user's input, else the exception type and message."""
    from engine.config import ConfigError

    if is_disk_full(exc):
        text = exc.strerror if isinstance(exc, DiskFullError) and exc.strerror else str(exc)
        return text if text.startswith("disk full: ") else f"disk full: {text}"
    if isinstance(exc, (ConfigError, rf.RunFolderError, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- folder and log

def prepare_run_dir(run_dir: Path) -> Path:
    """Use `run_dir` if it is new, empty, or holds a run still queued (the job queue made it)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        try:
            state = rf.read_status(run_dir).get("state")
        except (FileNotFoundError, ValueError):
            state = None
        if state != rf.QUEUED:
            raise rf.RunFolderError(f"{run_dir} already holds a run ({state or 'unknown state'}); "
                                    "choose a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


_console: logging.Handler | None = None


def set_console_level(level: int) -> None:
    """How much of the engine's log is echoed to stderr (the run's engine.log gets everything)."""
    global _console
    if _console is None:
        _console = logging.StreamHandler(sys.stderr)
        _console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logging.getLogger("engine").addHandler(_console)
    _console.setLevel(level)


def attach_log(run_dir: Path) -> logging.Handler:
    """Everything the engine logs also goes to <run>/engine.log."""
    handler = logging.FileHandler(Path(run_dir) / rf.LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("engine")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if _console is None:
        set_console_level(logging.INFO)
    return handler


# ----------------------------------------------------------------------------- the reserve

def _make_reserve(run_dir: Path) -> Path | None:
    """A hidden file of RESERVE_BYTES real blocks, or None when there is no room even for it."""
    path = Path(run_dir) / RESERVE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            except (AttributeError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise
                os.write(fd, b"\0" * RESERVE_BYTES)  # no fallocate here: write the blocks
        finally:
            os.close(fd)
    except OSError:
        path.unlink(missing_ok=True)
        return None
    return path


def _release_reserve(run_dir: Path) -> None:
    try:
        (Path(run_dir) / RESERVE).unlink(missing_ok=True)
    except OSError:
        pass


def write_final_status(run_dir: Path, state: str, **fields: Any) -> dict | None:
    """Write the terminal state, giving back the reserve file when the disk is full.

    Last resort when even that fails: status.json rewritten in place (its own blocks are freed
    by the truncation), better than a run left reading "running". Returns None only when nothing
    could be written at all (logged).
    """
    try:
        return rf.write_status(run_dir, state, **fields)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.warning("disk full writing the final status; releasing the reserve to make room")
    _release_reserve(run_dir)
    try:
        return rf.write_status(run_dir, state, **fields)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
    import json

    path = Path(run_dir) / rf.STATUS
    try:
        status = rf.read_json(path)
    except (OSError, ValueError):
        status = {"schema_version": rf.SCHEMA_VERSION}
    status.update(fields, state=state, updated_at=rf.now_iso())
    status.setdefault("ended_at", status["updated_at"])
    try:
        with open(path, "r+" if path.exists() else "w", encoding="utf-8") as fh:
            fh.truncate(0)
            fh.write(json.dumps(status, indent=2, default=str) + "\n")
        return status
    except OSError as exc:
        logger.error("could not record the final state %s of %s: %s", state, run_dir, exc)
        return None


# ----------------------------------------------------------------------------- heartbeat

class _Heartbeat:
    """Refreshes status.json's heartbeat_at every `interval` s from a daemon thread."""

    def __init__(self, run_dir: Path, interval: float) -> None:
        self.run_dir, self.interval = Path(run_dir), interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run_dir.name}", daemon=True)

    def start(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                rf.update_status(self.run_dir, heartbeat_at=time.time())
            except (OSError, ValueError) as exc:  # a full disk: try again next beat
                logger.warning("heartbeat of %s not written: %s", self.run_dir.name, exc)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()


# ----------------------------------------------------------------------------- the run

class Run:
    """What a task body gets from `run_lifecycle`: its folder, its stop flag, progress writes."""

    def __init__(self, run_dir: Path, stop: StopSignal) -> None:
        self.run_dir = Path(run_dir)
        self.stop = stop
        self.state: str | None = None  # the terminal state: chosen by the body (set_result), then the one recorded
        self.fields: dict[str, Any] = {}  # extra status fields written with the terminal state
        self._last_progress = 0.0

    def progress(self, force: bool = False, **fields: Any) -> bool:
        """Record `progress` {step, total_steps, ...} in status.json, at most about once a
        second unless `force`; True when written."""
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_MIN_INTERVAL_S:
            return False
        rf.update_status(self.run_dir, progress=fields)
        self._last_progress = now
        return True

    def set_result(self, state: str | None = None, **status_fields: Any) -> None:
        """Choose the terminal state (default: succeeded, or cancelled after a stop signal) and
        fields written with it."""
        if state is not None and state not in rf.TERMINAL_STATES:
            raise ValueError(f"{state!r} is not a terminal state")
        self.state = state or self.state
        self.fields.update(status_fields)

    def write_environment(self, info: dict) -> None:
        rf.atomic_write_json(self.run_dir / rf.ENVIRONMENT, info)


@contextmanager
def run_lifecycle(run_dir: Path, kind: str, *, config: dict | None = None,
                  environment: dict | Callable[[], dict] | None = None, stop: StopSignal | None = None,
                  log: bool = True, interruptible: bool = False, heartbeat_s: float | None = None) -> Iterator[Run]:
    """Run the body as one run of `kind` in `run_dir`; see the module docstring.

    Failures are recorded and re-raised; KeyboardInterrupt ends the run "cancelled". A body
    that never checks `run.stop` asks for `interruptible`: a signal then stops it at once
    (state "cancelled"). Handlers, the log handler and the heartbeat are always removed.
    """
    run_dir = prepare_run_dir(run_dir)
    reserve = _make_reserve(run_dir)  # first: the writes below may be the ones that fill the disk
    owns_stop = stop is None
    stop = stop if stop is not None else StopSignal(interrupt=interruptible).install()
    handler: logging.Handler | None = None
    beat: _Heartbeat | None = None
    run = Run(run_dir, stop)
    state, error = rf.FAILED, None
    try:
        if reserve is None:
            raise DiskFullError(errno.ENOSPC, f"no room to start a run in {run_dir}")
        handler = attach_log(run_dir) if log else None
        if config is not None:
            rf.atomic_write_json(run_dir / rf.CONFIG, config)
        rf.write_status(run_dir, rf.RUNNING, kind=kind, error=None, **rf.mark_process(run_dir))
        beat = _Heartbeat(run_dir, heartbeat_s or rf.HEARTBEAT_INTERVAL_S).start()
        if environment is not None:
            run.write_environment(environment() if callable(environment) else environment)
        yield run
        state = run.state or (rf.CANCELLED if stop else rf.SUCCEEDED)
    except StopRequested:
        state = rf.CANCELLED
    except KeyboardInterrupt:
        state, error = rf.CANCELLED, "interrupted"
        raise
    except BaseException as exc:
        error = describe_error(exc)
        raise
    finally:
        stop.interrupt = False  # a second signal must not cut the final write short
        if beat is not None:
            beat.stop()
        run.state = state
        if error and state == rf.FAILED:
            logger.error("run failed: %s", error)
        try:
            write_final_status(run_dir, state, error=error, signal=stop.signal, **run.fields)
        except OSError as exc:  # e.g. the folder was removed under the run: nothing left to record in
            logger.error("could not record the final state %s of %s: %s", state, run_dir, exc)
        finally:
            _release_reserve(run_dir)
            if owns_stop:
                stop.restore()
            if handler is not None:
                logging.getLogger("engine").removeHandler(handler)
                handler.close()
