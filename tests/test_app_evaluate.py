"""AppTest of the Evaluate page's Baseline detector section: its fields and defaults in a demo-like
workspace, the validation message, the exact argv it queues and the job list that shows it.
Nothing runs (ensure_worker is a no-op); the queued argv is run by the real CLI in
test_launch_baseline.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine import jobs
from engine.data import datasets
from engine.runs import folder as rf
from engine.tasks.baselines import registry

PAGE = Path(__file__).resolve().parents[1] / "pages" / "evaluate.py"
NO_VAL = "None: the detector's default rule, at the threshold below"


def texts(elements) -> list[str]:
    return [str(element.value) for element in elements]


def write_manifest(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,label\na.wav,SPEECH\nb.wav,NONSPEECH\n", encoding="utf-8")
    return path


def trained_run(root: Path, name: str) -> Path:
    """A succeeded training run (adapter files are stand-ins), so the evaluation form above is complete."""
    run_dir = root / name
    (run_dir / rf.ADAPTER_DIR).mkdir(parents=True)
    for file_name in rf.ADAPTER_FILES:
        (run_dir / rf.ADAPTER_DIR / file_name).write_text("{}")
    rf.atomic_write_json(run_dir / rf.CONFIG, {"schema_version": 1, "kind": "train", "label": "Cfg", "seed": 1,
                                                "model": "tiny", "quantization": "4bit"})
    rf.write_status(run_dir, rf.SUCCEEDED)
    return run_dir


@pytest.fixture()
def demo_like(empty_workspace) -> dict[str, Path]:
    """The demo's data layout (.demo-data/test.csv and val.csv) and one finished training run."""
    trained_run(empty_workspace, "cfg-s1")
    data = empty_workspace / ".demo-data"
    return {"root": empty_workspace, "test": write_manifest(data / "test.csv").resolve(),
            "val": write_manifest(data / "val.csv").resolve()}


def page() -> AppTest:
    return AppTest.from_file(str(PAGE), default_timeout=60)


def preview(at: AppTest) -> dict:
    (frame,) = [frame.value for frame in at.dataframe if "clip rule and threshold" in frame.value]
    assert len(frame) == 1
    return frame.iloc[0].to_dict()


def test_the_form_offers_the_registry_and_defaults_to_the_val_split(demo_like, no_worker):
    root, test, val = demo_like["root"], str(demo_like["test"]), str(demo_like["val"])
    at = page().run()
    assert not at.exception and texts(at.error) == []
    method = at.selectbox(key="baseline_method")
    assert method.value == "silero" and method.options == [d.label for d in registry.detectors().values()]
    assert at.selectbox(key="baseline_test_choice").value == test
    assert at.selectbox(key="baseline_val_choice").value == val  # the test set's sibling
    assert at.number_input(key="baseline_threshold").disabled
    assert at.text_input(key="baseline_name").value == "silero-test"
    assert not at.button(key="baseline_launch").disabled
    shown = preview(at)
    assert shown["run"] == "silero-test" and shown["clip rule and threshold"] == f"chosen on {val}"
    assert shown["command"] == (f"python -m engine baseline --method silero --test-csv {test} --name silero-test "
                                f"--runs-dir {root.resolve()} --val-csv {val}")

    # another method: its own options appear, and the suggested name follows it
    at.selectbox(key="baseline_method").set_value("webrtc").run()
    assert at.selectbox(key="baseline_option_aggressiveness").value == 3
    assert at.text_input(key="baseline_name").value == "webrtc-test"
    at.selectbox(key="baseline_option_aggressiveness").set_value(1).run()
    assert preview(at)["command"].endswith(f"--val-csv {val} --aggressiveness 1")

    # no validation split: the fixed rule at the threshold typed in
    at.selectbox(key="baseline_val_choice").set_value(NO_VAL).run()
    assert not at.number_input(key="baseline_threshold").disabled
    at.number_input(key="baseline_threshold").set_value(0.3).run()
    shown = preview(at)
    assert shown["clip rule and threshold"] == "fixed: the detector's default rule, threshold 0.3"
    assert shown["command"].endswith(f"--runs-dir {root.resolve()} --threshold 0.3 --aggressiveness 1")


