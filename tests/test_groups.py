"""Shared-base groups in the queue: a sweep's jobs claimed by one process on one slot, each member
still its own job (state, cancel, crash, log, listing).

The group process is the stand-in `python -m engine.jobs.sleep_job group` (no torch): it runs its
members' own `sleep` argv one after another through groups.start_member / cancel_requested,
exactly as `engine train-group` must.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from engine import jobs
from engine.dashboard import launch
from engine.jobs import executor as executors
from engine.jobs import groups, store
from engine.jobs.worker import Worker
from engine.runs import folder as rf
from tests.conftest import kill_jobs_left_running, wait_for

FAST_WORKER = {"poll_s": 0.05, "idle_grace_s": 0.5}


@pytest.fixture
def root(tmp_path):
    workspace = tmp_path / "runs"
    workspace.mkdir()
    yield workspace
    kill_jobs_left_running(workspace)
    deadline = time.monotonic() + 5
    while jobs.worker_running(workspace) and time.monotonic() < deadline:
        time.sleep(0.05)


def member(root: Path, name: str, seconds: float, group: str | None = "sweep-g") -> str:
    """Queue a stand-in training job of `group` whose run folder is prepared "queued", as a sweep's."""
    run_dir = root / name
    return jobs.enqueue(root, ["sleep", "--seconds", str(seconds), "--run-dir", str(run_dir)],
                        module="engine.jobs.sleep_job", prepare_run=(run_dir, {"label": name}), group=group)


def job(root: Path, job_id: str) -> dict:
    return jobs.read_job(root, job_id)


def recorded(root: Path, job_id: str) -> dict:
    """job.json as written (a reader may reconcile; this is what the worker recorded)."""
    return store.read_job_file(root, job_id)


def run_state(root: Path, name: str) -> str | None:
    """The run folder's state as written by the process or the queue (not reconciled)."""
    try:
        return rf.read_json(root / name / rf.STATUS)["state"]
    except FileNotFoundError:
        return None


def alive(handle: dict) -> bool:
    return rf.process_alive(handle["pid"], handle["process_start_time"])


# ---------------------------------------------------------------- enqueue

def test_a_shared_base_sweep_gives_every_cell_the_sweep_as_its_group(root, tmp_path, no_worker):
    data = tmp_path / "train.csv"
    data.write_text("path,label\na.wav,SPEECH\n")
    cells = [{"run_name": f"attn-r16-a32-s{seed}", "config": {"model": "tiny", "seed": seed, "train_data": str(data)}}
             for seed in (1, 2)]
    cells.append({"run_name": "two-gpus", "config": {"model": "tiny", "seed": 3, "num_processes": 2}})
    result = jobs.enqueue_sweep(root, cells, sweep_id="sweep-shared", share_base=True)
    queued = {Path(j["run_dir"]).name: j for j in jobs.read_jobs(root)}
    assert {name: j["group"] for name, j in queued.items()} == {
        "attn-r16-a32-s1": "sweep-shared", "attn-r16-a32-s2": "sweep-shared",
        "two-gpus": None}  # a run on several GPUs relaunches through accelerate: it runs alone
    for name, j in queued.items():  # each cell stays its own job, runnable alone
        assert j["argv"] == ["train", "--config", str(root / name / rf.CONFIG), "--run-dir", str(root / name)]
        assert j["job_id"] == result["enqueued"][name] and j["log"].endswith(f"{j['job_id']}/output.log")

    plain = jobs.enqueue_sweep(root, [dict(cells[0], run_name="plain-s1")], sweep_id="sweep-plain")
    assert job(root, plain["enqueued"]["plain-s1"])["group"] is None  # share_base is off by default

    # The Train page's launch: a single run never becomes a group of one.
    launch.submit_sweep(root, [dict(cells[0], run_name="alone-s1")], share_base=True, sweep_id="sweep-one")
    launch.submit_sweep(root, [dict(cells[0], run_name=f"pair-s{s}") for s in (1, 2)], share_base=True,
                        sweep_id="sweep-two")
    groups_by_run = {Path(j["run_dir"]).name: j["group"] for j in jobs.read_jobs(root)}
    assert groups_by_run["alone-s1"] is None and groups_by_run["pair-s1"] == groups_by_run["pair-s2"] == "sweep-two"


def test_the_group_process_is_engine_train_group_over_the_claimed_jobs(root):
    ids = [jobs.enqueue(root, ["train", "--run-dir", str(root / f"r{i}")], group="sweep-x") for i in range(2)]
    members = [recorded(root, i) for i in ids]
    assert groups.group_command(root, members) == ("engine", ["train-group", "--runs-dir", str(root), *ids])
    assert groups.can_group(members[0])
    assert not groups.can_group(recorded(root, jobs.enqueue(root, ["eval", "--run-dir", "x"], group="sweep-x")))
    assert not groups.can_group(recorded(root, jobs.enqueue(root, ["train"])))  # no group


