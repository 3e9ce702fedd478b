"""The Slurm executor without a cluster: settings, the batch script, how Slurm's final states map
to run states, and that a controller that does not answer never makes a job "crashed"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import jobs
from engine.jobs import slurm, store
from engine.jobs.executor import workspace_executor_name
from engine.runs import folder as rf


def test_settings_round_trip_and_choose_the_executor(tmp_path):
    assert slurm.read_workspace_settings(tmp_path) == ("local", slurm.SlurmSettings())
    chosen = slurm.SlurmSettings(partition="gpu", account="lab", qos="normal", gpus_per_job=2, mem="64G",
                                 time_limit="1-00:00:00", extra_sbatch="#SBATCH --constraint=a100\n\n",
                                 setup="module load cuda; source venv/bin/activate")
    slurm.write_workspace_settings(tmp_path, "slurm", chosen)
    executor, settings = slurm.read_workspace_settings(tmp_path)
    assert executor == "slurm" and workspace_executor_name(tmp_path) == "slurm"
    assert settings.extra_sbatch == ["--constraint=a100"] and settings.setup.startswith("module load")
    slurm.write_workspace_settings(tmp_path, "local", settings)
    assert workspace_executor_name(tmp_path) == "local"
    assert slurm.read_workspace_settings(tmp_path)[1].partition == "gpu"  # kept for the next switch


@pytest.mark.parametrize("field, value, message", [
    ("partition", "gpu; rm -rf /", "partition"),
    ("gpus_per_job", -1, "gpus_per_job"),
    ("mem", "lots", "mem"),
    ("time_limit", "soon", "time_limit"),
    ("extra_sbatch", ["rm -rf /"], "extra_sbatch"),
    ("setup", "one\ntwo", "setup"),
])
def test_bad_settings_are_refused_naming_the_field(field, value, message):
    with pytest.raises(slurm.SlurmError, match=message):
        slurm.SlurmSettings(**{field: value})


def test_time_limits_in_seconds_and_a_notice_longer_than_the_limit_is_refused():
    assert [slurm.time_limit_seconds(t) for t in ("90", "10:30", "04:00:00", "1-00:00:00", "2-12", "UNLIMITED")] \
        == [5400, 630, 14400, 86400, 216000, None]
    with pytest.raises(slurm.SlurmError, match="timeout_notice_s: 300 s of notice is not shorter"):
        slurm.SlurmSettings(time_limit="5", timeout_notice_s=300)


def test_settings_file_with_unknown_keys_names_the_file(tmp_path):
    path = store.jobs_dir(tmp_path) / store.SETTINGS_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"executor": "slurm", "slurm": {"partiton": "gpu"}}))
    with pytest.raises(slurm.SlurmError, match=r"settings.json: unknown slurm setting\(s\): partiton"):
        slurm.read_workspace_settings(tmp_path)


def test_sbatch_options_and_batch_script():
    settings = slurm.SlurmSettings(partition="gpu", gpus_per_job=1, gpu_type="a100", timeout_notice_s=120,
                                   extra_sbatch=["--constraint=x"], setup="source 'my venv'/bin/activate")
    options = settings.sbatch_options(2)
    assert "--gres=gpu:a100:2" in options and "--signal=B:USR1@120" in options
    assert options[-1] == "--constraint=x" and "--partition=gpu" in options
    assert "--gres" not in " ".join(slurm.SlurmSettings().sbatch_options(0))
    script = slurm.batch_script(options, settings, [Path("/ws/.jobs/a b"), Path("/ws/.jobs/c")])
    assert script.startswith("#!/bin/bash\n#SBATCH --partition=gpu\n")
    assert "source 'my venv'/bin/activate" in script
    assert "JOB_FOLDERS=('/ws/.jobs/a b' /ws/.jobs/c)" in script
    assert '-m engine.jobs.slurm run "$JOB_FOLDER"' in script


def test_a_job_asking_for_several_gpus_gets_them():
    settings = slurm.SlurmSettings(gpus_per_job=1)
    assert slurm._requested_gpus({"argv": ["train", "--num-gpus", "2"], "resource": "gpu"}, settings) == 2
    assert slurm._requested_gpus({"argv": ["train", "--num-gpus=4"], "resource": "gpu"}, settings) == 4
    assert slurm._requested_gpus({"argv": ["train"], "resource": "gpu"}, settings) == 1
    assert slurm._requested_gpus({"argv": ["evaluate"], "resource": "cpu"}, settings) == 0


@pytest.mark.parametrize("slurm_state, end, requested, expected_state, error_part", [
    ("COMPLETED", {"returncode": 0}, False, None, None),
    ("FAILED", {"returncode": 2}, False, None, None),
    ("COMPLETED", {"returncode": 3, "stop_signal": "SIGTERM"}, True, rf.CANCELLED, None),
    ("CANCELLED", {}, False, rf.CANCELLED, "from outside the dashboard"),
    ("COMPLETED", {"returncode": 3, "stop_signal": "SIGUSR1"}, False, rf.TIMEOUT, "adapter saved"),
    ("TIMEOUT", {}, False, rf.TIMEOUT, "time limit"),
    ("OUT_OF_MEMORY", {}, False, rf.FAILED, "memory"),
    ("NODE_FAIL", {}, False, rf.CRASHED, "NODE_FAIL"),
])
def test_slurm_final_states_map_to_run_states(slurm_state, end, requested, expected_state, error_part):
    job = {"job_id": "j", "cancel_requested_at": "now" if requested else None}
    ended = slurm.ended_from_slurm({"state": slurm_state, "exit_code": end.get("returncode"), "node": "n1"},
                                   end, job)
    assert ended.get("state") == expected_state
    if expected_state is None:
        assert ended["returncode"] == end["returncode"]
    if error_part:
        assert error_part in ended["error"]


def running_slurm_job(root: Path) -> str:
    job_id = store.enqueue(root, ["train"], resource="gpu")
    store.update_job(root, job_id, lambda job: {
        "state": rf.RUNNING, "executor": "slurm", "handle": {"executor": "slurm", "slurm_job_id": "41"}})
    return job_id


def controller_says(monkeypatch, answer: dict | None) -> None:
    """Slurm's answer for every job id (None: the controller does not answer)."""
    monkeypatch.setattr(slurm, "query", lambda slurm_id: answer)
    monkeypatch.setattr(slurm, "query_many", lambda ids: dict.fromkeys(ids, answer))


