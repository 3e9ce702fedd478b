"""The client side of the clip worker: the worker's files, the connection, starting one, and what
the Try-a-clip page scores with. No torch here: the dashboard imports this.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import AuthenticationError, Client
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.runs import folder as rf
from engine.config import DEFAULT_LABELS, DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT
from engine.data.audio import DEFAULT_MAX_SECONDS as MAX_SECONDS, SAMPLE_RATE  # noqa: F401 (re-exported); the model family's

WORKERS_DIR = ".workers"
DEFAULT_IDLE_TIMEOUT_S = 15 * 60
DEFAULT_START_TIMEOUT_S = 600.0  # loading a 7B from a cold disk takes minutes
DEFAULT_REQUEST_TIMEOUT_S = 600.0
MAX_ADAPTERS = 16  # loaded adapters kept in memory; the least recently used goes first
REPO_ROOT = Path(__file__).resolve().parents[3]
BASE_LABEL = "base model"


class ClipWorkerError(Exception):
    """The clip worker could not be started or reached, or refused a request; the message says why."""


# ---------------------------------------------------------------- files of a worker

def worker_key(model: str, quantization: str, device: str = "auto") -> str:
    """One worker per (model, quantization, device): a short stable hash of the three."""
    return hashlib.sha256(json.dumps([str(model), quantization, device]).encode()).hexdigest()[:16]


def workers_dir(runs_root: Path) -> Path:
    return Path(runs_root) / WORKERS_DIR


def info_path(runs_root: Path, model: str, quantization: str, device: str = "auto") -> Path:
    return workers_dir(runs_root) / f"clip-worker-{worker_key(model, quantization, device)}.json"


def _lock_path(info_file: Path) -> Path:
    return info_file.with_suffix(".lock")


def _log_path(info_file: Path) -> Path:
    return info_file.with_suffix(".log")


def _try_lock(path: Path) -> int | None:
    """Worker files hold a secret: their folder is private to the user."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return rf.try_flock(path, 0o600)


def _lock_held(path: Path) -> bool:
    fd = _try_lock(path)
    if fd is None:
        return True
    os.close(fd)
    return False


def read_live_info(info_file: Path) -> dict | None:
    """The worker's announcement when its process (pid + start time) is alive, else None."""
    try:
        info = rf.read_json(info_file)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(info, dict) or not rf.process_alive(info.get("pid"), info.get("process_start_time")):
        return None
    return info


# ---------------------------------------------------------------- client (no torch)

def _encode_audio(samples: Any) -> bytes:
    return np.ascontiguousarray(samples, dtype=np.float32).tobytes()


