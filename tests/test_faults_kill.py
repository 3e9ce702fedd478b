"""kill -9 of a real training job at chosen points, run through the queue's worker: the run never
looks finished when it is not, a run that finished before is never touched, and the queue goes on.

The kill points are the run's own writes (tests/faults/sitecustomize.py sends SIGKILL right before
the N-th os.replace onto a file): the first status write, a later progress write, the adapter's
rename into place, and the summary written after it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine import jobs
from engine.jobs.worker import Worker
from engine.runs import folder as rf

FAULTS = Path(__file__).resolve().parent / "faults"
FINISHED_FILES = {"config.json", "status.json", "environment.json", "metrics.jsonl", "summary.json", "engine.log",
                  "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}


def files_of(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def train_argv(train_csv: Path, run_dir: Path) -> list[str]:
    return ["train", "--model", "tiny", "--device", "cpu", "--train-csv", str(train_csv), "--max-steps", "2",
            "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "1", "--run-dir", str(run_dir)]


def serve(root: Path, env: dict[str, str], monkeypatch) -> None:
    """Run a worker in this process until the queue is empty; jobs inherit `env`."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Worker(root, cpu_slots=1, poll_s=0.05, idle_grace_s=0.2).run() == 0
    for key in env:
        monkeypatch.delenv(key)


KILL_POINTS = ["status.json:1", "status.json:2", "adapter", "summary.json"]


@pytest.mark.slow
def test_a_training_killed_at_any_point_is_crashed_and_never_looks_finished(tmp_path, demo_data, tiny_model,
                                                                           repo_root, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    finished = root / "finished"
    # A run that finished first; then one job per kill point; then one more job the queue must still run.
    jobs.enqueue(root, train_argv(demo_data["train"], finished), resource="cpu", run_dir=finished)
    serve(root, {}, monkeypatch)
    before = {name: (finished / name).read_bytes() for name in files_of(finished)}
    assert set(before) == FINISHED_FILES

    for kill_at in KILL_POINTS:
        killed = root / f"killed-{kill_at.replace(':', '-')}"
        job_id = jobs.enqueue(root, train_argv(demo_data["train"], killed), resource="cpu", run_dir=killed)
        serve(root, {"PYTHONPATH": os.pathsep.join([str(FAULTS), str(repo_root)]), "QLORA_TEST_KILL_AT": kill_at},
              monkeypatch)
        job = jobs.read_job(root, job_id)
        assert job["state"] == rf.CRASHED and "SIGKILL" in (job.get("error") or ""), (kill_at, job)
        status = rf.read_status(killed)
        assert status["state"] == rf.CRASHED, (kill_at, status)
        names = files_of(killed)
        assert "summary.json" not in names, (kill_at, names)
        if kill_at.startswith("status.json"):
            assert not any(n.startswith("adapter") for n in names), (kill_at, names)  # no complete-looking adapter

    after = root / "after"
    after_job = jobs.enqueue(root, train_argv(demo_data["train"], after), resource="cpu", run_dir=after)
    serve(root, {}, monkeypatch)
    assert jobs.read_job(root, after_job)["state"] == rf.SUCCEEDED
    assert files_of(after) == FINISHED_FILES
    # The run that finished first is untouched, byte for byte.
    assert {name: (finished / name).read_bytes() for name in files_of(finished)} == before
    assert rf.read_status(finished)["state"] == rf.SUCCEEDED
