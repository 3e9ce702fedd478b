"""The executor seam: the local executor's contract with real processes, and a fake executor
whose reported state the worker and the readers trust (a job elsewhere is never "crashed")."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from engine import jobs
from engine.jobs import executor as executors
from engine.jobs import local, store
from engine.jobs.worker import Worker
from engine.runs import folder as rf
from tests.conftest import kill_jobs_left_running, wait_for




@pytest.fixture
def root(tmp_path):
    workspace = tmp_path / "runs"
    workspace.mkdir()
    yield workspace
    kill_jobs_left_running(workspace)


def run_state(run_dir: Path) -> str | None:
    try:
        return rf.read_status(run_dir)["state"]
    except FileNotFoundError:
        return None


def sleep_job(root: Path, seconds: float) -> dict:
    run_dir = root / f"sleep-{seconds}"
    job_id = jobs.enqueue(root, ["sleep", "--seconds", str(seconds), "--run-dir", str(run_dir)],
                          module="engine.jobs.sleep_job", run_dir=run_dir)
    return store.read_job_file(root, job_id)


# ---------------------------------------------------------------- the local executor

def test_local_executor_start_poll_cancel_and_log(root):
    job = sleep_job(root, 30)
    executor = local.LocalExecutor(root)
    assert executor.log_path(job) == store.job_dir(root, job["job_id"]) / store.JOB_LOG

    handle = executor.start(job, {"CUDA_VISIBLE_DEVICES": "7"})
    assert handle["executor"] == "local" and handle["pgid"] == handle["pid"] and handle["host"]
    assert rf.process_alive(handle["pid"], handle["process_start_time"])
    assert os.getpgid(handle["pid"]) == handle["pid"]  # its own session: a worker restart never kills it
    running = dict(job, state=rf.RUNNING, handle=handle)
    wait_for(lambda: run_state(Path(job["run_dir"])) == rf.RUNNING, what="the job to run")
    assert executor.poll(running) is None
    reader = local.LocalExecutor(root)  # another process's view: no child handle, pid + start time
    assert reader.poll(running) is None
    elsewhere = dict(running, handle=dict(handle, host="some-other-host"))
    assert reader.poll(elsewhere) is None  # a pid of another machine is not looked up here
    with pytest.raises(jobs.JobError, match="runs on some-other-host"):
        reader.cancel(elsewhere, grace_s=1)

    assert executor.cancel(running, grace_s=10) == "graceful"
    assert wait_for(lambda: executor.poll(running), what="the exit code") == {"returncode": 128 + signal.SIGTERM}
    assert reader.poll(running) == {"returncode": None}  # ended; only the parent knew the code
    assert executor.cancel(running, grace_s=1) == "already finished"
    assert "$ " in executor.log_path(job).read_text() and "sleep --seconds 30" in executor.log_path(job).read_text()
    assert rf.read_status(Path(job["run_dir"]))["state"] == rf.CANCELLED


def test_local_executor_reports_a_clean_exit_and_a_forced_cancel(root):
    quick, stubborn = sleep_job(root, 0.1), sleep_job(root, 30)
    executor = local.LocalExecutor(root)
    quick = dict(quick, handle=executor.start(quick, {}))
    assert wait_for(lambda: executor.poll(quick), what="the quick job to end") == {"returncode": 0}

    stubborn["argv"].append("--ignore-sigterm")
    stubborn = dict(stubborn, handle=executor.start(stubborn, {}))
    wait_for(lambda: run_state(Path(stubborn["run_dir"])) == rf.RUNNING, what="the job to run")
    assert executor.cancel(stubborn, grace_s=0.3) == "forced"
    assert wait_for(lambda: executor.poll(stubborn), what="the kill") == {"returncode": -signal.SIGKILL}


# ---------------------------------------------------------------- a fake remote executor

class FakeRemote:
    """A job "on host gpu-node-7": no local pid; its state is whatever the test says."""

    name = "fake-remote"
    ended: dict[str, dict] = {}  # job id -> poll answer once ended, shared by every instance
    started: list[str] = []
    cancelled: list[str] = []

    def __init__(self, runs_root: Path):
        self.runs_root = runs_root

    def start(self, job: dict, env: dict) -> dict:
        self.started.append(job["job_id"])
        return {"executor": self.name, "host": "gpu-node-7", "remote_id": f"r-{len(self.started)}", "pid": "4242@node"}

    def poll(self, job: dict) -> dict | None:
        return self.ended.get(job["job_id"])

    def cancel(self, job: dict, grace_s: float) -> str:
        self.cancelled.append(job["job_id"])
        self.ended[job["job_id"]] = {"returncode": 143}
        return "graceful"

    def log_path(self, job: dict) -> Path:
        return self.runs_root / f"{job['job_id']}.remote.log"


@pytest.fixture
def fake_remote(root, monkeypatch):
    monkeypatch.setitem(executors._FACTORIES, FakeRemote.name, FakeRemote)
    monkeypatch.setattr(FakeRemote, "ended", {})
    monkeypatch.setattr(FakeRemote, "started", [])
    monkeypatch.setattr(FakeRemote, "cancelled", [])
    rf.atomic_write_json(store.jobs_dir(root) / store.SETTINGS_FILE, {"executor": FakeRemote.name})
    return FakeRemote


def test_the_worker_and_readers_trust_the_executor_not_local_pids(root, fake_remote):
    run_dir = root / "remote-run"
    job_id = jobs.enqueue(root, ["train", "--run-dir", str(run_dir)], run_dir=run_dir,
                          prepare_run=(run_dir, {"label": "Remote"}))
    worker = Worker(root, gpu_slots=1, poll_s=0.01, idle_grace_s=0)
    assert worker.step()
    job = jobs.read_job(root, job_id)
    assert fake_remote.started == [job_id]
    assert job["state"] == rf.RUNNING and job["executor"] == FakeRemote.name and job["pid"] is None
    assert job["handle"] == {"executor": FakeRemote.name, "host": "gpu-node-7", "remote_id": "r-1", "pid": "4242@node"}

    # No local process, no worker alive: still running, because its executor says so.
    assert not jobs.worker_running(root)
    assert jobs.read_job(root, job_id)["state"] == rf.RUNNING
    assert [j["state"] for j in jobs.read_jobs(root)] == [rf.RUNNING]
    for _ in range(3):
        assert worker.step()  # a fresh worker pass does not settle it either
    assert store.read_job_file(root, job_id)["state"] == rf.RUNNING
    assert jobs.job_log_tail(root, job_id) == ""  # read from the executor's log path (absent yet)
    (root / f"{job_id}.remote.log").write_text("epoch 1\n")
    assert jobs.job_log_tail(root, job_id) == "epoch 1\n"

    fake_remote.ended[job_id] = {"returncode": 0}
    assert jobs.read_job(root, job_id)["state"] == rf.SUCCEEDED  # a reader sees it at once (nothing written)
    worker.step()
    assert store.read_job_file(root, job_id)["state"] == rf.SUCCEEDED
    assert rf.read_status(run_dir)["state"] == rf.SUCCEEDED  # the run folder is told


def test_cancel_goes_to_the_executor_that_owns_the_job(root, fake_remote):
    job_id = jobs.enqueue(root, ["eval"])
    Worker(root, gpu_slots=1, poll_s=0.01).step()
    assert jobs.cancel(root, job_id, grace_s=1) == {"job_id": job_id, "outcome": "graceful"}
    assert fake_remote.cancelled == [job_id]
    job = store.read_job_file(root, job_id)
    assert job["state"] == rf.CANCELLED and job["cancel_outcome"] == "graceful" and job["returncode"] == 143


def test_a_job_of_an_executor_not_available_here_is_left_as_recorded(root):
    job_id = jobs.enqueue(root, ["eval"])
    store.update_job(root, job_id, lambda job: {"state": rf.RUNNING, "executor": "nowhere",
                                                "handle": {"executor": "nowhere", "host": "x"}})
    assert jobs.read_job(root, job_id)["state"] == rf.RUNNING
    assert Worker(root, poll_s=0.01).step() is False  # nothing it can track: it may exit
    assert store.read_job_file(root, job_id)["state"] == rf.RUNNING
    with pytest.raises(jobs.JobError, match="executor 'nowhere'"):
        jobs.cancel(root, job_id)


def test_workspace_settings_choose_the_executor(root):
    assert executors.workspace_executor_name(root) == "local"
    settings = store.jobs_dir(root) / store.SETTINGS_FILE
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('{"executor": "no-such-kind"}')
    with pytest.raises(jobs.JobError, match="no-such-kind"):
        executors.workspace_executor_name(root)
    settings.write_text("[1")
    with pytest.raises(jobs.JobError, match="unreadable"):
        executors.workspace_executor_name(root)
