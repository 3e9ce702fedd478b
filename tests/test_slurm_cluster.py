"""The Slurm executor against a real Slurm cluster (`.ci/slurm-up.sh` starts a single-node one
with two fake GPUs). Skipped when no controller answers. Uses the tiny model on the CPU.

    .ci/slurm-up.sh && SLURM_CONF=/tmp/qlora-slurm/slurm.conf .venv/bin/python -m pytest -m slurm
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path

import pytest

from engine import jobs
from engine.jobs import slurm, store
from engine.jobs.sweep import expand_sweep
from engine.runs import folder as rf
from tests.conftest import wait_for as _wait_for

pytestmark = pytest.mark.slurm

PAGES = Path(__file__).resolve().parents[1] / "pages"
DEFAULT_CONF = Path(os.environ.get("QLORA_SLURM_DIR", "/tmp/qlora-slurm")) / "slurm.conf"
# What a finished tiny training run holds (the same contract as tests/test_train.py).
FINISHED_TRAIN_RUN_FILES = {
    "config.json", "status.json", "environment.json", "metrics.jsonl", "summary.json", "engine.log",
    "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
}
ADAPTER = "adapter/adapter_model.safetensors"


@pytest.fixture(scope="module")
def cluster():
    if not os.environ.get("SLURM_CONF") and DEFAULT_CONF.is_file():
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    reachable, said = slurm.cluster_reachable()
    if not reachable:
        pytest.skip(f"no Slurm cluster reachable ({said}); start one with .ci/slurm-up.sh")
    return said




def wait_for(predicate, timeout_s: float, what: str):
    return _wait_for(predicate, timeout_s, what, poll_s=0.3)  # predicates here ask Slurm: not every 30 ms


def files_of(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture()
def workspace(tmp_path, monkeypatch, cluster):
    root = tmp_path / "ws"
    root.mkdir()
    monkeypatch.setenv(rf.RUNS_ROOT_ENV, str(root))
    slurm.write_workspace_settings(root, "slurm", slurm.SlurmSettings(
        gpus_per_job=0, cpus_per_job=1, mem="2G", time_limit="10:00", timeout_notice_s=0, array_parallelism=2))
    yield root
    for job in jobs.read_jobs(root):  # leave nothing running on the cluster
        handle = job.get("handle") or {}
        if job.get("state") in rf.ACTIVE_STATES and handle.get("slurm_job_id"):
            subprocess.run(["scancel", handle["slurm_job_id"]], capture_output=True)


def train_config(demo_data, **overrides) -> dict:
    config = dict(model="tiny", quantization="4bit", device="cpu", targets="attention", seed=7, epochs=1,
                  per_device_batch=8, grad_accum=1, learning_rate=2e-3, lora_dropout=0.0, warmup_ratio=0.0,
                  train_data=str(demo_data["train"]), max_steps=3)
    config.update(overrides)
    return config


def set_settings(root: Path, **changes) -> None:
    settings = slurm.read_workspace_settings(root)[1]
    slurm.write_workspace_settings(root, "slurm", slurm.SlurmSettings.from_dict({**settings.to_dict(), **changes}))


def submit_train(root: Path, name: str, config: dict) -> tuple[str, Path]:
    run_dir = root / name
    job_id = jobs.submit(root, ["train", "--config", str(run_dir / rf.CONFIG), "--run-dir", str(run_dir)],
                         prepare_run=(run_dir, config))
    return job_id, run_dir


def job_state(root: Path, job_id: str) -> str:
    return jobs.read_job(root, job_id)["state"]


def ended(root: Path, job_id: str) -> bool:
    return job_state(root, job_id) in rf.TERMINAL_STATES


def trained_steps(run_dir: Path) -> int:
    return len(rf.read_metrics(run_dir)) if (run_dir / rf.METRICS).exists() else 0


def test_four_run_sweep_runs_as_an_array_of_two_at_a_time(workspace, demo_data, tiny_model):
    from streamlit.testing.v1 import AppTest

    cells = expand_sweep(train_config(demo_data), {"seed": [1, 2, 3, 4]})
    started = time.monotonic()
    result = jobs.submit_sweep(workspace, cells)
    job_ids = list(result["enqueued"].values())
    assert len(job_ids) == 4
    wait_for(lambda: all(jobs.read_job(workspace, j).get("handle") for j in job_ids), 30, "submission")
    handles = [jobs.read_job(workspace, j)["handle"] for j in job_ids]
    assert len({h["submitted_id"] for h in handles}) == 1  # one array
    assert any("--array=0-3%2" == option for option in handles[0]["sbatch"])

    cluster_page = AppTest.from_file(str(PAGES / "cluster.py"), default_timeout=60).run()  # mid-sweep
    assert not cluster_page.exception
    wait_for(lambda: all(ended(workspace, j) for j in job_ids), 600, "the sweep to finish")
    wall_s = time.monotonic() - started
    print(f"4-run sweep on Slurm: {wall_s:.1f} s")
    for job_id, handle in zip(job_ids, handles):
        job = jobs.read_job(workspace, job_id)
        assert job["state"] == rf.SUCCEEDED, job
        run_dir = Path(job["run_dir"])
        assert files_of(run_dir) == FINISHED_TRAIN_RUN_FILES
        status = rf.read_json(run_dir / rf.STATUS)
        assert status["slurm"]["job_id"] == handle["slurm_job_id"] and status["slurm"]["node"]
        assert rf.read_json(run_dir / rf.CONFIG)["slurm"]["job_id"] == handle["slurm_job_id"]

    overview = AppTest.from_file(str(PAGES / "overview.py"), default_timeout=60).run()
    assert not overview.exception
    table = overview.dataframe[0].value
    assert sorted(table["slurm job"]) == sorted(h["slurm_job_id"] for h in handles)
    assert set(table["status"]) == {rf.SUCCEEDED}


def test_cancel_from_the_page_saves_the_adapter(workspace, demo_data, tiny_model):
    from streamlit.testing.v1 import AppTest

    job_id, run_dir = submit_train(workspace, "cancel-me", train_config(demo_data, max_steps=2000, per_device_batch=2, epochs=200))
    wait_for(lambda: trained_steps(run_dir) >= 1, 180, "the first training step")
    page = AppTest.from_file(str(PAGES / "cluster.py"), default_timeout=120).run()
    assert page.selectbox(key="cluster_cancel_job").value == job_id
    page.button(key="cluster_cancel").click().run()
    assert not page.exception
    wait_for(lambda: ended(workspace, job_id), 60, "the cancel to be recorded")
    assert job_state(workspace, job_id) == rf.CANCELLED
    assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.CANCELLED
    assert (run_dir / ADAPTER).is_file()


def test_scancel_from_outside_is_recorded_as_cancelled_not_crashed(workspace, demo_data, tiny_model):
    job_id, run_dir = submit_train(workspace, "scancelled", train_config(demo_data, max_steps=2000, per_device_batch=2, epochs=200))
    wait_for(lambda: trained_steps(run_dir) >= 1, 180, "the first training step")
    slurm_id = jobs.read_job(workspace, job_id)["handle"]["slurm_job_id"]
    subprocess.run(["scancel", slurm_id], check=True)
    wait_for(lambda: ended(workspace, job_id), 60, "the cancel to be recorded")
    job = jobs.read_job(workspace, job_id)
    assert job["state"] == rf.CANCELLED and "outside the dashboard" in job["error"]
    assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.CANCELLED


def test_time_limit_notice_ends_timeout_with_the_adapter(workspace, demo_data, tiny_model):
    # One minute with notice 50 s before it: Slurm sends the notice 10-60 s after the start.
    set_settings(workspace, time_limit="1", timeout_notice_s=50)
    job_id, run_dir = submit_train(workspace, "time-limit", train_config(demo_data, max_steps=5000, per_device_batch=2, epochs=200))
    wait_for(lambda: ended(workspace, job_id), 150, "the time limit")
    job = jobs.read_job(workspace, job_id)
    assert job["state"] == rf.TIMEOUT, job
    assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.TIMEOUT
    assert (run_dir / ADAPTER).is_file()


def test_bad_manifest_fails_with_the_engines_message(workspace, tmp_path, tiny_model):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,label\n/nowhere/clip.wav,SPEECH\n")
    job_id, run_dir = submit_train(workspace, "bad-data", {"model": "tiny", "device": "cpu",
                                                           "train_data": str(manifest), "max_steps": 2})
    wait_for(lambda: ended(workspace, job_id), 180, "the failure")
    job = jobs.read_job(workspace, job_id)
    status = rf.read_json(run_dir / rf.STATUS)
    assert job["state"] == rf.FAILED and status["state"] == rf.FAILED
    assert "/nowhere/clip.wav" in status["error"]  # the engine's own message, not only an exit code
    assert "exited with code" in job["error"] and "Slurm" not in status["error"]


def sleep_job(root: Path, name: str, seconds: float) -> tuple[str, Path]:
    run_dir = root / name
    job_id = jobs.submit(root, ["sleep", "--seconds", str(seconds), "--run-dir", str(run_dir)],
                         module="engine.jobs.sleep_job", prepare_run=(run_dir, {"kind": "train"}))
    return job_id, run_dir


def test_two_gpu_job_gets_two_devices_and_a_second_one_waits_with_its_reason(workspace):
    from streamlit.testing.v1 import AppTest

    set_settings(workspace, gpus_per_job=2)
    first, _ = sleep_job(workspace, "two-gpus", 20)
    start_file = store.job_dir(workspace, first) / slurm.START_FILE
    wait_for(start_file.exists, 60, "the 2-GPU job to start")
    assert jobs.read_job(workspace, first)["handle"]["gres"] == "gpu:2"
    assert rf.read_json(start_file)["cuda_visible_devices"] == "0,1"

    second, _ = sleep_job(workspace, "waits", 1)
    wait_for(lambda: jobs.read_job(workspace, second).get("handle"), 30, "the second submission")
    row = wait_for(lambda: next((r for r in slurm.slurm_jobs(workspace)
                                 if r["job"] == second and r["slurm state"] == "PENDING" and r["reason"]), None),
                   60, "a pending reason")
    assert row["reason"] == "Resources" and row["queue position"] == 1
    page = AppTest.from_file(str(PAGES / "cluster.py"), default_timeout=60).run()
    assert any("waits: Resources" in caption.value for caption in page.caption)
    restarted = AppTest.from_file(str(PAGES / "cluster.py"), default_timeout=60).run()  # a dashboard restart
    assert restarted.dataframe[0].value.equals(page.dataframe[0].value)
    jobs.cancel(workspace, first, grace_s=20)
    wait_for(lambda: ended(workspace, second), 60, "the waiting job")
    assert job_state(workspace, second) == rf.SUCCEEDED


def test_batch_jobs_take_no_lock_shared_with_the_login_node(workspace):
    """The compute side writes only its own files by atomic rename: it finishes while the login
    node's queue flock is held throughout (a lock that NFS would not carry across hosts)."""
    job_id = store.enqueue(workspace, ["sleep", "--seconds", "0.5"], module="engine.jobs.sleep_job")
    executor = slurm.SlurmExecutor(workspace)
    with store.locked(store.jobs_dir(workspace) / store.QUEUE_LOCK):
        handle = executor.start(store.read_job_file(workspace, job_id), {})
        end_file = store.job_dir(workspace, job_id) / slurm.END_FILE
        wait_for(end_file.exists, 60, "the batch job's end record")
    assert rf.read_json(end_file)["returncode"] == 0
    assert rf.read_json(store.job_dir(workspace, job_id) / slurm.START_FILE)["slurm_job_id"] == handle["slurm_job_id"]


