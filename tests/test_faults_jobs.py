"""Faults around the queue: a worker killed with SIGKILL, unusable job files, the same sweep
launched from two sessions at once. Real processes, with the sleeping stand-in job."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from engine import jobs
from engine.dashboard import launch
from engine.jobs import store
from engine.runs import folder as rf
from tests.conftest import kill_jobs_left_running, wait_for

PAGES = Path(__file__).resolve().parents[1] / "pages"
FAST_WORKER = {"poll_s": 0.05, "idle_grace_s": 0.3}




def workers_of(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "worker" in cmdline and str(root.resolve()) in cmdline:
            found.append(proc)
    return found


@pytest.fixture
def root(tmp_path):
    workspace = tmp_path / "runs"
    workspace.mkdir()
    yield workspace
    for proc in workers_of(workspace):
        proc.kill()
    kill_jobs_left_running(workspace)


def enqueue_sleep(root: Path, name: str, seconds: float) -> str:
    run_dir = root / name
    return jobs.enqueue(root, ["sleep", "--seconds", str(seconds), "--run-dir", str(run_dir)],
                        module="engine.jobs.sleep_job", run_dir=run_dir, resource="cpu")


def all_finished(root: Path) -> bool:
    states = [job["state"] for job in jobs.read_jobs(root) if job["state"] != jobs.BROKEN]
    return bool(states) and all(state in rf.TERMINAL_STATES for state in states)


# ---------------------------------------------------------------- a worker killed with SIGKILL

@pytest.mark.parametrize("kill_when", ["before it took the lock", "while a job runs", "between two jobs"])
def test_a_worker_killed_at_any_point_is_restarted_and_the_queue_drains(root, kill_when):
    ids = [enqueue_sleep(root, f"run-{n}", 0.6) for n in range(3)]
    pid = jobs.ensure_worker(root, **FAST_WORKER)
    if kill_when == "while a job runs":
        wait_for(lambda: any(j["state"] == rf.RUNNING for j in jobs.read_jobs(root)), what="a running job")
    elif kill_when == "between two jobs":
        wait_for(lambda: jobs.read_job(root, ids[0])["state"] == rf.SUCCEEDED, what="the first job")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not jobs.worker_running(root), what="the worker lock to be free")
    time.sleep(0.5)
    assert not all_finished(root), "the queue must still hold work, or the test tests nothing"
    assert jobs.ensure_worker_if_needed(root) is not None  # what every queue page calls on load
    wait_for(lambda: jobs.worker_running(root), what="the new worker to take the lock")
    assert jobs.ensure_worker_if_needed(root) is None  # a worker runs: one flock probe, nothing started
    wait_for(lambda: all_finished(root), 30, "the queue to drain")
    assert [jobs.read_job(root, job_id)["state"] for job_id in ids] == [rf.SUCCEEDED] * 3
    assert [rf.read_status(root / f"run-{n}")["state"] for n in range(3)] == [rf.SUCCEEDED] * 3


def test_opening_the_overview_restarts_a_dead_worker(root, monkeypatch):
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(root))
    pid = jobs.ensure_worker(root, poll_s=0.05, idle_grace_s=30)
    wait_for(lambda: jobs.worker_running(root), what="the worker")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not jobs.worker_running(root), what="the worker lock to be free")
    # Queued after the worker died (enqueue alone starts none), so only the page can serve it.
    job_id = enqueue_sleep(root, "after-restart", 0.2)
    time.sleep(0.3)
    assert jobs.read_job(root, job_id)["state"] == rf.QUEUED and not jobs.worker_running(root)
    at = AppTest.from_file(str(PAGES / "overview.py"), default_timeout=60).run()
    assert not at.exception
    wait_for(lambda: jobs.read_job(root, job_id)["state"] == rf.SUCCEEDED, 30, "the job to run")


# ---------------------------------------------------------------- unusable job files

def write_broken_jobs(root: Path) -> dict[str, bytes]:
    """One folder per kind of damage; returns folder name -> the exact bytes written."""
    template = store.read_job_file(root, jobs.enqueue(root, ["summary"]))
    store.update_job(root, template["job_id"], lambda job: {"state": rf.CANCELLED})  # out of the way

    def as_job(name: str, **changes) -> bytes:
        job = {**template, "job_id": name, **changes}
        return json.dumps({k: v for k, v in job.items() if v is not ...}).encode()

    damage = {
        "20000101-000000-000001-list": b"[]",
        "20000101-000000-000002-noargv": as_job("20000101-000000-000002-noargv", argv=..., state=rf.QUEUED),
        "20000101-000000-000003-slot": as_job("20000101-000000-000003-slot", state=rf.RUNNING, slot="zero",
                                              pid=1, process_start_time=1.0),
        "20000101-000000-000004-json": b'{"job_id": "20000101-000000-000004-json", "argv": [',
        "20000101-000000-000005-junk": bytes(range(128, 256)) * 4,
    }
    for name, content in damage.items():
        (store.jobs_dir(root) / name).mkdir()
        (store.jobs_dir(root) / name / store.JOB_FILE).write_bytes(content)
    return damage


def test_unusable_job_files_are_listed_as_broken_and_the_good_jobs_still_run(root):
    damage = write_broken_jobs(root)
    good = enqueue_sleep(root, "good", 0.1)

    broken = {job["job_id"]: job for job in jobs.broken_jobs(root)}
    assert set(broken) == set(damage)
    reasons = {name: job["error"] for name, job in broken.items()}
    assert "not a JSON object but list" in reasons["20000101-000000-000001-list"]
    assert "argv is missing" in reasons["20000101-000000-000002-noargv"]
    assert "slot 'zero'" in reasons["20000101-000000-000003-slot"]
    assert "corrupt JSON" in reasons["20000101-000000-000004-json"]
    assert "corrupt JSON" in reasons["20000101-000000-000005-junk"]
    for name, job in broken.items():
        assert job["state"] == jobs.BROKEN and str(store.jobs_dir(root) / name) in job["error"]
    listed = jobs.read_jobs(root)
    assert {job["job_id"] for job in listed if job["state"] == jobs.BROKEN} == set(damage)
    assert [job["job_id"] for job in jobs.active_jobs(root)] == [good]
    rows = launch.job_rows(listed)
    assert {row["state"] for row in rows if row["job"] in damage} == {jobs.BROKEN}
    with pytest.raises(jobs.JobError, match="not a JSON object"):
        jobs.cancel(root, "20000101-000000-000001-list")
    assert jobs.job_log_tail(root, "20000101-000000-000001-list") == ""

    assert jobs.run_worker(root, once=True, poll_s=0.05) == 0
    assert jobs.read_job(root, good)["state"] == rf.SUCCEEDED
    for name, content in damage.items():  # looked at, never rewritten
        assert (store.jobs_dir(root) / name / store.JOB_FILE).read_bytes() == content


@pytest.mark.parametrize("page_name", ["overview", "train", "evaluate"])
def test_pages_render_next_to_unusable_job_files(root, monkeypatch, no_worker, page_name):
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(root))
    damage = write_broken_jobs(root)
    good = jobs.enqueue(root, ["eval", "--run", "x"], run_dir=root / "x")
    at = AppTest.from_file(str(PAGES / f"{page_name}.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    warnings = " ".join(str(w.value) for w in at.warning)
    assert f"{len(damage)} job file(s) could not be read" in warnings
    assert all(name in warnings for name in damage)
    assert no_worker == [root]  # the queued good job got a worker
    assert jobs.read_job(root, good)["state"] == rf.QUEUED


# ---------------------------------------------------------------- the same sweep from two sessions

def _launch_sweep(root: str, cells: list[dict], barrier, results) -> None:
    barrier.wait()
    try:
        results.put(("ok", jobs.enqueue_sweep(Path(root), cells)))
    except BaseException as exc:  # noqa: BLE001 (reported to the test)
        results.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_two_sessions_launching_the_same_sweep_queue_it_once(tmp_path, attempt):
    root = tmp_path / "runs"
    root.mkdir()
    cells = jobs.expand_sweep({"lora_r": 8, "lora_alpha": 16}, {"seed": [1, 2, 3, 4, 5, 6]})
    names = sorted(cell["run_name"] for cell in cells)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    launchers = [context.Process(target=_launch_sweep, args=(str(root), cells, barrier, results)) for _ in range(2)]
    for process in launchers:
        process.start()
    outcomes = [results.get(timeout=60) for _ in launchers]
    for process in launchers:
        process.join(timeout=30)

    assert [kind for kind, _ in outcomes] == ["ok", "ok"], outcomes
    winner, loser = sorted((result for _, result in outcomes), key=lambda r: len(r["enqueued"]), reverse=True)
    assert sorted(winner["enqueued"]) == names
    assert loser["enqueued"] == {} and loser["skipped"] == {name: jobs.ALREADY_QUEUED for name in names}
    assert "already queued" in launch.sweep_launch_message(loser)
    queued = jobs.read_jobs(root)
    assert sorted(Path(job["run_dir"]).name for job in queued) == names  # one set of jobs, none broken
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == names  # no .attemptN
    for name in names:
        assert rf.read_status(root / name)["state"] == rf.QUEUED
        assert rf.read_json(root / name / rf.CONFIG)["seed"] in range(1, 7)
    assert not (store.jobs_dir(root) / store.SWEEP_LOCK).exists()


def test_the_sweep_lock_names_its_holder_and_is_taken_over_when_the_holder_died(tmp_path):
    lock = tmp_path / "sweep.lock"
    with store.exclusive_lock_file(lock):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(jobs.LockBusyError, match=f"process {os.getpid()}"):
            with store.exclusive_lock_file(lock, timeout_s=0.2):
                pass
    assert not lock.exists()

    dead = multiprocessing.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    lock.write_text(json.dumps({"host": holder["host"], "pid": dead.pid, "created": time.time()}))
    with store.exclusive_lock_file(lock, timeout_s=1):  # its holder is gone: taken over at once
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text("")  # a holder that died between creating and writing it
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with store.exclusive_lock_file(lock, timeout_s=1):
        pass


def test_reading_a_workspace_without_a_queue_creates_nothing(tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    assert jobs.read_jobs(root) == [] and jobs.active_jobs(root) == [] and jobs.broken_jobs(root) == []
    assert not jobs.worker_running(root) and jobs.ensure_worker_if_needed(root) is None
    assert list(root.iterdir()) == []
