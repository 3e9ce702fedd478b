"""The Evaluate page's baseline form helpers: detectors from the registry, the sibling val split,
the exact argv queued (accepted by the real CLI), and a refusal naming its input for bad forms."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from engine import cli, jobs
from engine.dashboard import launch
from engine.data import datasets
from engine.data.synth import make_dataset
from engine.runs import folder as rf
from engine.tasks import baselines
from engine.tasks.baselines import registry


def write_manifest(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,label\na.wav,SPEECH\nb.wav,NONSPEECH\n", encoding="utf-8")
    return path


@pytest.fixture()
def splits(tmp_path) -> dict[str, Path]:
    """A demo-like workspace: test.csv and val.csv side by side in .demo-data."""
    root = tmp_path / "ws"
    root.mkdir()
    data = root / ".demo-data"
    return {"root": root, "test": write_manifest(data / "test.csv"), "val": write_manifest(data / "val.csv")}


@pytest.fixture()
def with_energy(monkeypatch):
    """A third detector, registered for this test only, with an option of its own."""
    monkeypatch.setattr(registry, "_DETECTORS", dict(registry._DETECTORS))
    return registry.register(registry.Detector(
        name="energy", label="Energy detector", reduction="root mean square, capped at 1",
        clip_score=lambda samples, settings: min(1.0, settings["gain"] * float(np.sqrt(np.mean(samples ** 2)))),
        backend=lambda: "numpy rms", options=(registry.Option("gain", float, 1.0, help="multiplies the RMS"),)))


def cli_namespace(argv: list[str]) -> argparse.Namespace:
    """The real `python -m engine baseline` parser's reading of argv."""
    assert argv[0] == "baseline"
    parser = argparse.ArgumentParser()
    baselines.baseline_arguments(parser)
    return parser.parse_args(argv[1:])


def test_methods_and_options_come_from_the_registry(with_energy):
    assert launch.baseline_methods() == {"silero": "Silero VAD", "webrtc": "WebRTC VAD", "energy": "Energy detector"}
    assert [o.name for o in launch.baseline_options("webrtc")] == ["aggressiveness"]
    assert launch.baseline_options("silero") == ()
    assert [(o.name, o.default) for o in launch.baseline_options("energy")] == [("gain", 1.0)]


def test_the_plan_with_the_val_split_is_the_exact_command(splits):
    root = splits["root"]
    job, problems = launch.plan_baseline(root, "webrtc", str(splits["test"]), str(splits["val"]), "webrtc-test",
                                         options={"aggressiveness": 2})
    assert problems == []
    test, val = str(splits["test"].resolve()), str(splits["val"].resolve())
    assert job.argv == ["baseline", "--method", "webrtc", "--test-csv", test, "--name", "webrtc-test",
                        "--runs-dir", str(root.resolve()), "--val-csv", val, "--aggressiveness", "2"]
    assert (job.run_dir, job.val_data, job.threshold, job.label) == (root.resolve() / "webrtc-test", val, None,
                                                                      "WebRTC VAD")
    assert job.command == "python -m engine " + " ".join(job.argv)
    assert job.preview()["clip rule and threshold"] == f"chosen on {val}"
    parsed = cli_namespace(job.argv)
    assert (parsed.method, parsed.test_csv, parsed.val_data, parsed.threshold, parsed.aggressiveness) == (
        "webrtc", test, val, None, 2)


def test_without_a_val_split_the_fixed_rule_gets_the_threshold(splits):
    job, problems = launch.plan_baseline(splits["root"], "silero", str(splits["test"]), "", "s", threshold=0.3)
    assert problems == [] and job.val_data is None and job.threshold == 0.3
    assert job.argv[-2:] == ["--threshold", "0.3"] and "--val-csv" not in job.argv
    assert cli_namespace(job.argv).threshold == 0.3
    assert job.preview()["clip rule and threshold"] == "fixed: the detector's default rule, threshold 0.3"
    job, _ = launch.plan_baseline(splits["root"], "silero", str(splits["test"]), None, "s")
    assert "--threshold" not in job.argv and job.threshold == launch.BASELINE_DEFAULT_THRESHOLD == 0.5


