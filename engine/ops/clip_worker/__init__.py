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

Modules: `client` (files, connection, starting a worker, what the page scores with; no torch) and
`server` (the model side and the serving loop). `python -m engine.ops.clip_worker serve ...` runs the server.
"""

from engine.ops.clip_worker.client import (  # noqa: F401 (the client API the pages use)
    BASE_LABEL, MAX_SECONDS, SAMPLE_RATE, AdapterChoice, ClipWorkerClient, ClipWorkerError, adapter_choices,
    base_choice, info_path, live_workers, score_clips, worker_key, workers_dir)
