"""The job queue with real processes: a sleeping stand-in job instead of training.

Every test runs its jobs under a temporary workspace and kills whatever is still alive at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine import cli
from engine import jobs
from engine.jobs import local, store
from engine.config import TrainConfig
from engine.runs import folder as rf
from tests.conftest import wait_for

FAST_WORKER = {"poll_s": 0.05, "idle_grace_s": 0.5}


def enqueue_sleep(root: Path, seconds: float, run_dir: Path | None = None, ignore_sigterm: bool = False,
                  spawn_child: bool = False, **kwargs) -> str:
    """Queue `python -m engine.jobs.sleep_job sleep ...`, the stand-in for a training job."""
    argv = ["sleep", "--seconds", str(seconds)]
    if run_dir is not None:
        argv += ["--run-dir", str(run_dir)]
    argv += ["--ignore-sigterm"] * ignore_sigterm + ["--spawn-child"] * spawn_child
    return jobs.enqueue(root, argv, module="engine.jobs.sleep_job", run_dir=run_dir, **kwargs)




def job_state(root: Path, job_id: str) -> str:
    return jobs.read_job(root, job_id)["state"]


def run_state(run_dir: Path) -> str | None:
    """The run's state as the dashboard reads it; None until the job has written status.json."""
    try:
        return rf.read_status(run_dir)["state"]
    except FileNotFoundError:
        return None


def group_members(pgid: int, not_before: float) -> list[int]:
    """Live processes of a job's group (started with or after the job: never a reused id)."""
    members = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["create_time"] >= not_before - 1:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


