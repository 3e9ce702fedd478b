"""The server side of the clip worker: the model loaded once, connections served in threads.

Torch, transformers and peft are imported here only, and only inside ClipScorer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from engine.runs import folder as rf
from engine.config import DEFAULT_LABELS, DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT

from engine.ops.clip_worker.client import (DEFAULT_IDLE_TIMEOUT_S, MAX_ADAPTERS, MAX_SECONDS, SAMPLE_RATE,
                                          ClipWorkerError, _lock_path, _try_lock, info_path)

IDLE_POLL_S = 1.0  # how often the serving loop looks at the idle clock
AUTH_TIMEOUT_S = 5.0  # an accepted connection must complete the key handshake within this time
RECEIVE_TIMEOUT_S = 30.0  # an accepted connection must send its request within this time

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
            # private: the file stays 0600, only this user reads the key.
            rf.atomic_write_json(info_file, {
                "pid": os.getpid(), "process_start_time": rf.process_start_time(os.getpid()), "port": port,
                "authkey": authkey.hex(), "model": model, "quantization": quantization, "device": device,
                "loaded_device": scorer.status().get("device"), "started_at": rf.now_iso(),
                "idle_timeout_s": idle_timeout_s}, private=True)
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

