"""A full disk at every write: the run still ends with a recorded terminal state, never "running"
and never without status.json, and no complete-looking adapter is left; the job queue keeps
serving; `engine train` checks the free space first.

The disk is simulated by tests/faults/sitecustomize.py: it fills at a chosen write and frees
room only when a deletion of real size happens (the lifecycle's reserve file).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import cli
from engine import jobs
from engine.jobs.worker import Worker
from engine.ops import disk
from engine.runs import folder as rf
from engine.runs import lifecycle
from engine.runs.lifecycle import StopSignal, run_lifecycle

FAULTS = Path(__file__).resolve().parent / "faults"
_spec = importlib.util.spec_from_file_location("full_disk", FAULTS / "sitecustomize.py")
full_disk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(full_disk)


def files_of(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


def task_body(run) -> None:
    """The writes of a task: progress, a result file, progress again."""
    run.progress(step=1, total_steps=2, force=True)
    rf.atomic_write_json(run.run_dir / rf.SUMMARY, {"steps": 2})
    run.progress(step=2, total_steps=2, force=True)


# Every os.replace of a run, in order: config, status running, environment, progress, summary,
# progress, the final status.
WRITES = ["config.json", "status.json:1", "environment.json", "status.json:2", "summary.json", "status.json:3",
          "status.json:4"]


@pytest.mark.parametrize("stopped", [False, True], ids=["finishing", "stopped"])
@pytest.mark.parametrize("at", WRITES)
def test_a_full_disk_at_any_write_still_records_the_end(tmp_path, monkeypatch, at, stopped):
    run_dir = tmp_path / "run"
    fault = full_disk.FullDisk(at).install(monkeypatch)
    stop = StopSignal()
    body_failed = at != "status.json:4"  # the final write itself: the body had succeeded
    try:
        with run_lifecycle(run_dir, rf.KIND_TRAIN, config={"kind": rf.KIND_TRAIN}, environment={"python": "x"},
                           stop=stop, log=False) as run:
            if stopped:
                stop.signal = 15
            task_body(run)
    except OSError as exc:
        assert body_failed and exc.errno == errno.ENOSPC
    else:
        assert not body_failed
    assert fault.failures >= 1
    status = rf.read_status(run_dir)
    if body_failed:
        assert status["state"] == rf.FAILED and status["error"].startswith("disk full: ")
    else:
        assert status["state"] == (rf.CANCELLED if stopped else rf.SUCCEEDED)
    assert lifecycle.RESERVE not in {p.name for p in run_dir.iterdir()}


def test_with_no_room_even_after_the_reserve_the_status_is_rewritten_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(lifecycle, "RESERVE_BYTES", 1)  # deleting it frees no real room
    full_disk.FullDisk("summary.json").install(monkeypatch)
    with pytest.raises(OSError):
        with run_lifecycle(tmp_path / "run", rf.KIND_TRAIN, log=False) as run:
            task_body(run)
    status = rf.read_status(tmp_path / "run")
    assert status["state"] == rf.FAILED and status["error"].startswith("disk full")


def test_disk_errors_in_every_form_are_told_apart():
    from safetensors import SafetensorError

    assert lifecycle.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert lifecycle.is_disk_full(SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'))
    assert lifecycle.is_disk_full(SafetensorError("I/O error: No space left on device (os error 28)"))
    assert not lifecycle.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not lifecycle.is_disk_full(SafetensorError("header too large"))
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert lifecycle.describe_error(wrapped) == "disk full: save failed"


# ---------------------------------------------------------------- training on the tiny model

def quick_config(train_csv: Path, **overrides):
    from engine.config import TrainConfig

    values = dict(model="tiny", quantization="4bit", device="cpu", targets="attention", seed=7, epochs=1,
                  per_device_batch=8, grad_accum=1, learning_rate=2e-3, lora_dropout=0.0, warmup_ratio=0.0,
                  train_data=str(train_csv), max_steps=1)
    values.update(overrides)
    return TrainConfig(**values)


def test_safetensors_out_of_space_at_adapter_save_is_a_disk_full_failure(tmp_path, demo_data, tiny_model,
                                                                          monkeypatch):
    import peft.peft_model
    from safetensors import SafetensorError

    def out_of_space(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(peft.peft_model, "safe_save_file", out_of_space)
    from engine.tasks.train import train

    run_dir = tmp_path / "full"
    with pytest.raises(OSError, match="no space left writing the adapter"):
        train(quick_config(demo_data["train"]), run_dir)
    status = rf.read_status(run_dir)
    assert status["state"] == rf.FAILED and status["error"].startswith("disk full: ")
    assert "adapter" in status["error"]
    assert not any("adapter" in f for f in files_of(run_dir)) and lifecycle.RESERVE not in files_of(run_dir)


@pytest.mark.parametrize("at", ["adapter", "summary.json"])
def test_cli_training_on_a_disk_that_fills_ends_failed_disk_full(tmp_path, demo_data, tiny_model, repo_root, at):
    run_dir = tmp_path / "cli-full"
    # Only a deletion the size of the lifecycle's reserve makes room: removing the partial
    # adapter (about 190 kB for the tiny model) is not enough.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAULTS), str(repo_root)]),
               **{full_disk.ENV: at, full_disk.FREES_ENV: str(lifecycle.RESERVE_BYTES - 10_000)})
    proc = subprocess.run([sys.executable, "-m", "engine", "train", "--model", "tiny", "--device", "cpu",
                           "--train-csv", str(demo_data["train"]), "--max-steps", "1", "--run-dir", str(run_dir)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "disk full" in proc.stderr
    status = rf.read_status(run_dir)
    assert status["state"] == rf.FAILED and status["error"].startswith("disk full: "), status
    names = files_of(run_dir)
    assert lifecycle.RESERVE not in names and not any(".partial" in n for n in names)
    if at == "adapter":
        assert not any(n.startswith("adapter/") for n in names)


def test_cli_training_refuses_when_the_disk_has_no_room(tmp_path, monkeypatch, capsys):
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("path,label\na.wav,SPEECH\n", encoding="utf-8")
    usage = {"path": str(tmp_path), "mount": "/", "total": 100 * disk.MB, "used": 99 * disk.MB,
             "free": 1 * disk.MB, "free_fraction": 0.01}
    monkeypatch.setattr(disk, "volume_usage", lambda path: usage)
    code = cli.main(["train", "--model", "tiny", "--train-csv", str(train_csv), "--runs-dir", str(tmp_path / "ws"),
                     "--name", "no-room"])
    err = capsys.readouterr().err
    assert code == 2 and "not enough disk space" in err and "MB free" in err
    assert not (tmp_path / "ws" / "no-room").exists()


# ---------------------------------------------------------------- the job queue

def test_the_worker_survives_a_full_disk_and_serves_the_jobs_after(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    first_run = root / "first"  # its job never writes status.json: the worker has to (the failing path)
    rf.atomic_write_json(first_run / rf.CONFIG, {"kind": rf.KIND_TRAIN})
    rf.write_status(first_run, rf.QUEUED)
    first = jobs.enqueue(root, ["sleep", "--seconds", "0.1"], module="engine.jobs.sleep_job", resource="cpu",
                         run_dir=first_run)
    second = jobs.enqueue(root, ["sleep", "--seconds", "0.1"], module="engine.jobs.sleep_job", resource="cpu")

    real_write = rf.atomic_write_text
    full = threading.Event()
    failures = []

    def write(path, text, *args, **kwargs):
        if full.is_set():
            failures.append(Path(path).name)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(rf, "atomic_write_text", write)
    worker = Worker(root, cpu_slots=1, poll_s=0.05, idle_grace_s=0.3)
    outcome: dict = {}

    def serve():
        try:
            outcome["code"] = worker.run()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            outcome["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while jobs.read_job(root, first)["state"] != rf.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert jobs.read_job(root, first)["state"] == rf.RUNNING
    full.set()  # the disk fills while the first job runs; it ends while it is full
    while len(failures) < 3 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    full.clear()  # space is freed
    thread.join(timeout=30)
    assert "error" not in outcome, f"the worker died: {outcome.get('error')!r}"
    assert not thread.is_alive() and outcome["code"] == 0
    assert len(failures) >= 3  # it kept trying while the disk was full
    assert jobs.read_job(root, first)["state"] == rf.SUCCEEDED
    assert rf.read_status(first_run)["state"] == rf.SUCCEEDED
    assert jobs.read_job(root, second)["state"] == rf.SUCCEEDED
