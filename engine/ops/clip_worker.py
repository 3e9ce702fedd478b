"""The long-lived clip-scoring worker behind "Try a clip": the base model loads once per worker.

Server (`python -m engine.ops.clip_worker serve --runs-dir DIR --model M --quantization Q`): loads
the base model with its family's runtime load_model, listens on 127.0.0.1 (a free port) behind a fresh
32-byte secret, and announces itself in

    <runs_root>/.workers/clip-worker-<key>.json   {pid, process_start_time, port, authkey, model, ...}

(mode 0600, written atomically; <key> hashes model, quantization and device). Adapters load on
first use (the first through PeftModel.from_pretrained, later ones through load_adapter) and are
switched with set_adapter; the base model is scored inside disable_adapter(). The base weights
are never loaded twice. It exits after an idle timeout (15 min by default) and removes its file.
A flock on clip-worker-<key>.lock, held for the worker's life, keeps it to one worker per key.

Requests are dicts sent over multiprocessing.connection (pickled, hence the secret):
    {"op": "ping"}, {"op": "shutdown"},
    {"op": "score", "clips": [{"name", "audio": float32 16 kHz samples as a list or bytes}],
     "adapters": [adapter folder or None for the base model], "prompt", "system_prompt",
     "label_words", "threshold"}
and answered with {"ok": True, ...} or {"ok": False, "error": "..."}. Each connection is handled in
its own thread (handshake and request under timeouts) while requests are answered one at a time,
so a client that connects and stays silent delays neither other clients nor the idle exit.

Client (`ClipWorkerClient`, `score_clips`, `adapter_choices`): no torch import anywhere on this
side, so the dashboard can use it; torch, transformers and peft are imported by the server only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import pickle
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import AuthenticationError, Client, Connection, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from engine.runs import folder as rf
from engine.config import DEFAULT_LABELS, DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT
from engine.data.audio import DEFAULT_MAX_SECONDS as MAX_SECONDS, SAMPLE_RATE  # the model family's

WORKERS_DIR = ".workers"
DEFAULT_IDLE_TIMEOUT_S = 15 * 60
DEFAULT_START_TIMEOUT_S = 600.0  # loading a 7B from a cold disk takes minutes
DEFAULT_REQUEST_TIMEOUT_S = 600.0
IDLE_POLL_S = 1.0  # how often the serving loop looks at the idle clock
AUTH_TIMEOUT_S = 5.0  # an accepted connection must complete the key handshake within this time
RECEIVE_TIMEOUT_S = 30.0  # an accepted connection must send its request within this time
MAX_ADAPTERS = 16  # loaded adapters kept in memory; the least recently used goes first
REPO_ROOT = Path(__file__).resolve().parents[2]
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


# ---------------------------------------------------------------- server (torch lives here only)

class ClipScorer:
    """The model side of the worker: base model loaded once, adapters loaded once and switched."""

    def __init__(self, model: str, quantization: str, device: str = "auto", dtype: str = "auto"):
        from engine.models import family_for

        self.model_name, self.quantization = model, quantization
        self.loaded = family_for(model).runtime().load_model(model, quantization, device, dtype)
        self.base_loads = 1
        self.peft = None  # the PeftModel wrapping the base once an adapter is used
        self.adapter_names: OrderedDict[tuple[str, int], str] = OrderedDict()  # (folder, mtime) -> name
        self.adapter_loads = 0
        self.requests = 0

    def status(self) -> dict:
        return {"pid": os.getpid(), "model": self.model_name, "quantization": self.quantization,
                "device": str(self.loaded.device), "base_loads": self.base_loads, "adapter_loads": self.adapter_loads,
                "adapters_loaded": len(self.adapter_names), "requests": self.requests}

    def _adapter_name(self, adapter_dir: str) -> str:
        """The peft name of a loaded adapter folder, loading it on first use."""
        folder = Path(adapter_dir).expanduser().resolve()
        weights = folder / rf.ADAPTER_FILES[1]
        if not (folder / rf.ADAPTER_FILES[0]).is_file() or not weights.is_file():
            raise ClipWorkerError(f"{folder} is not a PEFT adapter folder (needs {' and '.join(rf.ADAPTER_FILES)})")
        # The modification time is part of the key: an adapter rewritten in place is loaded afresh.
        key = (str(folder), weights.stat().st_mtime_ns)
        if key in self.adapter_names:
            self.adapter_names.move_to_end(key)
            return self.adapter_names[key]
        name = f"adapter{self.adapter_loads + 1}"  # peft names become module keys: no dots or slashes
        if self.peft is None:
            from peft import PeftModel

            self.peft = PeftModel.from_pretrained(self.loaded.hf, folder, adapter_name=name, is_trainable=False)
            self.loaded.model = self.peft
        else:
            self.peft.load_adapter(folder, adapter_name=name, is_trainable=False)
        self.adapter_loads += 1
        self.adapter_names[key] = name
        while len(self.adapter_names) > MAX_ADAPTERS:
            _old, old_name = self.adapter_names.popitem(last=False)
            self.peft.delete_adapter(old_name)
        return name

    @contextlib.contextmanager
    def _using(self, adapter_dir: str | None) -> Iterator[None]:
        """The model scores with this adapter (None: the base model) inside the block."""
        if adapter_dir is not None:
            name = self._adapter_name(adapter_dir)
            self.peft.set_adapter(name)
            yield
        elif self.peft is not None:
            with self.peft.disable_adapter():
                yield
        else:
            yield

    def score(self, request: dict) -> dict:
        from engine.runs.predictions import NONSPEECH, SPEECH
        from engine.tasks.evaluate import p_speech_from_scores, score_audio

        self.requests += 1
        prompt = request.get("prompt") or DEFAULT_PROMPT
        system_prompt = request.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
        words = list(request.get("label_words") or DEFAULT_LABELS)
        threshold = float(request.get("threshold", 0.5))
        adapters = request.get("adapters") or [None]
        clips, errors = [], []
        for i, clip in enumerate(request.get("clips") or []):
            name = str(clip.get("name") or f"clip {i + 1}")
            try:
                clips.append((name, _decode_clip(clip.get("audio"))))
            except ValueError as exc:
                errors.append({"clip": name, "error": str(exc)})
        results = []
        for adapter in adapters:
            try:
                with self._using(adapter):
                    for name, audio in clips:
                        started = time.perf_counter()
                        scores = score_audio(self.loaded, [audio], system_prompt, prompt, words, batch_size=1)
                        p_speech = float(p_speech_from_scores(scores)[0])
                        results.append({"clip": name, "adapter": adapter, "p_speech": p_speech,
                                        "pred": SPEECH if p_speech >= threshold else NONSPEECH,
                                        "margin": float(scores[0, 0] - scores[0, 1]),
                                        "ms": round((time.perf_counter() - started) * 1000, 2)})
            except Exception as exc:  # noqa: BLE001 - one bad adapter must not sink the others
                errors.append({"adapter": adapter, "error": f"{type(exc).__name__}: {exc}"})
        return {"ok": True, "results": results, "errors": errors, **self.status()}


def _decode_clip(audio: Any) -> np.ndarray:
    """Samples from a request: bytes of float32 or a list of numbers; 1-D, finite, non-empty."""
    if isinstance(audio, (bytes, bytearray, memoryview)):
        if len(audio) % 4:
            raise ValueError(f"audio bytes must hold float32 samples (got {len(audio)} bytes, not a multiple of 4)")
        samples = np.frombuffer(bytes(audio), dtype=np.float32)
    else:
        try:
            samples = np.asarray(audio, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"audio must be float32 samples (got {type(audio).__name__})") from None
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"audio must be a non-empty 1-D array of 16 kHz samples (got shape {samples.shape})")
    if not np.isfinite(samples).all():
        raise ValueError("audio contains NaN or infinite samples")
    return samples[: int(MAX_SECONDS * SAMPLE_RATE)].copy()


class _IdleClock:
    """When the last request ended and how many are being answered now.

    The serving loop looks at it between accepts (the listening socket wakes every poll), so
    no connection, however stalled, can keep the worker (and its GPU memory) alive.
    """

    def __init__(self, idle_timeout_s: float):
        self.idle_timeout_s = idle_timeout_s
        self.last = time.monotonic()
        self.busy = 0
        self._lock = threading.Lock()

    @property
    def idle(self) -> bool:
        with self._lock:
            return self.busy == 0 and time.monotonic() - self.last >= self.idle_timeout_s

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        with self._lock:
            self.busy += 1
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1
                self.last = time.monotonic()


def _answer(request: Any, scorer: Any) -> tuple[dict, bool]:
    """The answer to one request, and whether it asked the worker to stop."""
    op = request.get("op") if isinstance(request, dict) else None
    try:
        if op == "ping":
            return {"ok": True, **scorer.status()}, False
        if op == "shutdown":
            return {"ok": True, **scorer.status()}, True
        if op == "score":
            return scorer.score(request), False
        return {"ok": False, "error": f"unknown op {op!r}; use ping, score or shutdown"}, False
    except Exception as exc:  # noqa: BLE001 - the worker outlives a bad request
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, False


def _set_socket_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel timeouts on a blocking socket: a read or write that waits longer fails with OSError.

    multiprocessing's Connection has no timeouts of its own; these bound the key handshake and
    the transfer of a request, while the socket stays blocking as Connection needs.
    """
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _handle_connection(sock: socket.socket, authkey: bytes, scorer: Any, clock: _IdleClock,
                       answer_lock: threading.Lock, stop: threading.Event) -> None:
    """One connection, in its own thread: key handshake, one request, one answer.

    Requests are answered one at a time (answer_lock: the model is not shared between threads);
    the handshake and the wait for the request are not, so a silent client delays nobody.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(sock)
        _set_socket_timeouts(sock, AUTH_TIMEOUT_S)
        conn = stack.enter_context(Connection(os.dup(sock.fileno())))
        try:
            deliver_challenge(conn, authkey)
            answer_challenge(conn, authkey)
        except AuthenticationError:
            _say("refused a connection that did not know the key")
            return
        except (OSError, EOFError) as exc:
            _say(f"a connection failed before its request: {exc or type(exc).__name__}")
            return
        _set_socket_timeouts(sock, RECEIVE_TIMEOUT_S)
        try:
            request = conn.recv() if conn.poll(RECEIVE_TIMEOUT_S) else None
        except (OSError, EOFError, pickle.UnpicklingError):
            request = None
        if request is None:
            return
        with answer_lock, clock.answering():
            answer, stop_requested = _answer(request, scorer)
            with contextlib.suppress(OSError, EOFError):
                conn.send(answer)
        if stop_requested:
            _say("shutdown requested, exiting")
            stop.set()


def _serve_connections(server: socket.socket, authkey: bytes, scorer: Any, clock: _IdleClock) -> None:
    """Accept connections until a shutdown request or the idle timeout; each is handled in a thread."""
    stop = threading.Event()
    answer_lock = threading.Lock()
    server.settimeout(min(IDLE_POLL_S, clock.idle_timeout_s / 4))
    while not stop.is_set():
        if clock.idle:
            _say(f"idle for {clock.idle_timeout_s:g} s, exiting")
            return
        try:
            sock, _ = server.accept()
        except TimeoutError:
            continue
        except OSError as exc:
            _say(f"a connection failed before its request: {exc}")
            continue
        sock.setblocking(True)
        threading.Thread(target=_handle_connection, args=(sock, authkey, scorer, clock, answer_lock, stop),
                         daemon=True).start()


def _say(message: str) -> None:
    print(f"[{rf.now_iso()}] {message}", flush=True)


def serve(runs_root: Path, model: str, quantization: str = "4bit", device: str = "auto", dtype: str = "auto",
          idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S, make_scorer: Callable[..., Any] = ClipScorer) -> int:
    """Run the worker until shutdown, SIGTERM or `idle_timeout_s` without a request.

    make_scorer(model, quantization, device, dtype) builds the model side (tests pass a stand-in).
    """
    runs_root = Path(runs_root).resolve()
    info_file = info_path(runs_root, model, quantization, device)
    lock = _try_lock(_lock_path(info_file))
    if lock is None:
        _say(f"a clip worker for {model} ({quantization}) already runs for {runs_root}; exiting")
        return 0
    with contextlib.suppress(ValueError):  # ValueError: not the main thread (tests); SIGTERM then kills
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the finally: below
    try:
        _say(f"clip worker {os.getpid()}: loading {model} ({quantization}, device {device})")
        scorer = make_scorer(model, quantization, device, dtype)
        authkey = secrets.token_bytes(32)
        with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
            port = server.getsockname()[1]
            # mkstemp inside atomic_write_json creates the file 0600: only this user reads the key.
            rf.atomic_write_json(info_file, {
                "pid": os.getpid(), "process_start_time": rf.process_start_time(os.getpid()), "port": port,
                "authkey": authkey.hex(), "model": model, "quantization": quantization, "device": device,
                "loaded_device": scorer.status().get("device"), "started_at": rf.now_iso(),
                "idle_timeout_s": idle_timeout_s})
            _say(f"clip worker {os.getpid()} ready on 127.0.0.1:{port} (idle timeout {idle_timeout_s:g} s)")
            _serve_connections(server, authkey, scorer, _IdleClock(idle_timeout_s))
    finally:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            if rf.read_json(info_file).get("pid") == os.getpid():
                info_file.unlink()
        os.close(lock)
    return 0


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.ops.clip_worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="load the model once and answer scoring requests")
    run.add_argument("--runs-dir", required=True, help="workspace; the worker announces itself in <runs-dir>/.workers")
    run.add_argument("--model", required=True, help="hub id (local cache only), model folder, or tiny")
    run.add_argument("--quantization", choices=("4bit", "8bit", "none"), default="4bit")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    run.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                     help="seconds without a request before the worker exits (default 900)")
    args = parser.parse_args(argv)
    if not (args.idle_timeout > 0 and math.isfinite(args.idle_timeout)):
        parser.error("--idle-timeout must be a positive number of seconds")
    return serve(Path(args.runs_dir), args.model, args.quantization, args.device, args.dtype, args.idle_timeout)


if __name__ == "__main__":
    sys.exit(main())