def test_a_val_split_that_is_the_test_set_is_refused_however_it_is_spelled(splits):
    same = splits["test"].parent / ".." / ".demo-data" / "test.csv"
    link = splits["root"] / "link.csv"
    link.symlink_to(splits["test"])
    for val in (str(splits["test"]), str(same), str(link)):
        job, problems = launch.plan_baseline(splits["root"], "silero", str(splits["test"]), val, "s")
        assert job is None and problems == [
            "validation data: the same as the test data; the clip rule and threshold must be chosen on other clips "
            "than they are scored on (choose the val split, or none for the fixed rule)"]


def test_every_bad_input_is_named(splits):
    root, test = splits["root"], str(splits["test"])
    (root / "taken").mkdir()

    def problems(**changes) -> list[str]:
        form = {"method": "webrtc", "test_data": test, "val_data": None, "run_name": "fine", **changes}
        job, found = launch.plan_baseline(root, **form)
        assert (job is None) == bool(found)
        return found

    assert problems() == []
    assert problems(method="vosk") == ["method: 'vosk' is not a registered baseline detector (one of silero, webrtc)"]
    assert problems(test_data="") == ["test data: give a manifest (CSV/JSONL) or a folder"]
    assert problems(val_data=str(root / "nope.csv")) == [f"validation data: not found: {root / 'nope.csv'}"]
    assert problems(threshold=1.5) == ["threshold: must be a number from 0 to 1 (got 1.5)"]
    assert problems(threshold="half") == ["threshold: must be a number from 0 to 1 (got 'half')"]
    assert problems(options={"aggressiveness": 7}) == ["aggressiveness must be 0, 1, 2 or 3 (got 7)"]
    assert problems(run_name="../escape")[0].startswith("run name: invalid run name '../escape'")
    assert problems(run_name="")[0].startswith("run name: invalid run name ''")
    assert problems(run_name="taken") == ["run name: 'taken' already exists in the workspace; choose another name"]
    queued = [{"job_id": "j1", "state": rf.QUEUED, "run_dir": str(root / "later"), "argv": ["baseline"]},
              {"job_id": "j0", "state": rf.SUCCEEDED, "run_dir": str(root / "done"), "argv": ["baseline"]}]
    assert problems(run_name="later", job_list=queued) == [
        "run name: a queued job already writes the run 'later'; choose another name"]
    assert problems(run_name="done", job_list=queued) == []  # that job ended without making its folder
    # a validation split makes the threshold moot: it is not checked, and not passed
    assert problems(val_data=str(splits["val"]), threshold=7) == []


def test_the_sibling_val_split(tmp_path):
    assert launch.sibling_val_split(write_manifest(tmp_path / "a" / "test.csv")) is None  # no val.csv there
    write_manifest(tmp_path / "a" / "validation.csv")
    assert launch.sibling_val_split(tmp_path / "a" / "test.csv") == str((tmp_path / "a" / "validation.csv").resolve())
    write_manifest(tmp_path / "a" / "val.csv")  # val before validation
    assert launch.sibling_val_split(str(tmp_path / "a" / "test.csv")) == str((tmp_path / "a" / "val.csv").resolve())
    pair = write_manifest(tmp_path / "b" / "clips_test.jsonl"), write_manifest(tmp_path / "b" / "clips_dev.jsonl")
    assert launch.sibling_val_split(pair[0]) == str(pair[1].resolve())
    write_manifest(tmp_path / "c" / "latest.csv"), write_manifest(tmp_path / "c" / "lavals.csv")
    assert launch.sibling_val_split(tmp_path / "c" / "latest.csv") is None  # "test" as a word only
    (tmp_path / "d" / "test" / "speech").mkdir(parents=True)
    (tmp_path / "d" / "val" / "speech").mkdir(parents=True)
    assert launch.sibling_val_split(tmp_path / "d" / "test") == str((tmp_path / "d" / "val").resolve())
    assert launch.sibling_val_split("") is None and launch.sibling_val_split(tmp_path / "gone-test.csv") is None


def wav(seconds: float = 0.3) -> bytes:
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(16000 * seconds)), 16000, format="WAV")
    return buffer.getvalue()