def listening_sockets() -> list[tuple[str, int]]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            if len(raw) == 4:
                ip = ipaddress.IPv4Address(raw[::-1])
            else:
                ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found.append((str(ip), int(port, 16)))
    return found


def network_interfaces() -> list[str]:
    """This network namespace's interfaces (/proc/net is per namespace, unlike /sys)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines if ":" in line)


def test_nothing_listens_outside_loopback(cluster):
    """slurmctld binds every interface; the tests run in a network namespace with loopback only
    (.ci/with-slurm.sh), where "every interface" is loopback."""
    interfaces = network_interfaces()
    exposed = [(ip, port) for ip, port in listening_sockets() if not ipaddress.ip_address(ip).is_loopback]
    assert interfaces == ["lo"] or not exposed, f"listening beyond loopback on {exposed} (interfaces {interfaces})"


def test_failing_setup_line_fails_the_job_quoting_slurms_output(workspace):
    set_settings(workspace, setup="echo 'module cuda/99 not found' >&2; exit 3")
    job_id, run_dir = sleep_job(workspace, "bad-setup", 0.1)
    wait_for(lambda: ended(workspace, job_id), 60, "the failure")
    job = jobs.read_job(workspace, job_id)
    assert job["state"] == rf.FAILED and "module cuda/99 not found" in job["error"]
    assert rf.read_json(run_dir / rf.STATUS)["state"] == rf.FAILED