def test_group_fields_of_a_job_file_are_validated(root):
    good = recorded(root, jobs.enqueue(root, ["train"], group="sweep-x"))
    assert store.job_problem(good, good["job_id"]) is None
    for fields, reason in (({"group": 7}, "group 7 is not text"),
                           ({"group": ""}, "group is empty"),
                           ({"member_started_at": 3}, "member_started_at 3 is not text"),
                           ({"group_members": "abc"}, "group_members 'abc' is not a non-empty list of job ids"),
                           ({"group_members": []}, "group_members [] is not a non-empty list"),
                           ({"group_members": ["a", 2]}, "group_members ['a', 2] is not")):
        assert reason in store.job_problem(dict(good, **fields), good["job_id"])
    rf.atomic_write_json(store.job_dir(root, good["job_id"]) / store.JOB_FILE, dict(good, group=["sweep-x"]))
    (broken,) = jobs.broken_jobs(root)
    assert broken["job_id"] == good["job_id"] and "group ['sweep-x'] is not text" in broken["error"]
    with pytest.raises(jobs.JobError, match="group must be a non-empty name"):
        jobs.enqueue(root, ["train"], group="")


# ---------------------------------------------------------------- the worker

def test_one_worker_pass_starts_one_process_for_a_three_member_group_on_one_slot(root):
    ids = [member(root, name, 0.2) for name in ("a", "b", "c")]
    alone = member(root, "alone", 30, group=None)
    worker = Worker(root, gpu_slots=2, poll_s=0.01)
    assert worker.step()
    claimed = [recorded(root, i) for i in ids]
    assert {j["state"] for j in claimed} == {rf.RUNNING}
    handle = claimed[0]["handle"]
    assert all(j["handle"] == handle and j["pid"] == handle["pid"] for j in claimed)  # ONE process
    assert {j["slot"] for j in claimed} == {0} and len({j["started_at"] for j in claimed}) == 1
    assert all(j["group_members"] == ids for j in claimed)
    assert {j["log"] for j in claimed} == {str(store.job_dir(root, ids[0]) / store.JOB_LOG)}
    assert recorded(root, alone)["slot"] == 1  # the group used one slot: the other job runs beside it
    log = Path(claimed[0]["log"]).read_text()
    assert f"-m engine.jobs.sleep_job group --runs-dir {root} {' '.join(ids)}" in log

    wait_for(lambda: worker.step() and all(recorded(root, i)["state"] == rf.SUCCEEDED for i in ids),
             what="the three members to succeed")
    assert [run_state(root, n) for n in ("a", "b", "c")] == [rf.SUCCEEDED] * 3
    assert all(recorded(root, i)["member_started_at"] for i in ids)
    assert all(recorded(root, i)["returncode"] is None for i in ids)  # the group's exit code is no run's
    jobs.cancel(root, alone, grace_s=5)


def test_a_full_disk_while_claiming_a_group_never_starts_a_second_process(root, monkeypatch):
    ids = [member(root, name, 0.3) for name in ("a", "b", "c")]
    real_write, writes = rf.atomic_write_text, []

    def write(path, text, *args, **kwargs):
        if Path(path).name == store.JOB_FILE:
            writes.append(Path(path).parent.name)
            if len(writes) == 2:  # the second member's running state hits a full disk
                raise OSError(28, "No space left on device", str(path))
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(rf, "atomic_write_text", write)
    worker = Worker(root, gpu_slots=2, poll_s=0.01)
    with pytest.raises(OSError, match="No space"):
        worker.step()  # run() retries such a pass; the process has started
    assert [recorded(root, i)["state"] for i in ids] == [rf.RUNNING, rf.QUEUED, rf.QUEUED]
    worker.step()  # space again: the other two are recorded as members of that process, none started anew
    handles = [recorded(root, i)["handle"] for i in ids]
    assert handles[0] == handles[1] == handles[2] and len(worker.executor("local").children) == 1
    assert all(recorded(root, i)["group_members"] == ids and recorded(root, i)["slot"] == 0 for i in ids)
    wait_for(lambda: worker.step() and all(recorded(root, i)["state"] == rf.SUCCEEDED for i in ids),
             what="the group to end")