def test_unanswering_controller_leaves_the_job_running_never_crashed(tmp_path, monkeypatch):
    job_id = running_slurm_job(tmp_path)
    controller_says(monkeypatch, None)
    assert jobs.read_job(tmp_path, job_id)["state"] == rf.RUNNING
    with pytest.raises(store.JobError, match="does not answer"):
        slurm.SlurmExecutor(tmp_path).cancel(store.read_job_file(tmp_path, job_id), 1.0)
    controller_says(monkeypatch, {"state": "PENDING", "reason": "Priority", "node": ""})
    assert jobs.read_job(tmp_path, job_id)["state"] == rf.RUNNING
    controller_says(monkeypatch, {"state": "COMPLETED", "reason": "", "node": "n7", "exit_code": 0})
    assert jobs.read_job(tmp_path, job_id)["state"] == rf.SUCCEEDED


def test_pending_array_elements_are_found_in_squeues_summary_line():
    assert slurm._array_range_contains("12_[3-7,9%2]", "12_5")
    assert slurm._array_range_contains("12_[3-7,9%2]", "12_9")
    assert not slurm._array_range_contains("12_[3-7,9%2]", "12_8")
    assert not slurm._array_range_contains("12_[3-7]", "112_5")
    assert not slurm._array_range_contains("12_4", "12_4")


def test_job_forgotten_by_the_controller_is_judged_by_what_it_wrote(tmp_path, monkeypatch):
    job_id = running_slurm_job(tmp_path)
    controller_says(monkeypatch, {})
    assert jobs.read_job(tmp_path, job_id)["state"] == rf.CRASHED  # ended, and left no record at all
    rf.atomic_write_json(store.job_dir(tmp_path, job_id) / slurm.END_FILE, {"returncode": 0, "stop_signal": None})
    assert jobs.read_job(tmp_path, job_id)["state"] == rf.SUCCEEDED


def test_timeout_is_a_terminal_run_state():
    assert rf.TIMEOUT in rf.STATES and rf.TIMEOUT in rf.TERMINAL_STATES


PAGES = Path(__file__).resolve().parents[1] / "pages"


def test_cluster_page_saves_settings_and_refuses_bad_ones(empty_workspace, no_worker):
    from streamlit.testing.v1 import AppTest

    page = AppTest.from_file(str(PAGES / "cluster.py"), default_timeout=60).run()
    assert not page.exception
    assert workspace_executor_name(empty_workspace) == "local"
    page.radio(key="cluster_executor").set_value("slurm")
    page.text_input(key="cluster_partition").set_value("gpu")
    page.text_input(key="cluster_mem").set_value("lots")
    page.button(key="FormSubmitter:cluster_settings-Save").click().run()
    assert any("mem" in error.value for error in page.error)
    assert workspace_executor_name(empty_workspace) == "local"  # nothing saved
    page.text_input(key="cluster_mem").set_value("48G")
    page.text_area(key="cluster_extra").set_value("#SBATCH --constraint=a100")
    page.button(key="FormSubmitter:cluster_settings-Save").click().run()
    assert not page.error
    executor, settings = slurm.read_workspace_settings(empty_workspace)
    assert executor == "slurm" and settings.partition == "gpu" and settings.mem == "48G"
    assert settings.extra_sbatch == ["--constraint=a100"]
    assert page.caption[-1].value.startswith("No job of this workspace")


def test_cluster_page_saves_jobs_per_gpu(empty_workspace, no_worker):
    from streamlit.testing.v1 import AppTest

    from engine.jobs.executor import jobs_per_gpu

    page = AppTest.from_file(str(PAGES / "cluster.py"), default_timeout=60).run()
    assert not page.exception and page.number_input(key="cluster_jobs_per_gpu").value == 1
    page.number_input(key="cluster_jobs_per_gpu").set_value(4)
    page.button(key="FormSubmitter:local_settings-Save").click().run()
    assert not page.exception and jobs_per_gpu(empty_workspace) == 4
    assert any("up to 4 job(s) per GPU" in s.value for s in page.success)