@pytest.fixture
def root(tmp_path):
    workspace = tmp_path / "runs"
    workspace.mkdir()
    yield workspace
    # Clean-up: kill what is left of every job's process group, then let the workers exit.
    for job in store.raw_jobs(workspace):
        if job.get("pgid") and group_members(job["pgid"], job["process_start_time"]):
            os.killpg(job["pgid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while jobs.worker_running(workspace) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_worker_starts_queued_job_and_a_fresh_reader_sees_it_running(root):
    run_dir = root / "run-a"
    job_id = enqueue_sleep(root, 30, run_dir, spawn_child=True)
    assert job_state(root, job_id) == rf.QUEUED
    assert jobs.ensure_worker(root, **FAST_WORKER) is not None

    wait_for(lambda: job_state(root, job_id) == rf.RUNNING, what="the job to run")
    job = jobs.read_jobs(root)[0]  # a new read: what a reloaded dashboard sees
    assert job["job_id"] == job_id and job["pid"] and job["pgid"] == job["pid"]
    assert rf.process_alive(job["pid"], job["process_start_time"])
    wait_for(lambda: run_state(run_dir) == rf.RUNNING, what="the run to record running")
    helper = rf.read_status(run_dir)["child_pid"]
    assert jobs.ensure_worker(root, **FAST_WORKER) is None  # one worker per workspace

    result = jobs.cancel(root, job_id, grace_s=10)
    assert result == {"job_id": job_id, "outcome": "graceful"}
    job = jobs.read_job(root, job_id)
    assert job["state"] == rf.CANCELLED and job["cancel_outcome"] == "graceful"
    assert job["returncode"] is not None and job["ended_at"]
    assert rf.read_status(run_dir)["state"] == rf.CANCELLED  # written by the job's own `finally`
    wait_for(lambda: local._process_state(helper, None) != "alive", 5, "the job's helper process to die")
    assert "sleep --seconds 30" in Path(job["log"]).read_text()


def test_cancel_of_a_queued_job_dequeues_it_and_it_never_starts(root):
    run_dir = root / "run-q"
    job_id = jobs.enqueue(root, ["train", "--run-dir", str(run_dir)],
                          prepare_run=(run_dir, {"label": "Attention-Only", "lora_r": 8}))
    assert rf.read_json(run_dir / rf.CONFIG)["kind"] == rf.KIND_TRAIN
    assert [r.state for r in rf.list_runs(root)] == [rf.QUEUED]  # .jobs is not listed as a run

    assert jobs.cancel(root, job_id)["outcome"] == "dequeued"
    assert jobs.run_worker(root, once=True, poll_s=0.05) == 0
    job = jobs.read_job(root, job_id)
    assert job["state"] == rf.CANCELLED and job["pid"] is None
    assert rf.read_status(run_dir)["state"] == rf.CANCELLED
    assert jobs.cancel(root, job_id)["outcome"] == "already finished"


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(root):
    run_dir = root / "stubborn"
    job_id = enqueue_sleep(root, 30, run_dir, ignore_sigterm=True)
    jobs.ensure_worker(root, **FAST_WORKER)
    wait_for(lambda: run_state(run_dir) == rf.RUNNING, what="the job to run")

    started = time.monotonic()
    assert jobs.cancel(root, job_id, grace_s=0.5)["outcome"] == "forced"
    assert time.monotonic() - started < 8
    job = jobs.read_job(root, job_id)
    assert job["state"] == rf.CANCELLED and job["cancel_outcome"] == "forced"
    assert job["returncode"] == -signal.SIGKILL
    # The job never wrote a final state, so the worker did.
    assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.CANCELLED


def test_a_job_killed_from_outside_ends_crashed(root):
    run_dir = root / "killed"
    job_id = enqueue_sleep(root, 30, run_dir)
    jobs.ensure_worker(root, **FAST_WORKER)
    wait_for(lambda: run_state(run_dir) == rf.RUNNING, what="the job to run")
    job = jobs.read_job(root, job_id)

    os.killpg(job["pgid"], signal.SIGKILL)
    wait_for(lambda: job_state(root, job_id) in rf.TERMINAL_STATES, what="a final state")
    job = jobs.read_job(root, job_id)
    assert job["state"] == rf.CRASHED and "SIGKILL" in job["error"] and job["returncode"] == -signal.SIGKILL
    assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.CRASHED


def test_a_dead_job_reads_as_crashed_at_once_and_the_next_worker_records_it(root):
    """No worker watching (e.g. the machine rebooted): the next read reports the crash."""
    run_dir = root / "orphan"
    job_id = enqueue_sleep(root, 30, run_dir)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    fields = {"state": rf.RUNNING, "pid": gone.pid, "pgid": gone.pid, "process_start_time": time.time() - 5}
    store.update_job(root, job_id, lambda job: fields)
    rf.write_status(run_dir, rf.RUNNING, pid=gone.pid, process_start_time=fields["process_start_time"])

    assert job_state(root, job_id) == rf.CRASHED
    assert rf.read_json(store.job_dir(root, job_id) / store.JOB_FILE)["state"] == rf.RUNNING  # not written
    assert jobs.run_worker(root, once=True, poll_s=0.05) == 0
    assert rf.read_json(store.job_dir(root, job_id) / store.JOB_FILE)["state"] == rf.CRASHED
    assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.CRASHED


def test_a_job_that_ends_never_overwrites_a_run_another_job_or_process_is_writing(root):
    """A job that failed because its run name was taken must not give that run its failure: not when
    another queued or running job writes the folder, and not when a live process recorded it."""
    run_dir = root / "taken"
    loser = enqueue_sleep(root, 1, run_dir)
    owner = enqueue_sleep(root, 1, run_dir, prepare_run=(run_dir, {"kind": "train"}))
    assert run_state(run_dir) == rf.QUEUED
    store._sync_run_status(jobs.read_job(root, loser), rf.FAILED, "run folder already exists")
    assert run_state(run_dir) == rf.QUEUED  # the owner's queued run is intact

    rf.write_status(run_dir, rf.RUNNING, pid=os.getpid(), process_start_time=rf.process_start_time(os.getpid()))
    jobs.cancel(root, owner)  # no other job now: only the live process protects it
    store._sync_run_status(jobs.read_job(root, loser), rf.FAILED, "run folder already exists")
    assert run_state(run_dir) == rf.RUNNING

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rf.write_status(run_dir, rf.RUNNING, pid=gone.pid, process_start_time=time.time() - 5)
    store._sync_run_status(jobs.read_job(root, loser), rf.FAILED, "exited with code 1")
    assert run_state(run_dir) == rf.FAILED  # its own, dead process: the job's end is the run's


def test_racing_launches_never_run_two_gpu_jobs_on_one_slot(root):
    job_ids: list[str] = []

    def launch(name: str) -> None:
        job_ids.append(enqueue_sleep(root, 0.8, root / name))
        jobs.ensure_worker(root, gpu_slots=1, **FAST_WORKER)

    threads = [threading.Thread(target=launch, args=(n,)) for n in ("race-1", "race-2")]
    for t in threads:
        t.start()
    # A third worker started on purpose: it must find the lock taken.
    extra = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--runs-dir", str(root),
                              "--gpu-slots", "1", "--poll", "0.05", "--idle-grace", "0.5"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for t in threads:
        t.join()

    most_running, seen_running = 0, set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = jobs.read_jobs(root)
        running = [j for j in states if j["state"] == rf.RUNNING and j["resource"] == "gpu"]
        most_running = max(most_running, len(running))
        seen_running.update(j["job_id"] for j in running)
        if len(states) == 2 and all(j["state"] in rf.TERMINAL_STATES for j in states):
            break
        time.sleep(0.02)
    extra.wait(timeout=10)

    final = jobs.read_jobs(root)
    assert [j["state"] for j in final] == [rf.SUCCEEDED, rf.SUCCEEDED]
    assert most_running == 1 and seen_running == set(job_ids)
    assert all(j["slot"] == 0 for j in final)


def test_each_gpu_slot_gets_its_own_visible_device(root, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    first, second = enqueue_sleep(root, 0.3), enqueue_sleep(root, 0.3)
    cpu_job = enqueue_sleep(root, 0.3, resource="cpu")
    assert jobs.run_worker(root, once=True, poll_s=0.05) == 0  # 2 GPU slots from the variable

    done = {j["job_id"]: j for j in jobs.read_jobs(root)}
    assert {done[first]["cuda_visible_devices"], done[second]["cuda_visible_devices"]} == {"3", "5"}
    assert done[cpu_job]["cuda_visible_devices"] is None and done[cpu_job]["resource"] == "cpu"
    assert all(j["state"] == rf.SUCCEEDED for j in done.values())


def test_jobs_per_gpu_runs_that_many_side_by_side_on_each_gpu(root, monkeypatch):
    from engine.jobs.executor import write_jobs_per_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    write_jobs_per_gpu(root, 2)
    ids = [enqueue_sleep(root, 1.5) for _ in range(4)]
    assert jobs.run_worker(root, once=True, poll_s=0.05) == 0

    done = [j for j in jobs.read_jobs(root) if j["job_id"] in ids]
    assert sorted(j["cuda_visible_devices"] for j in done) == ["3", "3", "5", "5"]
    assert sorted(j["slot"] for j in done) == [0, 1, 2, 3]
    assert all(j["gpu_share"] == 2 and j["state"] == rf.SUCCEEDED for j in done)
    assert max(j["started_at"] for j in done) < min(j["ended_at"] for j in done)  # all four at once


def test_a_bad_jobs_per_gpu_setting_is_named_and_one_job_per_gpu_runs(root, monkeypatch):
    from engine.jobs.executor import jobs_per_gpu, write_jobs_per_gpu

    for bad in (0, 17, True, "2"):
        with pytest.raises(jobs.JobError, match="jobs per GPU|jobs_per_gpu"):
            write_jobs_per_gpu(root, bad)
    settings = store.jobs_dir(root) / store.SETTINGS_FILE
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('{"executor": "local", "jobs_per_gpu": "many"}')
    with pytest.raises(jobs.JobError, match="jobs_per_gpu must be a whole number"):
        jobs_per_gpu(root)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    first, second = enqueue_sleep(root, 0.3), enqueue_sleep(root, 0.3)
    assert jobs.run_worker(root, once=True, poll_s=0.05) == 0
    done = {j["job_id"]: j for j in jobs.read_jobs(root)}
    assert done[first]["gpu_share"] == done[second]["gpu_share"] == 1
    assert done[first]["ended_at"] <= done[second]["started_at"] or done[second]["ended_at"] <= done[first]["started_at"]


def test_a_second_worker_returns_at_once_while_the_lock_is_held(root):
    lock = store.try_lock(store.jobs_dir(root) / store.WORKER_LOCK)
    try:
        started = time.monotonic()
        assert jobs.run_worker(root, idle_grace_s=30) == 0
        assert time.monotonic() - started < 2
        assert jobs.worker_running(root)
    finally:
        os.close(lock)
    assert not jobs.worker_running(root)


def test_queue_command_enqueues_the_arguments_after_the_separator(root, capsys):
    code = cli.main(["queue", "--runs-dir", str(root), "--resource", "cpu", "--no-worker", "--json",
                     "--", "summary", "--run", "x", "--eval-name", "test"])
    assert code == 0
    job = json.loads(capsys.readouterr().out)
    assert job["argv"] == ["summary", "--run", "x", "--eval-name", "test"]
    assert job["resource"] == "cpu" and job["state"] == rf.QUEUED
    assert cli.main(["queue", "--runs-dir", str(root), "--no-worker"]) == 2


def test_job_ids_sort_by_creation_and_cannot_leave_the_queue(root):
    ids = [jobs.enqueue(root, ["summary"]) for _ in range(3)]
    assert ids == sorted(ids) and [j["job_id"] for j in jobs.read_jobs(root)] == ids
    for bad in ("../x", "/etc", ".."):
        with pytest.raises(jobs.JobError):
            jobs.read_job(root, bad)
    with pytest.raises(jobs.JobError, match="resource"):
        jobs.enqueue(root, ["summary"], resource="tpu")
    with pytest.raises(jobs.JobError, match="not an engine module"):
        jobs.enqueue(root, ["-c", "print(1)"], module="os")


# ---------------------------------------------------------------- sweeps

def test_expand_sweep_is_the_cartesian_product_with_deterministic_names():
    base = {"lora_alpha": 32, "learning_rate": 2e-4}
    cells = jobs.expand_sweep(base, {"seed": [42, 123], "lora_r": [8, 16],
                                     "targets": ["attention", "attention+mlp"]})
    assert len(cells) == 8
    names = [c["run_name"] for c in cells]
    assert len(set(names)) == 8
    assert names[0] == "attn-r8-a32-s42" and names[-1] == "attn+mlp-r16-a32-s123"
    assert cells[0]["config"] == {**base, "seed": 42, "lora_r": 8, "targets": "attention",
                                  "label": "Attention-Only · r8"}
    assert cells[-1]["config"]["label"] == "Attention+MLP · r16"
    assert jobs.expand_sweep(base, {"seed": [42, 123], "lora_r": [8, 16],
                                    "targets": ["attention", "attention+mlp"]}) == cells
    for name in names:
        rf.check_run_name(name)

    seeds_only = jobs.expand_sweep({"label": "My config/v2", "lora_r": 16}, {"seed": [1, 2]})
    assert [c["run_name"] for c in seeds_only] == ["My-config-v2-r16-s1", "My-config-v2-r16-s2"]
    assert seeds_only[0]["config"]["label"] == "My config/v2"  # seeds of one config share its label

    with pytest.raises(ValueError, match="non-empty list"):
        jobs.expand_sweep({}, {"seed": []})


def test_a_sweep_over_a_form_config_gives_configs_the_trainer_reads(root):
    base = TrainConfig(learning_rate=2e-5, train_data=str(root)).to_dict()  # label "Attention-Only"
    cells = jobs.expand_sweep(base, {"targets": ["attention", "attention+mlp"], "seed": [1]})
    assert [c["run_name"] for c in cells] == ["attn-r16-a32-s1", "attn+mlp-r16-a32-s1"]
    assert "target_modules" not in cells[1]["config"]
    jobs.enqueue_sweep(root, cells)
    cfg = TrainConfig.from_yaml(root / "attn+mlp-r16-a32-s1" / rf.CONFIG).validate()
    assert (cfg.targets, cfg.seed, cfg.learning_rate, cfg.display_label()) == (
        "attention+mlp", 1, 2e-5, "Attention+MLP")


def test_parse_list_reads_numbers_and_rejects_junk():
    assert jobs.parse_list("42, 123, 456") == [42, 123, 456]
    assert jobs.parse_list("2e-4,1e-4", float) == [2e-4, 1e-4]
    assert jobs.parse_list("attention, attention+mlp", str) == ["attention", "attention+mlp"]
    for junk, message in [("42, abc", "'abc' is not a whole number"), ("4.5", "not a whole number"),
                          ("42,,43", "item 2 .* is empty"), ("", "empty"), ("8, 8", "listed twice"),
                          ("nan", "not a whole number")]:
        with pytest.raises(ValueError, match=message):
            jobs.parse_list(junk)
    with pytest.raises(ValueError, match="finite"):
        jobs.parse_list("1e-4, inf", float)


def test_a_resumed_sweep_skips_finished_cells_and_keeps_failed_attempts(root):
    cells = jobs.expand_sweep({"lora_alpha": 32, "lora_r": 8}, {"seed": [1, 2, 3]})
    done, failed, fresh = (c["run_name"] for c in cells)
    rf.write_status(root / done, rf.SUCCEEDED)
    rf.write_status(root / failed, rf.FAILED, error="out of memory")
    assert jobs.sweep_pending(root, [done, failed, fresh]) == [failed, fresh]
    with pytest.raises(rf.RunFolderError):
        jobs.sweep_pending(root, ["../escape"])

    result = jobs.enqueue_sweep(root, cells, sweep_id="sweep-1")
    assert result["skipped"] == {done: "already succeeded"}
    assert sorted(result["enqueued"]) == sorted([failed, fresh])
    assert rf.read_status(root / f"{failed}.attempt1")["state"] == rf.FAILED
    for name in (failed, fresh):
        assert rf.read_status(root / name)["state"] == rf.QUEUED
        assert rf.read_json(root / name / rf.CONFIG)["seed"] in (2, 3)
    queued = jobs.read_jobs(root)
    assert {j["sweep_id"] for j in queued} == {"sweep-1"}
    assert queued[0]["argv"] == ["train", "--config", str(root / failed / rf.CONFIG), "--run-dir", str(root / failed)]

    # The Overview folds the kept attempt into its run's row: it reads the name _move_aside gave it.
    from engine.dashboard import review
    assert review.attempt_of(f"{failed}.attempt1") == (failed, 1)
    table = review.overview_table(rf.list_runs(root)).set_index("name")
    assert f"{failed}.attempt1" not in table.index and table.loc[failed, "attempts"] == 2

    again = jobs.enqueue_sweep(root, cells)  # enqueued cells are not enqueued twice
    assert again["enqueued"] == {} and set(again["skipped"].values()) == {
        "already succeeded", "already queued or running"}


def test_sweep_labels_read_as_words_and_folder_names_stay_short():
    """A rank x alpha x targets sweep under a label of one's own: labels for people, names as before."""
    cells = jobs.expand_sweep({"label": "My sweep", "seed": 1},
                              {"lora_r": [8, 16], "lora_alpha": [16.0, 32.0], "targets": ["attention", "attention+mlp"]})
    assert cells[3]["run_name"] == "My-sweep-attn+mlp-r8-a32-s1"
    assert cells[3]["config"]["label"] == "My sweep · r8 · α32 · attention+MLP"
    assert {c["config"]["label"] for c in cells} == {
        f"My sweep · r{r} · α{a} · {t}" for r in (8, 16) for a in (16, 32) for t in ("attention", "attention+MLP")}
    rates = jobs.expand_sweep({}, {"learning_rate": [2e-4, 1e-4], "targets": [["q_proj", "v_proj"]]})
    assert [c["config"]["label"] for c in rates] == ["q_proj,v_proj · lr 0.0002", "q_proj,v_proj · lr 0.0001"]
    assert jobs.sweep.label_part("epochs", 2.5) == "2.5 epochs" and jobs.sweep.label_part("warmup", 3) == "warmup 3"