class ClipWorkerClient:
    """Talks to one running clip worker; `ensure()` finds or starts it."""

    def __init__(self, info: dict, info_file: Path):
        self.info = info
        self.info_file = Path(info_file)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", int(self.info["port"]))

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @classmethod
    def find(cls, runs_root: Path, model: str, quantization: str = "4bit",
             device: str = "auto") -> "ClipWorkerClient | None":
        """The live worker for this model, or None."""
        info_file = info_path(Path(runs_root).resolve(), model, quantization, device)
        info = read_live_info(info_file)
        return cls(info, info_file) if info else None

    @classmethod
    def ensure(cls, runs_root: Path, model: str, quantization: str = "4bit", device: str = "auto",
               dtype: str = "auto", idle_timeout_s: float | None = None,
               start_timeout_s: float = DEFAULT_START_TIMEOUT_S) -> "ClipWorkerClient":
        """The live worker for this model, started (detached, its own session) when none runs.

        Waits until the worker has loaded the model and announced itself; a worker that dies
        while starting raises ClipWorkerError with the end of its log.
        """
        runs_root = Path(runs_root).resolve()
        info_file = info_path(runs_root, model, quantization, device)
        proc: subprocess.Popen | None = None
        deadline = time.monotonic() + start_timeout_s
        while True:
            info = read_live_info(info_file)
            if info is not None and info.get("model") == model and info.get("quantization") == quantization:
                return cls(info, info_file)
            if proc is not None and proc.poll() == 0:
                proc = None  # it found another worker holding the lock: wait for that one
            if proc is not None and proc.poll() is not None:
                raise ClipWorkerError(
                    f"the clip worker for {model} ({quantization}) exited with code {proc.returncode} before it "
                    f"was ready; end of {_log_path(info_file)}:\n{rf.tail_text(_log_path(info_file), 2000).strip()}")
            # A worker holding the lock is loading the model: wait for it rather than start a second.
            if proc is None and not _lock_held(_lock_path(info_file)):
                proc = _start_server(runs_root, info_file, model, quantization, device, dtype, idle_timeout_s)
            if time.monotonic() >= deadline:
                raise ClipWorkerError(f"the clip worker for {model} ({quantization}) did not become ready within "
                                      f"{start_timeout_s:.0f} s; see {_log_path(info_file)}")
            time.sleep(0.2)

    def request(self, message: dict, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> dict:
        """Send one request on a fresh connection and return the answer (ok checked)."""
        try:
            with Client(self.address, authkey=bytes.fromhex(self.info["authkey"])) as conn:
                conn.send(message)
                if not conn.poll(timeout_s):
                    raise ClipWorkerError(f"the clip worker (pid {self.pid}) did not answer within {timeout_s:.0f} s")
                answer = conn.recv()
        except AuthenticationError as exc:
            raise ClipWorkerError(f"the clip worker (pid {self.pid}) refused our key: {exc}") from None
        except (OSError, EOFError) as exc:
            raise ClipWorkerError(f"lost the clip worker (pid {self.pid}, port {self.address[1]}): "
                                  f"{type(exc).__name__}: {exc}") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else repr(answer)
            raise ClipWorkerError(f"the clip worker refused the request: {error}")
        return answer

    def ping(self, timeout_s: float = 10.0) -> dict:
        return self.request({"op": "ping"}, timeout_s)

    def score(self, clips: Sequence[tuple[str, Any]], adapters: Sequence[str | os.PathLike | None],
              prompt: str = DEFAULT_PROMPT, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
              label_words: Sequence[str] = DEFAULT_LABELS, threshold: float = 0.5,
              timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> dict:
        """Score (name, 16 kHz float32 samples) clips with each adapter (None = base model).

        Returns {"results": [{clip, adapter, p_speech, pred, margin, ms}], "errors": [{clip|adapter,
        error}], "base_loads"}: a clip or adapter that fails is reported and the rest still score.
        """
        message = {"op": "score", "clips": [{"name": str(name), "audio": _encode_audio(audio)} for name, audio in clips],
                   "adapters": [str(a) if a is not None else None for a in adapters], "prompt": prompt,
                   "system_prompt": system_prompt, "label_words": list(label_words), "threshold": float(threshold)}
        return self.request(message, timeout_s)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Ask the worker to exit and wait until its process is gone."""
        with contextlib.suppress(ClipWorkerError):
            self.request({"op": "shutdown"}, 10.0)
        deadline = time.monotonic() + timeout_s
        while rf.process_alive(self.pid, self.info.get("process_start_time")):
            if time.monotonic() >= deadline:
                raise ClipWorkerError(f"the clip worker (pid {self.pid}) did not exit within {timeout_s:.0f} s")
            time.sleep(0.05)


def live_workers(runs_root: Path) -> list[ClipWorkerClient]:
    """Every clip worker of the workspace whose process is alive."""
    found = []
    for info_file in sorted(workers_dir(runs_root).glob("clip-worker-*.json")):
        info = read_live_info(info_file)
        if info is not None:
            found.append(ClipWorkerClient(info, info_file))
    return found


def _start_server(runs_root: Path, info_file: Path, model: str, quantization: str, device: str, dtype: str,
                  idle_timeout_s: float | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "engine.ops.clip_worker", "serve", "--runs-dir", str(runs_root), "--model", model,
               "--quantization", quantization, "--device", device, "--dtype", dtype]
    if idle_timeout_s is not None:
        command += ["--idle-timeout", str(idle_timeout_s)]
    info_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(_log_path(info_file), "ab") as log:
        log.write(f"[{rf.now_iso()}] $ {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)


# ---------------------------------------------------------------- what the dashboard scores with

@dataclass(frozen=True)
class AdapterChoice:
    """Something a clip can be scored with: a finished run's adapter, or a base model (adapter_dir None)."""

    label: str
    adapter_dir: str | None
    model: str
    quantization: str
    prompt: str = DEFAULT_PROMPT
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    label_words: tuple[str, ...] = DEFAULT_LABELS


def base_choice(model: str, quantization: str = "4bit") -> AdapterChoice:
    return AdapterChoice(label=f"{BASE_LABEL} ({model})", adapter_dir=None, model=model, quantization=quantization)


def adapter_choices(runs_root: Path) -> list[AdapterChoice]:
    """Every succeeded training run of the workspace that holds a complete adapter, newest first."""
    choices = []
    for info in rf.list_runs(Path(runs_root)):
        adapter = info.path / rf.ADAPTER_DIR
        if info.kind != rf.KIND_TRAIN or info.state != rf.SUCCEEDED:
            continue
        if not all((adapter / name).is_file() for name in rf.ADAPTER_FILES):
            continue
        cfg = info.config
        choices.append(AdapterChoice(
            label=info.run_id, adapter_dir=str(adapter), model=str(cfg.get("model") or "tiny"),
            quantization=str(cfg.get("quantization") or "4bit"), prompt=cfg.get("prompt") or DEFAULT_PROMPT,
            system_prompt=cfg.get("system_prompt") or DEFAULT_SYSTEM_PROMPT,
            label_words=tuple(cfg.get("label_words") or DEFAULT_LABELS)))
    choices.sort(key=lambda c: Path(c.adapter_dir).stat().st_mtime, reverse=True)
    return choices


def score_clips(runs_root: Path, clips: Sequence[tuple[str, Any]], choices: Sequence[AdapterChoice],
                ensure: Callable[..., ClipWorkerClient] | None = None,
                threshold: float = 0.5) -> tuple[list[dict], list[str]]:
    """Score every clip with every choice; returns (rows, errors).

    Rows {clip, adapter, p_speech, pred, margin, ms}, clips in the given order. Choices are
    grouped by model, quantization and prompt: one worker per model, one request per group.
    A group that fails becomes one error message; the other groups still score.
    """
    ensure = ensure or ClipWorkerClient.ensure
    groups: dict[tuple, list[AdapterChoice]] = {}
    for choice in choices:
        key = (choice.model, choice.quantization, choice.prompt, choice.system_prompt, tuple(choice.label_words))
        groups.setdefault(key, []).append(choice)
    found: dict[tuple[str, str], dict] = {}
    errors: list[str] = []
    for (model, quantization, prompt, system_prompt, words), members in groups.items():
        try:
            client = ensure(runs_root, model, quantization)
            answer = client.score(clips, [c.adapter_dir for c in members], prompt=prompt,
                                  system_prompt=system_prompt, label_words=words, threshold=threshold)
        except ClipWorkerError as exc:
            errors.append(f"{', '.join(c.label for c in members)}: {exc}")
            continue
        by_dir = {c.adapter_dir: c.label for c in members}
        for row in answer["results"]:
            found[(row["clip"], by_dir[row["adapter"]])] = row
        for problem in answer["errors"]:
            where = problem.get("clip") or by_dir.get(problem.get("adapter"), problem.get("adapter"))
            errors.append(f"{where}: {problem['error']}")
    rows = []
    for name, _audio in clips:
        for choice in choices:
            row = found.get((str(name), choice.label))
            if row is not None:
                rows.append({**row, "adapter": choice.label})
    return rows, errors