def test_a_group_is_claimed_only_once_its_sweep_is_fully_queued(root):
    first = member(root, "a", 0.2)
    with store.exclusive_lock_file(store.jobs_dir(root) / store.SWEEP_LOCK):  # the sweep is being queued
        worker = Worker(root, gpu_slots=1, poll_s=0.01)
        assert worker.step()  # waiting, not idle
        assert recorded(root, first)["state"] == rf.QUEUED
        second = member(root, "b", 0.2)
    worker.step()
    assert recorded(root, first)["group_members"] == [first, second]
    wait_for(lambda: worker.step() and recorded(root, second)["state"] == rf.SUCCEEDED, what="the group to end")


def test_members_end_one_by_one_and_a_cancel_of_the_running_member_spares_the_process(root):
    ids = a, b, c = [member(root, "a", 0.2), member(root, "b", 30), member(root, "c", 30)]
    jobs.ensure_worker(root, **FAST_WORKER)
    wait_for(lambda: job(root, a)["state"] == rf.SUCCEEDED, what="the first member to succeed")
    wait_for(lambda: run_state(root, "b") == rf.RUNNING, what="the second member to start")
    handle = recorded(root, b)["handle"]
    assert alive(handle) and recorded(root, c)["handle"] == handle
    waiting = job(root, c)
    assert waiting["state"] == rf.RUNNING and run_state(root, "c") == rf.QUEUED and jobs.waiting_in_group(waiting)
    assert launch.job_wait_note(waiting) == " (waiting in shared-base group)"
    assert launch.job_wait_note(job(root, b)) == ""

    assert jobs.cancel(root, b, grace_s=10) == {"job_id": b, "outcome": "graceful"}
    ended = recorded(root, b)
    assert ended["state"] == rf.CANCELLED and ended["cancel_outcome"] == "graceful" and run_state(root, "b") == rf.CANCELLED
    assert alive(handle)  # the shared process was not signalled: it goes on with the next member
    wait_for(lambda: run_state(root, "c") == rf.RUNNING, what="the third member to start")
    assert job(root, c)["state"] == rf.RUNNING and not jobs.waiting_in_group(job(root, c))

    # The last active member: stopped like any job (the process gets the SIGTERM).
    assert jobs.cancel(root, c, grace_s=10) == {"job_id": c, "outcome": "graceful"}
    assert recorded(root, c)["state"] == rf.CANCELLED and run_state(root, "c") == rf.CANCELLED
    wait_for(lambda: not alive(handle), 5, "the shared process to exit")
    assert [recorded(root, i)["state"] for i in ids] == [rf.SUCCEEDED, rf.CANCELLED, rf.CANCELLED]
    assert jobs.job_log_tail(root, c) == jobs.job_log_tail(root, a)  # one log, the group's


def test_cancel_of_a_waiting_member_is_at_once_and_never_touches_the_process(root):
    a, b, c = member(root, "a", 30), member(root, "b", 30), member(root, "c", 0.2)
    jobs.ensure_worker(root, **FAST_WORKER)
    wait_for(lambda: run_state(root, "a") == rf.RUNNING, what="the first member to start")
    handle = recorded(root, a)["handle"]

    started = time.monotonic()
    assert jobs.cancel(root, b, grace_s=10) == {"job_id": b, "outcome": "dequeued"}
    assert time.monotonic() - started < 2
    cancelled = recorded(root, b)
    assert cancelled["state"] == rf.CANCELLED and cancelled["cancel_outcome"] == "dequeued"
    assert run_state(root, "b") == rf.CANCELLED and alive(handle) and job(root, a)["state"] == rf.RUNNING
    assert launch.job_rows([cancelled])[0]["cancel"] == "dequeued"

    assert jobs.cancel(root, a, grace_s=10)["outcome"] == "graceful"  # c is still to come: no signal
    wait_for(lambda: job(root, c)["state"] == rf.SUCCEEDED, what="the last member to run and succeed")
    assert recorded(root, b).get("member_started_at") is None  # skipped: the process never started it
    assert [run_state(root, n) for n in ("a", "b", "c")] == [rf.CANCELLED, rf.CANCELLED, rf.SUCCEEDED]
    wait_for(lambda: not alive(handle), 5, "the shared process to exit once its members are done")