def test_an_uploaded_test_set_finds_the_uploaded_val_set_of_the_same_name(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    files = [("a.wav", wav(), "SPEECH"), ("b.wav", wav(0.4), "NONSPEECH")]
    test = datasets.ingest_files(root, "heldout-test", files)
    assert launch.sibling_val_split(str(test.manifest), root) is None  # not uploaded yet
    val = datasets.ingest_files(root, "heldout-val", [("c.wav", wav(0.5), "SPEECH"), *files[1:]])
    other = datasets.ingest_files(root, "other", [("d.wav", wav(0.6), "SPEECH"), *files[1:]])
    assert launch.sibling_val_split(str(test.manifest), root) == str(val.manifest)
    assert launch.sibling_val_split(str(other.manifest), root) is None
    assert launch.baseline_run_name(root, "silero", str(test.manifest)) == f"silero-{test.dataset_id}"


def test_the_suggested_run_name_is_free(splits):
    root, test = splits["root"], str(splits["test"])
    assert launch.baseline_run_name(root, "silero", test) == "silero-test"
    (root / "silero-test").mkdir()
    queued = [{"job_id": "j1", "state": rf.RUNNING, "run_dir": str(root / "silero-test-2")}]
    assert launch.baseline_run_name(root, "silero", test, queued) == "silero-test-3"
    assert launch.baseline_run_name(root, "webrtc", "") == "webrtc"


def test_queue_baseline_queues_the_argv_on_the_cpu(splits):
    root = splits["root"]
    job, _ = launch.plan_baseline(root, "silero", str(splits["test"]), str(splits["val"]), "silero-test")
    job_id = launch.queue_baseline(root, job, start_worker=False)
    (queued,) = jobs.read_jobs(root)
    assert (queued["job_id"], queued["argv"], queued["resource"], queued["run_dir"], queued["state"]) == (
        job_id, job.argv, "cpu", str(root.resolve() / "silero-test"), rf.QUEUED)
    assert not (root / "silero-test").exists()  # the baseline makes its own folder when it starts
    assert launch.evaluate_job_columns(queued) == {"evaluation": "test", "control": "",
                                                   "prompt": "none: Silero VAD (rule chosen on val)"}
    # the form now suggests another name, and refuses the queued one
    assert launch.baseline_run_name(root, "silero", str(splits["test"]), jobs.read_jobs(root)) == "silero-test-2"
    _, problems = launch.plan_baseline(root, "silero", str(splits["test"]), None, "silero-test",
                                       job_list=jobs.read_jobs(root))
    assert problems == ["run name: a queued job already writes the run 'silero-test'; choose another name"]
    (root / "silero-test").mkdir()  # made since planning: refused, nothing queued
    with pytest.raises(jobs.JobError, match="'silero-test' was made since the form was filled in"):
        launch.queue_baseline(root, job, start_worker=False)
    assert len(jobs.read_jobs(root)) == 1


def test_evaluate_job_columns_of_an_eval_job():
    argv = ["eval", "--run", "r", "--test-data", "t.csv", "--name", "test", "--control", "silence"]
    assert launch.evaluate_job_columns({"argv": argv}) == {"evaluation": "test", "control": "silence",
                                                           "prompt": "(the run's own)"}
    fixed = launch.baseline_argv("webrtc", "t.csv", "w", "/ws", threshold=0.5)
    assert launch.evaluate_job_columns({"argv": fixed})["prompt"] == "none: WebRTC VAD (fixed rule)"


def test_the_planned_argv_runs_through_the_real_cli(with_energy, tmp_path):
    """What the form queues is what `python -m engine baseline` runs: a detector registered in the
    test, its option and a validation split, end to end into a run folder."""
    data = make_dataset(tmp_path / "data", n_train=2, n_test=4, n_val=4, seed=3)
    root = tmp_path / "ws"
    root.mkdir()
    job, problems = launch.plan_baseline(root, "energy", str(data["test"]), str(data["val"]), "energy-test",
                                         options={"gain": "4"})
    assert problems == [] and job.argv[-2:] == ["--gain", "4.0"]
    assert cli.main(job.argv) == 0
    config = rf.read_json(root / "energy-test" / rf.CONFIG)
    assert (config["method"], config["gain"], config["val_data"]) == ("energy", 4.0, str(data["val"].resolve()))
    assert config["rule_choice"].startswith("chosen on the validation split")
    assert rf.read_status(root / "energy-test")["state"] == rf.SUCCEEDED