def test_a_val_split_identical_to_the_test_set_is_refused(demo_like, no_worker):
    at = page().run()
    at.selectbox(key="baseline_val_choice").set_value(str(demo_like["test"])).run()
    assert texts(at.error) == ["validation data: the same as the test data; the clip rule and threshold must be "
                               "chosen on other clips than they are scored on (choose the val split, or none for "
                               "the fixed rule)"]
    assert at.button(key="baseline_launch").disabled
    assert not [frame for frame in at.dataframe if "clip rule and threshold" in frame.value]


def test_launch_queues_the_exact_argv_and_lists_the_job(demo_like, no_worker):
    root, test, val = demo_like["root"], str(demo_like["test"]), str(demo_like["val"])
    at = page().run()
    at.selectbox(key="baseline_method").set_value("webrtc").run()
    at.button(key="baseline_launch").click().run()
    assert not at.exception and texts(at.error) == []
    (job,) = jobs.read_jobs(root)
    assert job["argv"] == ["baseline", "--method", "webrtc", "--test-csv", test, "--name", "webrtc-test",
                           "--runs-dir", str(root.resolve()), "--val-csv", val, "--aggressiveness", "3"]
    assert (job["resource"], job["run_dir"], job["state"]) == ("cpu", str(root.resolve() / "webrtc-test"), rf.QUEUED)
    assert no_worker == [root.resolve()]
    assert texts(at.success) == [f"Queued WebRTC VAD as run webrtc-test (job {job['job_id']}); it is listed below "
                                 "and on the Overview once it starts."]
    table = at.dataframe[-1].value
    assert list(table["run"]) == ["webrtc-test"] and list(table["command"]) == ["baseline"]
    assert list(table["prompt"]) == ["none: WebRTC VAD (rule chosen on val)"]
    assert f"`{job['job_id']}` **webrtc-test**: queued (waiting for a free slot)" in texts(at.markdown)

    # the queued job holds the name: the next suggestion is another, the same name typed in is refused
    at.run()
    assert at.text_input(key="baseline_name").value == "webrtc-test-2"
    at.text_input(key="baseline_name").input("webrtc-test").run()
    assert texts(at.error) == ["run name: a queued job already writes the run 'webrtc-test'; choose another name"]
    assert at.button(key="baseline_launch").disabled


def test_a_name_typed_in_is_kept_and_an_escaping_one_refused(demo_like, no_worker):
    at = page().run()
    at.text_input(key="baseline_name").input("my-vad").run()
    at.selectbox(key="baseline_method").set_value("webrtc").run()
    assert at.text_input(key="baseline_name").value == "my-vad"
    at.text_input(key="baseline_name").input("../outside").run()
    assert [e for e in texts(at.error) if e.startswith("run name: invalid run name '../outside'")]
    assert at.button(key="baseline_launch").disabled


def test_uploaded_data_sets_are_offered_with_their_val_split(demo_like, no_worker):
    root = demo_like["root"]
    clip = (demo_like["test"].parent / "x.wav")
    import numpy as np
    import soundfile as sf

    sf.write(clip, np.zeros(8000), 16000)
    files = [("a.wav", clip.read_bytes(), "SPEECH"), ("b.wav", clip.read_bytes(), "NONSPEECH")]
    test = datasets.ingest_files(root, "heldout-test", files)
    val = datasets.ingest_files(root, "heldout-val", [*files, ("c.wav", clip.read_bytes(), "SPEECH")])
    at = page().run()
    assert f"{test.dataset_id} (uploaded)" in at.selectbox(key="baseline_test_choice").options
    at.selectbox(key="baseline_test_choice").set_value(str(test.manifest)).run()
    assert at.selectbox(key="baseline_val_choice").value == str(val.manifest)
    assert at.text_input(key="baseline_name").value == f"silero-{test.dataset_id}"
    assert preview(at)["command"].endswith(f"--val-csv {val.manifest}")
    # a validation choice made by hand survives another test set
    at.selectbox(key="baseline_val_choice").set_value(NO_VAL).run()
    at.selectbox(key="baseline_test_choice").set_value(str(demo_like["test"])).run()
    assert at.selectbox(key="baseline_val_choice").value == NO_VAL


def test_without_test_data_the_form_asks_for_it(empty_workspace, no_worker):
    at = page().run()
    assert not at.exception
    # the evaluation form above says what it lacks; the baseline form asks, without a second error
    assert texts(at.error).count("test data: give a manifest (CSV/JSONL) or a folder") == 1
    assert "Choose the test data to score the detector on." in texts(at.info)
    assert at.button(key="baseline_launch").disabled