def test_the_process_killed_mid_group_crashes_the_started_member_and_fails_the_waiting_ones(root):
    a, b, c, d = (member(root, n, s) for n, s in (("a", 0.2), ("b", 30), ("c", 30), ("d", 30)))
    jobs.ensure_worker(root, **FAST_WORKER)
    wait_for(lambda: run_state(root, "b") == rf.RUNNING, what="the second member to start")
    os.killpg(recorded(root, b)["pgid"], signal.SIGKILL)

    wait_for(lambda: all(recorded(root, i)["state"] in rf.TERMINAL_STATES for i in (b, c, d)), what="final states")
    assert recorded(root, a)["state"] == rf.SUCCEEDED
    crashed = recorded(root, b)
    assert crashed["state"] == rf.CRASHED and crashed["returncode"] == -signal.SIGKILL
    assert "the shared-base process ended without a final state for this run (killed by signal SIGKILL" in crashed["error"]
    for never in (c, d):
        failed = recorded(root, never)
        assert failed["state"] == rf.FAILED and failed["error"] == (
            f"the shared-base process ended before this run started (killed by signal SIGKILL, log: {failed['log']})")
    # The run folders agree: nothing is left looking running or complete.
    assert [run_state(root, n) for n in "abcd"] == [rf.SUCCEEDED, rf.CRASHED, rf.FAILED, rf.FAILED]
    assert rf.read_status(root / "c")["error"].startswith("the shared-base process ended before this run started")
    assert {r.run_id: r.state for r in rf.list_runs(root)} == dict(zip("abcd", [rf.SUCCEEDED, rf.CRASHED, rf.FAILED,
                                                                                   rf.FAILED]))


def test_with_no_worker_a_reader_sees_each_member_as_its_run_and_the_process_have_it(root):
    a, b, c = member(root, "a", 0.2), member(root, "b", 30), member(root, "c", 30)
    Worker(root, gpu_slots=1, poll_s=0.01).step()  # a pass, then no worker watches
    wait_for(lambda: run_state(root, "b") == rf.RUNNING, what="the second member to start")
    assert not jobs.worker_running(root)
    assert [job(root, i)["state"] for i in (a, b, c)] == [rf.SUCCEEDED, rf.RUNNING, rf.RUNNING]
    assert recorded(root, a)["state"] == rf.RUNNING  # read, not written

    os.killpg(recorded(root, b)["pgid"], signal.SIGKILL)
    wait_for(lambda: job(root, b)["state"] == rf.CRASHED, 5, "a reader to see the crash")
    assert job(root, c)["state"] == rf.FAILED and "exit code unknown" in job(root, c)["error"]  # not its parent
    assert jobs.run_worker(root, once=True, poll_s=0.05) == 0  # the next worker writes it
    assert [recorded(root, i)["state"] for i in (a, b, c)] == [rf.SUCCEEDED, rf.CRASHED, rf.FAILED]
    assert [run_state(root, n) for n in "abc"] == [rf.SUCCEEDED, rf.CRASHED, rf.FAILED]


class NoGroups:
    """An executor kind without `runs_groups` (like Slurm): each job starts alone, nothing runs."""

    name = "no-groups"
    started: list[dict] = []

    def __init__(self, runs_root: Path):
        self.runs_root = runs_root

    def start(self, job: dict, env: dict) -> dict:
        self.started.append(job)
        return {"executor": self.name, "remote_id": job["job_id"]}

    def poll(self, job: dict) -> dict | None:
        return None

    def cancel(self, job: dict, grace_s: float) -> str:
        return "graceful"

    def log_path(self, job: dict) -> Path:
        return self.runs_root / f"{job['job_id']}.log"


def test_a_group_runs_each_member_alone_where_the_executor_does_not_run_groups(root, monkeypatch):
    monkeypatch.setitem(executors._FACTORIES, NoGroups.name, NoGroups)
    monkeypatch.setattr(NoGroups, "started", [])
    rf.atomic_write_json(store.jobs_dir(root) / store.SETTINGS_FILE, {"executor": NoGroups.name})
    ids = [member(root, n, 30) for n in ("a", "b", "c")]
    Worker(root, gpu_slots=3, poll_s=0.01).step()
    assert [j["job_id"] for j in NoGroups.started] == ids
    assert [j["argv"][0] for j in NoGroups.started] == ["sleep"] * 3  # each its own argv, no group process
    assert [recorded(root, i)["slot"] for i in ids] == [0, 1, 2]
    assert all(recorded(root, i).get("group_members") is None for i in ids)


# ---------------------------------------------------------------- the group process's side

def test_start_member_claims_a_running_member_once_and_never_a_cancelled_one(root):
    a, b = member(root, "a", 30), member(root, "b", 30)
    assert groups.start_member(root, a) is None  # still queued: not claimed by a worker
    store.update_jobs(root, lambda current: {j["job_id"]: {"state": rf.RUNNING, "group_members": [a, b]}
                                             for j in current})
    started = groups.start_member(root, a)
    assert started["job_id"] == a and started["member_started_at"]
    assert groups.start_member(root, a) is None  # never twice
    assert not groups.cancel_requested(root, a)
    assert jobs.cancel(root, b)["outcome"] == "dequeued"
    assert groups.start_member(root, b) is None and groups.cancel_requested(root, b)
    assert groups.start_member(root, "no-such-job") is None
